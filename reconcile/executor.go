package reconcile

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"

	"github.com/raptiformica/raptiformica/backends"
	"github.com/raptiformica/raptiformica/internal/clock"
	"github.com/raptiformica/raptiformica/internal/consulclient"
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
	case state.KindRestoreRecord:
		err = e.restore(ctx, obs, a)
		if err == nil {
			log.Warn("inventory record re-created", telemetry.KeyReason, a.Reason)
			e.finish(a, nil)
		}
	case state.KindSpawn:
		id, err = e.spawn(ctx, p, bes, a, log)
	case state.KindReap, state.KindScaleDown, state.KindDestroyOrphan:
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

func (e *Executor) mark(ctx context.Context, r Record, s State, reason string) error {
	_, err := e.Inventory.Put(ctx, marked(r, s, reason, e.Clock.Now()))
	return err
}

// marked is r moved to state s at now.
func marked(r Record, s State, reason string, now time.Time) Record {
	r.State, r.Updated = s, now
	switch s {
	case StateFailed:
		r.FailedSince, r.Reason = now, reason
	case StateJoined:
		r.FailedSince, r.Reason = time.Time{}, ""
	}
	return r
}

// markAll writes a pass's marks (joined, failed) together, in as few
// transactions as Consul allows: a pass that sees fifty machines come up
// is one Raft write, not fifty writes and fifty reads.
func (e *Executor) markAll(ctx context.Context, p *rules.Platform, obs Observed, actions []state.Action) error {
	var marks []state.Action
	var recs []Record
	now := e.Clock.Now()
	for _, a := range actions {
		switch a.Kind {
		case state.KindMarkJoined:
			recs = append(recs, marked(obs.Records[a.MachineID], StateJoined, a.Reason, now))
		case state.KindMarkFailed:
			recs = append(recs, marked(obs.Records[a.MachineID], StateFailed, a.Reason, now))
		default:
			continue
		}
		marks = append(marks, a)
	}
	if len(marks) == 0 {
		return nil
	}
	written, err := e.Inventory.PutAll(ctx, recs)
	done := make(map[string]bool, len(written))
	for _, r := range written {
		done[r.ID] = true
	}
	for _, a := range marks {
		log := e.Log.With(telemetry.KeyAction, string(a.Kind), telemetry.KeyMachineID, a.MachineID, telemetry.KeyMachineType, a.Type)
		if !done[a.MachineID] {
			e.finish(a, fmt.Errorf("write the mark of %s: not written", a.MachineID))
			log.Error("action failed", telemetry.KeyError, err)
			continue
		}
		e.finish(a, nil)
		if a.Kind == state.KindMarkJoined {
			log.Info("machine joined", telemetry.KeyReason, a.Reason)
			e.Hooks.Fire(ctx, p, "after_join", a)
		} else {
			log.Warn("machine failed", telemetry.KeyReason, a.Reason)
		}
	}
	return err
}

// restore writes the record of an alive member that has none, from its
// backend's listing. It only ever creates: a record written meanwhile (the
// mirror's re-seed, another leader) is the better one and stays.
func (e *Executor) restore(ctx context.Context, obs Observed, a state.Action) error {
	in := obs.Instances[a.Backend][a.MachineID]
	scope := ""
	if a.Host != "" {
		bo := obs.Offers[a.Host].Backends[a.Backend]
		scope = bo.Scope
		for _, hin := range bo.Instances {
			if hin.MachineID == a.MachineID {
				in = hin
			}
		}
	}
	now := e.Clock.Now()
	created := in.Created
	if created.IsZero() || a.Manual {
		// A client host's word is not taken for when it made the
		// machine (an old one is the first to stay on a scale-down).
		created = now
	}
	r := Record{ID: a.MachineID, Type: a.Type, Backend: a.Backend, Host: a.Host, Scope: scope, State: StateJoined, Manual: a.Manual,
		Address: cmp.Or(in.Address, obs.Members[a.MachineID].Address), Addresses: in.Addresses,
		Created: created, Updated: now, Reason: a.Reason}
	if _, err := e.Inventory.Put(ctx, r); err != nil && !errors.Is(err, state.ErrConflict) {
		return err
	}
	return nil
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

// unvote takes a failed server out of Raft beside the actions, not as one:
// it changes no record, and its machine must still count as failed in the
// passes meanwhile (a machine with an action in flight counts as what the
// action will make it), or replacements held back by max_unhealthy would
// go ahead. One runs per machine at a time; Wait waits for it.
func (e *Executor) unvote(ctx context.Context, a state.Action, log hclog.Logger) {
	e.startIn(e.unvoting, a.MachineID, a, func() {
		// Looked at again right before: a server back since the pass
		// keeps its seat (Consul would let it in again only at its
		// next reconcile, a minute on).
		mctx, cancel := context.WithTimeout(ctx, consulCallTimeout)
		st, ok := e.memberStatus(mctx, a.MachineID)
		cancel()
		if !ok || st != state.MemberFailed {
			e.finish(a, nil)
			log.Info("server no longer failed: left in Raft", telemetry.KeyStatus, st)
			return
		}
		removed, err := e.removeRaftPeer(ctx, a.MachineID, log)
		e.finish(a, err)
		if removed {
			log.Warn("failed server taken out of Raft", telemetry.KeyReason, a.Reason)
		}
	})
}

// NewMachineID returns a fresh machine ID for a machine type: the type name
// and 8 random hex digits, short enough for a hostname and a Consul node name.
func NewMachineID(machineType string) string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return machineType + "-" + hex.EncodeToString(b[:])
}

func (e *Executor) spawn(ctx context.Context, p *rules.Platform, bes map[string]backends.Backend, a state.Action, log hclog.Logger) (string, error) {
	be, ok := bes[a.Backend]
	if !ok && a.Host == "" {
		return "", fmt.Errorf("backend %q is not configured", a.Backend)
	}
	id := NewMachineID(a.Type)
	now := e.Clock.Now()
	// The intent goes to KV before anything is created: a leader that dies
	// right after this line leaves a record the next leader will see, wait
	// for, and clean up if it never joins.
	host := cmp.Or(a.Host, e.Self)
	rec, err := e.Inventory.Put(ctx, Record{ID: id, Type: a.Type, Backend: a.Backend, Host: host, Scope: a.Scope, State: StateSpawning, Created: now, Updated: now, Reason: a.Reason, Manual: a.Manual})
	if err != nil {
		return "", err
	}
	e.mu.Lock()
	e.lastSpawn[a.Type] = now
	e.mu.Unlock()
	a.MachineID = id
	log = log.With(telemetry.KeyMachineID, id, telemetry.KeyBackend, a.Backend)
	e.start(id, a, func() { e.spawnOn(ctx, p, be, rec, a, log) })
	return id, nil
}

func (e *Executor) remove(ctx context.Context, p *rules.Platform, bes map[string]backends.Backend, obs Observed, a state.Action, log hclog.Logger) error {
	rec, hasRecord := obs.Records[a.MachineID]
	log = log.With(telemetry.KeyBackend, a.Backend)
	if hasRecord && rec.State != StateDestroying {
		// Announce the removal before doing it, so that an interrupted
		// removal is finished by whoever leads next.
		rec.State, rec.Updated, rec.Reason = StateDestroying, e.Clock.Now(), a.Reason
		var err error
		if rec, err = e.Inventory.Put(ctx, rec); err != nil {
			return err
		}
	}
	member, isMember := obs.Members[a.MachineID]
	e.start(a.MachineID, a, func() { e.removing(ctx, p, bes[a.Backend], rec, hasRecord, member, isMember, a, log) })
	return nil
}

// removing runs in the goroutine of a removal: the member leaves (a
// healthy server gracefully, a given-up one out of Raft first), its host
// destroys it, Consul forgets the member, and then its record and every
// key and credential it had go.
func (e *Executor) removing(ctx context.Context, p *rules.Platform, be backends.Backend, rec Record, hasRecord bool, member Member, isMember bool, a state.Action, log hclog.Logger) {
	if a.Kind == state.KindScaleDown && isMember && member.Status == state.MemberAlive && member.RaftVoter {
		// A healthy server leaves gracefully, so that it is taken
		// out of the Raft configuration before it stops. Asking a
		// member's Consul shows it the cluster's token, which only a
		// proven server may see (consulclient.New checks its
		// certificate too); a client needs no leave of its own: it
		// is destroyed, then forced out.
		if err := e.leave(ctx, member); err != nil {
			log.Warn("graceful leave failed; forcing", telemetry.KeyError, err)
		}
	}
	// Consul sessions favour liveness: look again right before the
	// destructive step, and stop if leadership is gone.
	if ctx.Err() != nil {
		return
	}
	if a.Kind == state.KindReap && isMember && member.Server && member.Status == state.MemberFailed {
		// Given up, and Consul has it failed: out of Raft first.
		// The destroy may wait on a host that is down or a
		// backend that fails for as long as they last, and the
		// dead server would count toward quorum all that time.
		_, _ = e.removeRaftPeer(ctx, a.MachineID, log)
	}
	destroyed, ok := e.destroy(ctx, p, be, a, log)
	if !ok {
		return
	}
	if isMember {
		e.forceLeave(ctx, a.MachineID, member, destroyed, log)
	}
	if hasRecord {
		if err := e.deleteRecord(ctx, rec); err != nil {
			e.finish(a, err)
			log.Error("delete record", telemetry.KeyError, err)
			return
		}
	}
	e.forget(ctx, a.MachineID, cmp.Or(rec.Host, a.Host), log)
	e.finish(a, nil)
	log.Info("machine removed", telemetry.KeyReason, a.Reason)
	event := "after_destroy"
	if a.Kind == state.KindReap {
		event = "after_reap"
	}
	e.Hooks.Fire(ctx, p, event, a)
}

// destroy has the machine's host destroy it: another member through a
// work order, the leader's own backend in process. destroyed says whether
// a backend destroyed it (only then is it known gone); ok false means the
// removal stops here, its outcome finished, for a later pass to retry.
func (e *Executor) destroy(ctx context.Context, p *rules.Platform, be backends.Backend, a state.Action, log hclog.Logger) (destroyed, ok bool) {
	switch {
	case a.Host != "":
		// Where it was made: that host's backend holds it.
		dctx, cancel := context.WithTimeout(ctx, p.Policy.ProvisionTimeout)
		err := e.destroyElsewhere(dctx, p, a)
		cancel()
		if err == nil {
			return true, true
		}
		e.finish(a, err)
		if errors.Is(err, errHostGone) || errors.Is(err, errHostBusy) {
			// A state that lasts (a host that is down): said once,
			// not every pass.
			if e.sayOnce(a.MachineID, err.Error()) {
				log.Warn("destroy waits for its host", telemetry.KeyHost, a.Host, telemetry.KeyError, err)
			}
			return false, false
		}
		e.backendFailed(hostKey(a.Host, a.Backend), p, err)
		log.Error("destroy on another host failed", telemetry.KeyHost, a.Host, telemetry.KeyError, err)
		return false, false
	case be != nil:
		// As long as a spawn may take: destroying is as slow as
		// creating on some providers, and no slower.
		begin := time.Now()
		_, err := RunOrder(ctx, be, state.WorkOrder{Kind: state.WorkDestroy, MachineID: a.MachineID, Backend: a.Backend, Timeout: p.Policy.ProvisionTimeout})
		e.observeCall(a.Backend, "destroy", begin)
		if err != nil {
			e.backendFailed(a.Backend, p, err)
			e.finish(a, err)
			log.Error("destroy failed", telemetry.KeyError, err)
			return false, false
		}
		return true, true
	case a.Backend != "":
		log.Warn("backend not configured; removing the record only")
	}
	return false, true
}

// forceLeave has Consul forget the removed member id.
//
// A member the failure detector still has alive (its backend said first
// that it is gone) is not pruned now: Consul's prune of a member it has
// alive sleeps its broadcast timeout and leave delay (8 s) holding the
// member list, and every read of the members (the next pass's, the
// replacement's node config) waits on it. It is marked leaving at once
// and pruned once it is failed. Asked again now: a member that left
// gracefully (a scale down) or failed meanwhile is pruned at once, and the
// prune is what takes a left server out of Raft for sure.
func (e *Executor) forceLeave(ctx context.Context, id string, member Member, destroyed bool, log hclog.Logger) {
	fctx, cancel := context.WithTimeout(ctx, consulCallTimeout)
	prune := prunable(member.Status)
	if st, ok := e.memberStatus(fctx, id); ok {
		prune = prunable(st)
	}
	err := e.Consul.Agent().ForceLeaveOptions(id, api.ForceLeaveOpts{Prune: prune}, (&api.QueryOptions{}).WithContext(fctx))
	cancel()
	if err != nil {
		log.Warn("force-leave failed", telemetry.KeyError, err)
		return
	}
	if !prune {
		if member.Server && destroyed {
			// Consul takes a leaving server out of Raft only
			// once it has it failed: until then the dead
			// server still counts toward quorum, and one more
			// death would lose it. Out now, as a prune did.
			_, _ = e.removeRaftPeer(ctx, id, log)
		}
		e.pruneWhenDown(ctx, id, log)
	}
}

// forget removes what a removed machine leaves besides its record: every
// key it or its host wrote (kvschema.ForgetMachine), and its credentials
// (Forget). It is the one way out for every removal, a reap, a scale-down,
// a destroy by hand or a spawn never started, whoever runs it. A failure
// is logged, not returned: the machine is gone, and what is left behind is
// a key or a token of a machine that no longer exists.
func (e *Executor) forget(ctx context.Context, id, host string, log hclog.Logger) {
	ctx, cancel := context.WithTimeout(ctx, consulCallTimeout)
	defer cancel()
	if err := e.Inventory.Store.ForgetMachine(ctx, id, host); err != nil {
		log.Warn("remove the machine's keys", telemetry.KeyError, err)
	}
	if e.Forget != nil {
		if err := e.Forget(ctx, id); err != nil {
			log.Warn("remove the machine's token", telemetry.KeyError, err)
		}
	}
}

// prunable says whether a member in status st may be pruned at once: one
// that left or failed. Consul's prune of a member it has alive or leaving
// sleeps its broadcast timeout and leave delay (8 s) holding the member
// list; a reap that finishes the removal of a member an earlier reap made
// leave finds it leaving, and pruned it then: every read of the members
// waited 8 s (seen as an 8 s pass at 103 machines).
func prunable(st state.MemberStatus) bool { return st == state.MemberLeft || st == state.MemberFailed }

// pruneWhenDown erases a member that was made to leave while Consul still
// had it alive from the member list, once Consul has it left or failed:
// looked for every pruneEvery, for at most pruneWithin (a member that
// never goes down is left as it is, leaving; Consul drops it in time). It runs beside the actions,
// not as one (Wait does not wait for it), and ends with ctx.
func (e *Executor) pruneWhenDown(ctx context.Context, id string, log hclog.Logger) {
	go func() {
		ctx, cancel := context.WithTimeout(ctx, pruneWithin)
		defer cancel()
		_ = clock.Poll(ctx, e.Clock, pruneEvery, func() (bool, error) {
			mctx, mcancel := context.WithTimeout(ctx, consulCallTimeout)
			defer mcancel()
			members, err := consulclient.Members(mctx, e.Consul)
			if err != nil {
				return false, nil
			}
			for _, m := range members {
				if m.Name != id {
					continue
				}
				if !prunable(SerfStatus(m.Status)) {
					return false, nil
				}
				if err := e.Consul.Agent().ForceLeaveOptions(id, api.ForceLeaveOpts{Prune: true}, (&api.QueryOptions{}).WithContext(mctx)); err != nil {
					log.Debug("prune a member that left", telemetry.KeyError, err)
					return false, nil
				}
			}
			return true, nil
		})
	}()
}

// memberStatus is what Consul says of member id now; ok is false when it
// cannot tell.
func (e *Executor) memberStatus(ctx context.Context, id string) (state.MemberStatus, bool) {
	members, err := consulclient.Members(ctx, e.Consul)
	if err != nil {
		return "", false
	}
	for _, m := range members {
		if m.Name == id {
			return SerfStatus(m.Status), true
		}
	}
	return "", false
}

// removeRaftPeer takes the server id out of the Raft configuration, if it
// is in it, and says whether it did. The peer is named by its node ID: the
// one derived from its name (consulclient.NodeID), found in the
// configuration itself, or, for a server whose Consul made its own, the
// catalog's. Never by the configuration's node names: Consul finds those
// by address, and a replacement may already listen on the dead server's
// address (it then carried the dead one's name, and the replacement was
// removed). Failures are logged once per machine and returned.
func (e *Executor) removeRaftPeer(ctx context.Context, id string, log hclog.Logger) (removed bool, err error) {
	ctx, cancel := context.WithTimeout(ctx, consulCallTimeout)
	defer cancel()
	defer func() {
		if err != nil && e.sayOnce(id, err.Error()) {
			// Until it is out, it counts toward quorum; the prune
			// once Consul has it failed, or the next pass, tries again.
			log.Warn("take a server out of Raft", telemetry.KeyError, err)
		}
	}()
	cfg, err := e.Consul.Operator().RaftGetConfiguration((&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return false, fmt.Errorf("read the Raft configuration: %w", err)
	}
	in := func(peer string) bool {
		return slices.ContainsFunc(cfg.Servers, func(s *api.RaftServer) bool { return s.ID == peer })
	}
	peer := consulclient.NodeID(id)
	if !in(peer) {
		node, _, err := e.Consul.Catalog().Node(id, (&api.QueryOptions{}).WithContext(ctx))
		if err != nil {
			return false, fmt.Errorf("find its node ID in the catalog: %w", err)
		}
		if node == nil || node.Node == nil || !in(node.Node.ID) {
			return false, nil // not in Raft (or not known at all)
		}
		peer = node.Node.ID
	}
	if err := e.Consul.Operator().RaftRemovePeerByID(peer, (&api.WriteOptions{}).WithContext(ctx)); err != nil {
		return false, fmt.Errorf("remove it from Raft: %w", err)
	}
	return true, nil
}

// How pruneWhenDown looks for a member to go down.
const (
	pruneEvery  = 2 * time.Second
	pruneWithin = 3 * time.Minute
)

// deleteRecord removes a removed machine's record. A server that just left
// takes Raft through a new configuration, and for a few seconds the KV has
// no leader to write through: the delete is tried again for up to 30 s. A
// record changed meanwhile is not retried: whoever changed it decides.
func (e *Executor) deleteRecord(ctx context.Context, rec Record) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var err error
	if perr := clock.Poll(ctx, e.Clock, 500*time.Millisecond, func() (bool, error) {
		err = e.Inventory.Delete(ctx, rec)
		return err == nil || errors.Is(err, state.ErrConflict), nil
	}); perr != nil && err == nil {
		err = perr
	}
	return err
}

// consulCallTimeout bounds one call to Consul's HTTP API that is not a
// blocking query.
const consulCallTimeout = 15 * time.Second

// leave asks the member's own Consul agent to leave the cluster, on the
// HTTPS port the member publishes (a machine may have been given another
// than the default).
func (e *Executor) leave(ctx context.Context, m Member) error {
	ctx, cancel := context.WithTimeout(ctx, consulCallTimeout)
	defer cancel()
	t, err := memberTarget(ctx, e.Consul, m.Name, m.Address)
	if err != nil {
		return err
	}
	t.Token, t.CACert = e.Token, e.CACert
	c, err := consulclient.New(t)
	if err != nil {
		return err
	}
	_, err = c.Raw().Write("/v1/agent/leave", nil, nil, (&api.WriteOptions{}).WithContext(ctx))
	return err
}

// memberTarget is where a member's Consul HTTP API is: its address, and the
// ports it publishes in its node meta (the defaults when it publishes none,
// as a machine of an older version does).
func memberTarget(ctx context.Context, consul *api.Client, node, addr string) (consulclient.Target, error) {
	t := consulclient.Target{Host: addr}
	n, _, err := consul.Catalog().Node(node, (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return t, fmt.Errorf("read member %s from the catalog: %w", node, err)
	}
	if n == nil || n.Node == nil {
		return t, nil
	}
	if v, ok := n.Node.Meta[nodeconfig.MetaHTTPSPort]; ok {
		port, err := strconv.Atoi(v)
		if err != nil || port < 1 || port > 65535 {
			return t, fmt.Errorf("member %s publishes HTTPS port %q: not a port", node, v)
		}
		t.HTTPSPort = port
	}
	return t, nil
}

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
