package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"
	"golang.org/x/sync/errgroup"

	"github.com/raptiformica/raptiformica/backends"
	"github.com/raptiformica/raptiformica/enrol"
	"github.com/raptiformica/raptiformica/internal/clock"
	"github.com/raptiformica/raptiformica/internal/kvschema"
	"github.com/raptiformica/raptiformica/internal/nodeconfig"
	"github.com/raptiformica/raptiformica/internal/state"
	"github.com/raptiformica/raptiformica/internal/telemetry"
	"github.com/raptiformica/raptiformica/internal/watch"
	"github.com/raptiformica/raptiformica/reconcile"
	"github.com/raptiformica/raptiformica/rules"
	"github.com/raptiformica/raptiformica/signals"
)

// Leader election settings. The session is tied to this node's serfHealth
// check as well as to its TTL, so a node that dies loses the lock when Consul
// notices, and a node cut off loses it when the TTL runs out.
//
// Leadership moves within the failure detector's time and lockDelay plus
// lockRetry. The lock delay is short: an old holder that reaches Consul
// learns of its loss from its monitor at once, one that cannot is not
// helped by any delay shorter than its monitor's retries (10 s), and every
// action a leader takes is an intent written by check-and-set first, so a
// second leader meets a conflict, not a repeat. api.Lock's own acquisition
// waits a fixed 5 s after meeting a lock delay, which cost every change of
// leader those 5 s: the campaign acquires the lock itself (campaign), and
// lockRetry is its look again.
const (
	sessionTTL     = "10s"
	lockDelay      = time.Second
	lockRetry      = 250 * time.Millisecond
	monitorRetries = 5
)

// campaignBackoff paces the campaign's retries after a failure (most often:
// Consul has no leader). Only servers campaign, so a quick retry costs the
// cluster little, and a long one would hold back the heal once a leader is
// back.
var campaignBackoff = clock.Backoff{Initial: 250 * time.Millisecond, Max: 2 * time.Second}

// listGap is the least time between two asks of one backend by the
// leader's passes, unless the backend reported a machine stopped or a
// removal waits on a confirmation (both ask afresh). It must not exceed
// the planner's confirmAfter (a second): a decision further off than that
// does not ask for fresh lists, and relies on no list living longer.
const listGap = time.Second

// mayLead says whether a node campaigns for the leader lock: a Consul
// server, unless its node config says never_lead. A client never does, and
// no setting lets it: the leader writes every machine's record, the
// cluster's keys and the tokens of new machines, and a client's token may
// write only its own keys (the price of a thousand clients is one small
// set of machines that hold the cluster's credentials). A type whose
// machines should lead is made a Consul server (`consul_server = true`).
// Keeping clients out of the campaign keeps its cost, a session with its
// renewals and a blocking read of the lock for every candidate, to the few
// servers, whatever the cluster's size.
func mayLead(c nodeconfig.Config) bool {
	return c.ConsulServer && !c.NeverLead
}

// errLockLost ends a leadership term: Consul says the lock is gone.
var errLockLost = errors.New("leader lock lost")

// elector campaigns for the leader lock and, while it holds the lock, runs
// the leader-only group: the control loop, the autopilot watch and the
// inventory snapshot. The
// group starts when the lock is taken and is cancelled the moment the lock
// is lost, which stops every action in flight.
//
//	campaigning ─lock taken─▶ re-seeding an empty KV ─▶ leading
//	     ▲                                                 │
//	     └──────────────────── lock lost ──────────────────┘
type elector struct {
	self      string // this node's machine ID, the lock's value
	neverLead bool
	consul    *api.Client
	store     *kvschema.Store
	inventory *reconcile.Inventory
	executor  *reconcile.Executor
	platform  func() *rules.Platform
	reseed    func(context.Context) bool
	backends  func() map[string]backends.Backend
	// snapshots writes the inventory snapshot the servers mirror, while
	// this node leads; nil: none.
	snapshots component
	clock     clock.Clock
	log       hclog.Logger
	metrics   *telemetry.Metrics
	// wake is signalled (poke) when the control loop should look again
	// before its next pass: the description changed, lost servers were
	// given up. It holds one signal while nobody leads.
	wake chan struct{}

	mu      sync.RWMutex // guards leading, term and last
	leading bool         // this node holds the lock and runs the loop
	// term is the leadership term's context while leading: what the
	// actions asked for by hand run in, so that they outlive the request
	// that asked and stop with the term, as the loop's do.
	term context.Context
	last *state.Status // the last pass this node published as leader
}

// Run competes for the leader lock until ctx ends, leading whenever it
// holds it; it blocks until ctx ends and returns nil, or an error when the
// lock cannot be made or the control loop fails for good. A node that may
// never lead just waits.
func (e *elector) Run(ctx context.Context) error {
	if e.neverLead {
		e.log.Info("not campaigning for leader: a client machine (consul_server = false), or never_lead in the node config")
		<-ctx.Done()
		return nil
	}
	// Only a node that has a description can lead.
	if clock.Poll(ctx, e.clock, 250*time.Millisecond, func() (bool, error) { return e.platform() != nil, nil }) != nil {
		return nil
	}
	for attempt := 1; ctx.Err() == nil; attempt++ {
		err := e.campaign(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if errors.Is(err, errLeading) {
			return err
		}
		if err != nil {
			wait := campaignBackoff.Delay(attempt)
			e.log.Warn("leader lock failed", telemetry.KeyError, err, telemetry.KeyWait, wait)
			_ = clock.Sleep(ctx, e.clock, wait)
			continue
		}
		attempt = 0
	}
	return nil
}

// errLeading wraps the error of a leadership term that failed for good.
var errLeading = errors.New("leading")

// campaign makes a session, takes the lock with it as soon as it is free,
// leads until the lock is lost or ctx ends, and gives the lock and the
// session up. It returns nil after a term, the error of a term that failed
// for good wrapped in errLeading, or why the lock could not be taken.
func (e *elector) campaign(ctx context.Context) error {
	wo := (&api.WriteOptions{}).WithContext(ctx)
	sid, _, err := e.consul.Session().Create(&api.SessionEntry{
		Name: "raptiformica leader " + e.self, TTL: sessionTTL, LockDelay: lockDelay, Behavior: api.SessionBehaviorRelease,
	}, wo)
	if err != nil {
		return fmt.Errorf("create session: %w", err)
	}
	// Renewed until done closes, then destroyed; the destroy must outlive
	// ctx, so it runs on a context of its own, bounded.
	done := make(chan struct{})
	defer close(done)
	rctx, rcancel := context.WithCancel(context.Background())
	go func() {
		defer rcancel()
		_ = e.consul.Session().RenewPeriodic(sessionTTL, sid, (&api.WriteOptions{}).WithContext(rctx), done)
	}()
	go func() {
		select {
		case <-done:
			// Give the destroy its time, then stop it.
			time.AfterFunc(10*time.Second, rcancel)
		case <-rctx.Done():
		}
	}()
	if err := e.acquire(ctx, sid); err != nil {
		return err
	}
	// Held: api.Lock with this session finds it so and watches it.
	lock, err := e.consul.LockOpts(&api.LockOptions{
		Key: kvschema.Leader, Value: []byte(e.self), Session: sid, MonitorRetries: monitorRetries, LockWaitTime: 10 * time.Second,
	})
	if err != nil {
		return fmt.Errorf("leader lock: %w", err)
	}
	lost, err := lock.Lock(ctx.Done())
	if err != nil || lost == nil {
		return err // nil: ctx ended
	}
	err = e.lead(ctx, lost)
	_ = lock.Unlock()
	if err != nil {
		return fmt.Errorf("%w: %w", errLeading, err)
	}
	return nil
}

// acquire takes the leader lock with session sid as soon as it is free: it
// waits on the held key with a blocking query and, when a lock delay keeps
// a freed key, looks again every lockRetry. It returns nil once sid holds
// the lock.
func (e *elector) acquire(ctx context.Context, sid string) error {
	kv := e.consul.KV()
	// While another session holds the lock, its machine is watched
	// through this node's own backends (endStoppedHolder).
	watching, stopWatching := "", func() {}
	defer func() { stopWatching() }()
	var end error
	// A read that fails ends the attempt: the campaign backs off and
	// tries again, with a new session if it must.
	stop := func(err error) (uint64, bool, error) {
		end = err
		return 0, false, watch.ErrStop
	}
	held := watch.Watch{Wait: 10 * time.Second, Clock: e.clock, Gap: time.Nanosecond}
	err := held.Run(ctx, func(q *api.QueryOptions) (uint64, bool, error) {
		pair, meta, err := kv.Get(kvschema.Leader, q)
		switch {
		case err != nil:
			return stop(fmt.Errorf("read lock: %w", err))
		case pair != nil && pair.Flags != api.LockFlagValue:
			return stop(fmt.Errorf("%s: %w", kvschema.Leader, api.ErrLockConflict))
		case pair != nil && pair.Session == sid:
			return stop(nil)
		case pair != nil && pair.Session != "":
			if pair.Session != watching {
				stopWatching()
				hctx, hcancel := context.WithCancel(ctx)
				watching, stopWatching = pair.Session, hcancel
				go e.endStoppedHolder(hctx, string(pair.Value), pair.Session)
			}
			return meta.LastIndex, false, nil // held: wait for a change
		}
		ok, _, err := kv.Acquire(&api.KVPair{Key: kvschema.Leader, Value: []byte(e.self), Session: sid, Flags: api.LockFlagValue}, (&api.WriteOptions{}).WithContext(ctx))
		switch {
		case err != nil:
			return stop(fmt.Errorf("acquire lock: %w", err))
		case ok:
			return stop(nil)
		}
		// Free but not taken: a lock delay holds it, or another node
		// was quicker. Look again soon, from a fresh read.
		if err := clock.Sleep(ctx, e.clock, lockRetry); err != nil {
			return 0, false, err
		}
		return 0, false, nil
	}, nil)
	if err != nil {
		return err
	}
	return end
}

// lead runs the leader-only group until the lock is lost or ctx ends. It
// returns an error only when a member of the group fails for good.
func (e *elector) lead(ctx context.Context, lost <-chan struct{}) error {
	g, lctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		select {
		case <-lost:
			return errLockLost
		case <-lctx.Done():
			return nil
		}
	})
	// A KV that lost its state (a fresh Consul after recovery) is re-seeded
	// from this node's mirror before anything is planned: planning on an
	// empty inventory would take every machine for an orphan.
	led := clock.Poll(lctx, e.clock, 500*time.Millisecond, func() (bool, error) { return e.reseed(lctx), nil }) == nil
	if led {
		e.mu.Lock()
		e.term = lctx
		e.mu.Unlock()
		e.setLeading(true)
		e.log.Info("became leader")
		e.executor.Hooks.Fire(lctx, e.platform(), "leader_elected", state.Action{MachineID: e.self, Reason: "leader elected"})
		r := &reconcile.Reconciler{
			Consul: e.consul, Inventory: e.inventory, Executor: e.executor,
			Platform: e.platform, Backends: e.backends, Self: e.self,
			Clock: e.clock, Log: e.log.Named("reconcile"), Metrics: e.metrics,
			Wake: e.wake, Publish: e.publish,
			// A burst of joins makes a pass every few hundred ms:
			// each backend is asked at most once a second.
			Lists:   &reconcile.Lists{MinGap: listGap},
			Signals: &signals.Reader{Consul: e.consul, Clock: e.clock},
		}
		g.Go(func() error { return r.Run(lctx) })
		g.Go(func() error {
			// Until it is done (a Consul mid-election refuses it):
			// a term may last weeks.
			_ = clock.Poll(lctx, e.clock, autopilotRetry, func() (bool, error) { return e.ownServerRemoval(lctx), nil })
			e.watchAutopilot(lctx)
			return nil
		})
		g.Go(func() error {
			_ = clock.Poll(lctx, e.clock, autopilotRetry, func() (bool, error) {
				err := enrol.UpdateMachinePolicies(lctx, e.consul)
				if err != nil {
					e.log.Warn("bring machines' policies up to date", telemetry.KeyError, err)
				}
				return err == nil, nil
			})
			return nil
		})
		if e.snapshots != nil {
			g.Go(func() error { return e.snapshots.Run(lctx) })
		}
	}
	err := g.Wait() // the autopilot watch has stopped: it sets no gauge after they are forgotten
	if led {
		e.mu.Lock()
		e.term = nil
		e.mu.Unlock()
		e.setLeading(false)
		if ctx.Err() == nil {
			e.log.Warn("lost leadership")
		}
	}
	if errors.Is(err, errLockLost) {
		return nil
	}
	return err
}

// Leading reports whether this node holds the leader lock and runs the
// control loop.
func (e *elector) Leading() bool {
	e.mu.RLock()
	defer e.mu.RUnlock()
	return e.leading
}

// LastStatus is the last pass this node published as leader, nil before
// its first.
func (e *elector) LastStatus() *state.Status {
	e.mu.RLock()
	defer e.mu.RUnlock()
	return e.last
}

// poke asks the control loop to look again; it never blocks.
func (e *elector) poke() {
	select {
	case e.wake <- struct{}{}:
	default:
	}
}

func (e *elector) setLeading(on bool) {
	e.mu.Lock()
	e.leading = on
	e.mu.Unlock()
	e.metrics.LeaderChanges.Inc()
	if on {
		e.metrics.IsLeader.Set(1)
	} else {
		e.metrics.IsLeader.Set(0)
		e.metrics.ForgetLeaderView()
	}
}

// autopilotCallTimeout bounds the leader's read and write of autopilot's
// configuration; autopilotRetry spaces its attempts.
const (
	autopilotCallTimeout = 10 * time.Second
	autopilotRetry       = 5 * time.Second
)

// ownServerRemoval turns off autopilot's cleanup of dead servers in a Raft
// history that began with it on (Consul's default, and ours before): the
// control loop takes a server out of Raft when it reaps it. Autopilot's
// cleanup takes out, at its next pass, up to a minority of the servers
// gossip has failed, whether dead or cut off; one cut off and back within
// the grace period is then left "leaving" in some servers' views, out of
// Raft and never re-added (hashicorp/consul#13379), and the loop, which
// reads it as failed, replaces a machine that never died.
//
// Consul reads the setting from the agent's file only when a Raft history
// begins; afterwards it lives in Raft, and only this call changes it. A
// failure is logged; it reports whether the cleanup is off.
func (e *elector) ownServerRemoval(ctx context.Context) bool {
	ctx, cancel := context.WithTimeout(ctx, autopilotCallTimeout)
	defer cancel()
	op := e.consul.Operator()
	conf, err := op.AutopilotGetConfiguration((&api.QueryOptions{}).WithContext(ctx))
	if err == nil && conf.CleanupDeadServers {
		conf.CleanupDeadServers = false
		var done bool
		done, err = op.AutopilotCASConfiguration(conf, (&api.WriteOptions{}).WithContext(ctx))
		if err == nil && !done {
			err = errors.New("changed meanwhile")
		}
		if err == nil {
			e.log.Info("autopilot's cleanup of dead servers turned off: the control loop removes them")
		}
	}
	if err != nil {
		e.log.Warn("turn off autopilot's cleanup of dead servers", telemetry.KeyError, err)
	}
	return err == nil
}

// watchAutopilot exports how many Consul servers may still fail, so that an
// alert can say quorum is at risk before it is lost. Only the leader asks:
// every server would give the same answer.
func (e *elector) watchAutopilot(ctx context.Context) {
	clock.Every(ctx, e.clock, 5*time.Second, func() {
		if h, err := e.consul.Operator().AutopilotServerHealth((&api.QueryOptions{}).WithContext(ctx)); err == nil {
			voters := 0
			for _, s := range h.Servers {
				if s.Voter {
					voters++
				}
			}
			e.metrics.ConsulVoters.Set(float64(voters))
			e.metrics.FailureTolerance.Set(float64(h.FailureTolerance))
		}
	})
}

// publish keeps the leader's status for /v1/status and writes it to KV for
// the other nodes and the CLI.
func (e *elector) publish(st state.Status) {
	e.mu.Lock()
	e.last = &st
	e.mu.Unlock()
	b, err := json.Marshal(st)
	if err != nil {
		return
	}
	// The pass goes on whether or not this write lands: bound it.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := e.store.PutStatus(ctx, b); err != nil {
		e.log.Warn("publish status", telemetry.KeyError, err)
	}
}

// errNotLeading is DryRun's answer on a node that does not lead.
var errNotLeading = errors.New("this node does not lead")

// DryRun is what the control loop would do now, changing nothing: the
// leader observes as a pass does (its backends, on its own machine, where
// it runs them anyway) and plans, without acting. It is how `plan` asks,
// so that no backend command runs on the operator's machine.
func (e *elector) DryRun(ctx context.Context) (reconcile.Decision, error) {
	p := e.platform()
	if !e.Leading() || p == nil {
		return reconcile.Decision{}, errNotLeading
	}
	obs, err := reconcile.Observe(ctx, e.consul, e.inventory, e.backends(), nil, nil)
	if err != nil {
		return reconcile.Decision{}, err
	}
	e.executor.Snapshot(&obs)
	obs.Self = e.self
	obs.Provisioned, _ = reconcile.ObserveProvisioned(ctx, e.inventory, p)
	return reconcile.Plan(p, obs, e.clock.Now()), nil
}

// refusal is an action asked for by hand that the leader will not take as
// asked (no such type, nowhere to place it, the leader's own machine): the
// asker's to change, not to retry.
type refusal struct{ error }

func (r refusal) Unwrap() error { return r.error }

// Act runs one action asked for by hand, chosen by choose from what this
// leader observes now (reconcile.PlaceByHand, reconcile.DestroyByHand), on
// the executor that runs the loop's: placed and recorded as the loop's
// actions are, and in the term's context. It returns the record the
// action left once it is done, or when ctx ends (the action goes on).
func (e *elector) Act(ctx context.Context, choose func(*rules.Platform, reconcile.Observed, time.Time) (state.Action, error)) (reconcile.Record, error) {
	// A pass may write the machine's record between this observation and
	// the action's check-and-set on it (a mark, a reap announced): the
	// operator's ask still holds, so it is decided again on what is there
	// now. A reap the loop decided is never retried this way: a record
	// that moved may be a machine that came back.
	for attempt := 1; ; attempt++ {
		rec, err := e.actOnce(ctx, choose)
		if !errors.Is(err, state.ErrConflict) || attempt == actAttempts || ctx.Err() != nil {
			return rec, err
		}
		e.log.Debug("action by hand raced a pass: deciding it again", telemetry.KeyAttempt, attempt, telemetry.KeyError, err)
	}
}

// actAttempts bounds how often Act decides an action again after a
// check-and-set lost to the loop.
const actAttempts = 5

func (e *elector) actOnce(ctx context.Context, choose func(*rules.Platform, reconcile.Observed, time.Time) (state.Action, error)) (reconcile.Record, error) {
	e.mu.RLock()
	term := e.term
	e.mu.RUnlock()
	p := e.platform()
	if term == nil || p == nil {
		return reconcile.Record{}, errNotLeading
	}
	bes := e.backends()
	obs, err := reconcile.Observe(ctx, e.consul, e.inventory, bes, nil, nil)
	if err != nil {
		return reconcile.Record{}, fmt.Errorf("observe: %w", err)
	}
	e.executor.Snapshot(&obs)
	obs.Self = e.self
	a, err := choose(p, obs, e.clock.Now())
	if err != nil {
		return reconcile.Record{}, refusal{err}
	}
	e.log.Info("action asked for by hand", telemetry.KeyAction, string(a.Kind), telemetry.KeyMachineID, a.MachineID, telemetry.KeyMachineType, a.Type, telemetry.KeyHost, a.Host)
	rec, _, err := e.executor.Act(term, ctx, p, bes, obs, a)
	e.poke() // the loop looks at once at what changed
	return rec, err
}
