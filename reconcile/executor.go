package reconcile

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"

	"github.com/raptiformica/raptiformica/backends"
	"github.com/raptiformica/raptiformica/internal/clock"
	"github.com/raptiformica/raptiformica/internal/nodeconfig"
	"github.com/raptiformica/raptiformica/internal/state"
	"github.com/raptiformica/raptiformica/internal/telemetry"
	"github.com/raptiformica/raptiformica/rules"
)

// NodeConfigFunc builds the config a new machine's agent starts with: which
// servers to join, the gossip key, whether it is a Consul server.
type NodeConfigFunc func(ctx context.Context, p *rules.Platform, id string, mt rules.MachineType, backend string) (nodeconfig.Config, error)

// Executor carries out the planner's actions. Quick state changes (marking a
// machine joined or failed, writing a spawn's intent) happen within Execute;
// the slow parts (backend calls, leaving Consul) run in goroutines tracked as
// in flight, so that one slow machine never stalls the loop. Every goroutine
// stops when the ctx given to Execute ends, which is when leadership is lost.
type Executor struct {
	Inventory  *Inventory
	Consul     *api.Client
	Clock      clock.Clock
	Log        hclog.Logger
	Metrics    *telemetry.Metrics
	NodeConfig NodeConfigFunc
	Hooks      *HookRunner
	// Token is the Consul ACL token the executor's own calls to members
	// use (asking one to leave).
	Token string
	// CACert is the cluster's CA, which a member's HTTPS API is checked
	// against.
	CACert string
	// Forget, when set, removes a removed machine's credentials (its ACL
	// token and policy).
	Forget func(ctx context.Context, machineID string) error
	// Self is the machine the executor runs on: the host of the machines
	// it spawns itself. Empty outside an agent (the CLI's spawn).
	Self string
	// Served, when set, is told after this machine made a machine on a
	// backend, before the machine is recorded: this machine then lists
	// that backend's machines in its offer, for whoever leads next. It
	// returns the index the offer was published at, 0 when it was not.
	Served func(ctx context.Context, backend string) uint64
	// Grant, when set, lets the member host read and write the work
	// orders given to it (a machine made before work orders existed has
	// a policy without them). It is called before every order.
	Grant func(ctx context.Context, host string) error

	mu       sync.Mutex
	inFlight map[string]state.Action // machine ID -> running action; guarded by mu
	// done is closed, per machine ID, when its running action ends: what
	// Act waits on. Guarded by mu.
	done      map[string]chan struct{}
	failures  map[string]int          // backend -> consecutive failures; guarded by mu
	backoff   map[string]time.Time    // backend -> not before; guarded by mu
	lastErr   map[string]string       // backend -> its last failure; guarded by mu
	lastSpawn map[string]time.Time    // machine type -> last spawn; guarded by mu
	recent    []state.Outcome         // newest last, at most recentOutcomes; guarded by mu
	seen      map[string]Sighting     // the last pass's sightings; guarded by mu
	said      map[string]string       // machine ID -> the waiting last logged; guarded by mu
	unvoting  map[string]state.Action // machine ID -> running unvote; guarded by mu
	wg        sync.WaitGroup
}

func (e *Executor) init() {
	if e.inFlight == nil {
		e.inFlight = map[string]state.Action{}
		e.unvoting = map[string]state.Action{}
		e.failures = map[string]int{}
		e.backoff = map[string]time.Time{}
		e.lastErr = map[string]string{}
		e.lastSpawn = map[string]time.Time{}
		e.done = map[string]chan struct{}{}
	}
}

// Snapshot copies the executor's own state into obs: what is in flight, which
// backends are backing off, when each type was last spawned.
func (e *Executor) Snapshot(obs *Observed) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.init()
	obs.InFlight = map[string]bool{}
	for id := range e.inFlight {
		obs.InFlight[id] = true
	}
	obs.BackoffUntil = map[string]time.Time{}
	obs.BackendFailures = map[string]string{}
	obs.HostBackoffUntil = map[string]map[string]time.Time{}
	for b, t := range e.backoff {
		if host, backend, elsewhere := strings.Cut(b, "/"); elsewhere {
			if obs.HostBackoffUntil[host] == nil {
				obs.HostBackoffUntil[host] = map[string]time.Time{}
			}
			obs.HostBackoffUntil[host][backend] = t
			continue
		}
		obs.BackoffUntil[b] = t
		obs.BackendFailures[b] = e.lastErr[b]
	}
	obs.LastSpawn = map[string]time.Time{}
	for t, at := range e.lastSpawn {
		obs.LastSpawn[t] = at
	}
	obs.Seen = make(map[string]Sighting, len(e.seen))
	for id, s := range e.seen {
		obs.Seen[id] = s
	}
}

// See keeps a pass's sightings for the next pass's Snapshot. Nil forgets
// them: a new leadership term starts its observations afresh, since what
// this node saw before it led is not a run of consecutive passes.
func (e *Executor) See(seen map[string]Sighting) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.seen = seen
}

// InFlight lists the running actions, for status.
func (e *Executor) InFlight() []state.Action {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := make([]state.Action, 0, len(e.inFlight))
	for _, a := range e.inFlight {
		out = append(out, a)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].MachineID < out[j].MachineID })
	return out
}

// Wait blocks until every action started by Execute has returned.
func (e *Executor) Wait() { e.wg.Wait() }

// Execute runs one pass's actions. It returns the first error of the
// synchronous part; the asynchronous parts report through logs, metrics and
// the inventory.
func (e *Executor) Execute(ctx context.Context, p *rules.Platform, bes map[string]backends.Backend, obs Observed, actions []state.Action) error {
	e.mu.Lock()
	e.init()
	e.mu.Unlock()
	var errs []error
	e.resumeAll(ctx, p, obs)
	if err := e.markAll(ctx, p, obs, actions); err != nil {
		errs = append(errs, err)
	}
	for _, a := range actions {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if a.Kind == state.KindMarkJoined || a.Kind == state.KindMarkFailed {
			continue // markAll wrote them
		}
		if _, err := e.execute(ctx, p, bes, obs, a); err != nil {
			errs = append(errs, fmt.Errorf("%s %s: %w", a.Kind, a.MachineID, err))
		}
	}
	return errors.Join(errs...)
}

// sayOnce reports whether msg is news for machine id: a wait that lasts is
// logged when it starts or changes, not on every pass.
func (e *Executor) sayOnce(id, msg string) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.said == nil {
		e.said = map[string]string{}
	}
	if e.said[id] == msg {
		return false
	}
	if len(e.said) >= maxSaid {
		clear(e.said) // bounded: at worst a wait is said again
	}
	e.said[id] = msg
	return true
}

// maxSaid bounds the waits remembered for sayOnce.
const maxSaid = 1024

// resumeAll follows the spawns on other hosts that no action of this
// leader is following: an earlier leader ordered them.
func (e *Executor) resumeAll(ctx context.Context, p *rules.Platform, obs Observed) {
	for _, id := range sortedKeys(obs.Records) {
		rec := obs.Records[id]
		if rec.State != StateSpawning || rec.Host == "" || rec.Host == obs.Self || obs.InFlight[id] {
			continue
		}
		log := e.Log.With(telemetry.KeyAction, string(state.KindSpawn), telemetry.KeyMachineID, id, telemetry.KeyMachineType, rec.Type)
		a := state.Action{Kind: state.KindSpawn, MachineID: id, Type: rec.Type, Backend: rec.Backend, Host: rec.Host, Reason: "resumed"}
		e.start(id, a, func() { e.resumeSpawn(ctx, p, rec, log) })
	}
}

// execute starts one action and returns the ID of the machine it acts on
// (for a spawn, the new one's).
func (e *Executor) execute(ctx context.Context, p *rules.Platform, bes map[string]backends.Backend, obs Observed, a state.Action) (string, error) {
	log := e.Log.With(telemetry.KeyAction, string(a.Kind), telemetry.KeyMachineID, a.MachineID, telemetry.KeyMachineType, a.Type)
	id, err := a.MachineID, error(nil)
	switch a.Kind {
	case state.KindMarkJoined:
		err = e.mark(ctx, obs.Records[a.MachineID], StateJoined, a.Reason)
		if err == nil {
			log.Info("machine joined", telemetry.KeyReason, a.Reason)
			e.Hooks.Fire(ctx, p, "after_join", a)
		}
	case state.KindMarkFailed:
		err = e.mark(ctx, obs.Records[a.MachineID], StateFailed, a.Reason)
		if err == nil {
			log.Warn("machine failed", telemetry.KeyReason, a.Reason)
		}
	case state.KindPromote:
		r := obs.Records[a.MachineID]
		r.Spare, r.Reason, r.Updated = false, a.Reason, e.Clock.Now()
		_, err = e.Inventory.Put(ctx, r)
		e.finish(a, err)
		if err == nil {
			log.Info("spare promoted", telemetry.KeyReason, a.Reason)
		}
	case state.KindRestoreRecord:
		err = e.restore(ctx, obs, a)
		if err == nil {
			log.Warn("inventory record re-created", telemetry.KeyReason, a.Reason)
			e.finish(a, nil)
		}
	case state.KindSpawn:
		id, err = e.spawn(ctx, p, bes, a, log)
	case state.KindReap, state.KindScaleDown, state.KindPreempt, state.KindDestroyOrphan:
		err = e.remove(ctx, p, bes, obs, a, log)
	case state.KindUnvote:
		e.unvote(ctx, a, log)
	default:
		err = fmt.Errorf("unknown action kind %q", a.Kind)
	}
	if err != nil {
		e.finish(a, err)
		log.Error("action failed", telemetry.KeyError, err)
	} else if a.Kind == state.KindMarkJoined || a.Kind == state.KindMarkFailed {
		e.finish(a, nil)
	}
	return id, err
}

// Act runs one action asked for by hand (`spawn`, `destroy`) beside the
// passes' actions, to its end, and returns the record it left: a spawned
// machine's (joining, with its address), or the removed machine's last (ok
// false once the record is gone). An action that failed returns its error,
// and a spawn that failed the record saying why. The action runs in run,
// the leadership term's context: it outlives the request that asked for
// it, whose ctx bounds only the wait. The intent is written first, as for
// every action.
func (e *Executor) Act(run, ctx context.Context, p *rules.Platform, bes map[string]backends.Backend, obs Observed, a state.Action) (rec Record, ok bool, err error) {
	e.mu.Lock()
	e.init()
	e.mu.Unlock()
	id, err := e.execute(run, p, bes, obs, a)
	if err != nil {
		return Record{}, false, err
	}
	e.mu.Lock()
	done := e.done[id]
	e.mu.Unlock()
	if done != nil {
		select {
		case <-done:
		case <-ctx.Done():
			return Record{}, false, fmt.Errorf("%s %s goes on without this wait: %w", a.Kind, id, ctx.Err())
		}
	}
	// The KV may be between Raft leaders (a server just left): ask again.
	rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	_ = clock.Poll(rctx, e.Clock, 500*time.Millisecond, func() (bool, error) {
		rec, ok, err = e.Inventory.Get(rctx, id)
		return err == nil, nil
	})
	if err != nil {
		return rec, ok, err
	}
	for _, o := range e.Recent() { // newest first: this action's outcome
		if o.MachineID != id {
			continue
		}
		if o.Result == "error" {
			return rec, ok, fmt.Errorf("%s %s: %s", a.Kind, id, o.Error)
		}
		break
	}
	if a.Kind == state.KindSpawn && (!ok || rec.State != StateJoining) {
		return rec, ok, fmt.Errorf("spawn %s: %s", id, rec.Reason)
	}
	return rec, ok, nil
}

// recentOutcomes is how many finished actions the executor remembers for
// status: enough to see what the last replacements did.
const recentOutcomes = 20

// finish counts a finished action and keeps it among the recent outcomes.
func (e *Executor) finish(a state.Action, err error) {
	o := state.Outcome{Action: a, Result: "success", At: e.Clock.Now()}
	if err != nil {
		o.Result, o.Error = "error", err.Error()
	}
	if e.Metrics != nil {
		e.Metrics.Actions.WithLabelValues(string(a.Kind), o.Result).Inc()
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	e.recent = append(e.recent, o)
	if n := len(e.recent) - recentOutcomes; n > 0 {
		e.recent = append(e.recent[:0:0], e.recent[n:]...)
	}
}

// Recent lists the last finished actions, newest first, for status.
func (e *Executor) Recent() []state.Outcome {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := make([]state.Outcome, len(e.recent))
	for i, o := range e.recent {
		out[len(out)-1-i] = o
	}
	return out
}

// start marks id in flight and runs f in a goroutine; false if it already is.
func (e *Executor) start(id string, a state.Action, f func()) bool {
	return e.startIn(e.inFlight, id, a, f)
}

// startIn runs f in a goroutine, with id in busy (guarded by mu) until f
// returns; false if id already is. Wait waits for it.
func (e *Executor) startIn(busy map[string]state.Action, id string, a state.Action, f func()) bool {
	e.mu.Lock()
	if _, ok := busy[id]; ok {
		e.mu.Unlock()
		return false
	}
	busy[id] = a
	done := make(chan struct{})
	e.done[id] = done
	e.mu.Unlock()
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		defer func() {
			e.mu.Lock()
			delete(busy, id)
			if e.done[id] == done {
				delete(e.done, id)
			}
			e.mu.Unlock()
			close(done)
		}()
		f()
	}()
	return true
}

// consulCallTimeout bounds one call to Consul's HTTP API that is not a
// blocking query.
const consulCallTimeout = 15 * time.Second

func (e *Executor) observeCall(backend, op string, begin time.Time) {
	if e.Metrics != nil {
		e.Metrics.BackendCallDuration.WithLabelValues(backend, op).Observe(time.Since(begin).Seconds())
	}
}

func (e *Executor) backendFailed(name string, p *rules.Platform, err error) {
	if e.Metrics != nil {
		e.Metrics.BackendErrors.WithLabelValues(name).Inc()
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	e.failures[name]++
	e.lastErr[name] = err.Error()
	e.backoff[name] = e.Clock.Now().Add(clock.Backoff{Initial: p.Policy.BackoffInitial, Max: p.Policy.BackoffMax}.Delay(e.failures[name]))
}

func (e *Executor) backendOK(name string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	delete(e.failures, name)
	delete(e.backoff, name)
	delete(e.lastErr, name)
}
