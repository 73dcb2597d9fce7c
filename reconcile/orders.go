package reconcile

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"

	"github.com/raptiformica/raptiformica/backends"
	"github.com/raptiformica/raptiformica/internal/clock"
	"github.com/raptiformica/raptiformica/internal/consulclient"
	"github.com/raptiformica/raptiformica/internal/nodeconfig"
	"github.com/raptiformica/raptiformica/internal/state"
	"github.com/raptiformica/raptiformica/internal/telemetry"
	"github.com/raptiformica/raptiformica/internal/watch"
	"github.com/raptiformica/raptiformica/rules"
)

// Every spawn is a work order, carried out by its host: the leader's own
// in process (spawnHere, the order's fast path), another member's through
// that member's folder of orders (kvschema.Work), which the executor
// writes and then waits on with blocking queries, looking every
// awaitRecheck whether the host is still an alive member. It never waits
// on a host that died: the order stays, the host finishes or fails it when
// it returns, and whoever leads then reads the outcome. Either way the
// outcome is recorded by one function (spawned); a removal on another
// member goes the same way (destroyElsewhere).

// awaitRecheck is how long one blocking read of an order waits before the
// executor looks again whether its host is alive.
const awaitRecheck = 10 * time.Second

// errHostGone means the host of an order is not an alive member.
var errHostGone = errors.New("is not an alive member")

// errOrderNeverWritten means a spawn's record has no order: the leader that
// wrote the record stopped before the order.
var errOrderNeverWritten = errors.New("its work order was never written")

// errHostBusy means the host still runs the spawn a removal waits for: a
// later pass destroys what it made.
var errHostBusy = errors.New("is still spawning it")

// hostKey keys the backoff of a backend on another host, beside the
// leader's own backends' (names and machine IDs hold no slash).
func hostKey(host, backend string) string { return host + "/" + backend }

// spawnOn runs in the goroutine of a spawn: one path whichever member is
// its host. The order is made the same way for every host, with the new
// machine's node config; the leader's own (a.Host empty) runs in process,
// the order's fast path, without its round trip through KV, and another
// member's goes to that member's folder of orders, which it carries out.
// The outcome is recorded the same way (spawned).
func (e *Executor) spawnOn(ctx context.Context, p *rules.Platform, be backends.Backend, rec Record, a state.Action, log hclog.Logger) {
	// A spawn that has not ended within the provision timeout would be
	// reaped had it ended: a hung backend call, or a host that never
	// answers, must not hold its spawn slot, and its record, forever.
	sctx, cancel := context.WithTimeout(ctx, p.Policy.ProvisionTimeout)
	defer cancel()
	if a.Host == "" {
		w, err := e.spawnHere(sctx, p, be, rec, a)
		e.spawned(ctx, p, nil, rec, a, w, err, log)
		return
	}
	orders := NewOrders(e.Inventory.Store, a.Host)
	w, err := e.orderSpawn(sctx, p, orders, rec, a)
	if err == nil {
		w, err = e.await(sctx, orders, w)
	}
	e.spawned(ctx, p, &orders, rec, a, w, err, log)
}

// spawnHere carries out the leader's own spawn order in process, as its
// worker would carry out one given through KV, and returns it finished;
// the error is one that made no order. Its Index is the one at which this
// machine published its list with the new machine (Served), less one: a
// list written later can tell the machine gone; 0 when none was
// published.
func (e *Executor) spawnHere(ctx context.Context, p *rules.Platform, be backends.Backend, rec Record, a state.Action) (state.WorkOrder, error) {
	node, err := e.NodeConfig(ctx, p, rec.ID, p.Machines[a.Type], a.Backend)
	if err != nil {
		return state.WorkOrder{}, err
	}
	node.MadeBy = e.Self
	w := state.WorkOrder{Kind: state.WorkSpawn, MachineID: rec.ID, Type: a.Type, Backend: a.Backend, Node: &node, Timeout: p.Policy.ProvisionTimeout}
	begin := time.Now()
	inst, err := RunOrder(ctx, be, w)
	e.observeCall(a.Backend, "spawn", begin)
	w.Node = nil // its credentials were for the spawn
	if err != nil {
		w.State, w.Error = state.WorkFailed, err.Error()
		return w, nil
	}
	w.State, w.Instance = state.WorkDone, &inst
	if sc, ok := be.(backends.Scoped); ok {
		qctx, cancel := context.WithTimeout(ctx, consulCallTimeout)
		w.Scope, _ = sc.Scope(qctx)
		cancel()
	}
	if e.Served != nil {
		if index := e.Served(ctx, a.Backend); index > 0 {
			w.Index = index - 1
		}
	}
	return w, nil
}

// resumeSpawn follows, for a new leader, a spawn on another host that an
// earlier leader ordered: the host may have finished it meanwhile, or be
// running it still.
func (e *Executor) resumeSpawn(ctx context.Context, p *rules.Platform, rec Record, log hclog.Logger) {
	a := state.Action{Kind: state.KindSpawn, MachineID: rec.ID, Type: rec.Type, Backend: rec.Backend, Host: rec.Host, Reason: "resumed: " + rec.Reason}
	sctx, cancel := context.WithTimeout(ctx, p.Policy.ProvisionTimeout)
	defer cancel()
	orders := NewOrders(e.Inventory.Store, rec.Host)
	// The pass read the record before it saw what was in flight: a spawn
	// of this leader's that ended meanwhile has moved it on.
	if now, found, err := e.Inventory.Get(sctx, rec.ID); err != nil || !found || now.Index != rec.Index || now.State != StateSpawning {
		return
	}
	w, ok, _, err := orders.Get(sctx, rec.ID, nil)
	switch {
	case err != nil:
	case !ok:
		// The last leader stopped between the record and the order:
		// nothing was made.
		err = errOrderNeverWritten
	default:
		log.Info("resuming a spawn on another host", telemetry.KeyHost, rec.Host, telemetry.KeyState, string(w.State))
		w, err = e.await(sctx, orders, w)
	}
	e.spawned(ctx, p, &orders, rec, a, w, err, log)
}

// orderSpawn writes the work order of a spawn on another host.
func (e *Executor) orderSpawn(ctx context.Context, p *rules.Platform, orders Orders, rec Record, a state.Action) (state.WorkOrder, error) {
	if e.Grant != nil {
		if err := e.Grant(ctx, a.Host); err != nil {
			return state.WorkOrder{}, fmt.Errorf("let host %s read its work orders: %w", a.Host, err)
		}
	}
	mt := p.Machines[a.Type]
	node, err := e.NodeConfig(ctx, p, rec.ID, mt, a.Backend)
	if err != nil {
		return state.WorkOrder{}, err
	}
	if err := e.mayHold(ctx, a.Host, node); err != nil {
		return state.WorkOrder{}, err
	}
	return orders.Put(ctx, state.WorkOrder{Kind: state.WorkSpawn, MachineID: rec.ID, Type: a.Type, Backend: a.Backend,
		Node: &node, Timeout: p.Policy.ProvisionTimeout})
}

// mayHold is the one gate through which the cluster's authority leaves
// the leader in a work order: a node config that carries the cluster's
// token or the CA key (a server's) goes only to a host that is a proven
// server, a voter of Raft (see raftServers), read afresh now. The planner
// places servers only there already; this holds whatever a plan, a
// resumed record or a future path asks.
func (e *Executor) mayHold(ctx context.Context, host string, node nodeconfig.Config) error {
	if node.TLS == nil || node.TLS.CAKey == "" {
		return nil
	}
	servers, err := raftServers(ctx, e.Consul)
	if err != nil {
		return fmt.Errorf("a server's node config for host %s: %w", host, err)
	}
	addr := ""
	if ms, err := consulclient.Members(ctx, e.Consul); err == nil {
		for _, m := range ms {
			if m.Name == host {
				addr = m.Addr
			}
		}
	}
	if s, ok := servers.of(host, addr); !ok || !s.voter {
		return fmt.Errorf("a server's node config (the cluster's token, the CA key) may go only to a Raft voter, and host %s is none", host)
	}
	return nil
}

// spawned records how a spawn ended, on whichever host: joining with its
// address, or to be destroyed with why. orders is the host's folder of
// orders, nil for the leader's own spawn. A spawn its host never started
// is taken back, and its record removed, since nothing was made.
func (e *Executor) spawned(ctx context.Context, p *rules.Platform, orders *Orders, rec Record, a state.Action, w state.WorkOrder, err error, log hclog.Logger) {
	if ctx.Err() != nil {
		return // leadership is gone; the next leader resumes
	}
	key := a.Backend
	if orders != nil {
		key = hostKey(a.Host, a.Backend)
	}
	if err == nil && w.State == state.WorkDone && w.Instance != nil {
		e.backendOK(key)
		rec.State, rec.Updated, rec.Address, rec.Addresses = StateJoining, e.Clock.Now(), w.Instance.Address, w.Instance.Addresses
		// Only a list its host published after the outcome can tell
		// the machine gone. The leader's own, never published, names
		// no host: whoever leads judges it by its own list.
		rec.HostSince = w.Index
		if orders == nil && e.Served != nil && w.Index == 0 {
			rec.Host = ""
		}
		if w.Scope != "" {
			rec.Scope = w.Scope
		}
		if _, err := e.Inventory.Put(ctx, rec); err != nil {
			log.Error("record spawned machine", telemetry.KeyError, err)
			e.finish(a, err)
			return
		}
		if orders != nil {
			if err := orders.Delete(ctx, w); err != nil {
				log.Warn("remove a finished work order", telemetry.KeyError, err)
			}
		}
		e.finish(a, nil)
		log.Info("machine spawned", telemetry.KeyHost, cmp.Or(a.Host, e.Self), telemetry.KeyAddress, w.Instance.Address)
		e.Hooks.Fire(ctx, p, "after_spawn", a)
		return
	}
	switch {
	case err != nil:
	case orders == nil:
		err = errors.New(w.Error)
	case w.State == state.WorkDone:
		err = fmt.Errorf("host %s reported the spawn done without the machine it made", a.Host)
	default:
		err = fmt.Errorf("host %s: %s", a.Host, w.Error)
	}
	neverMade := w.Index == 0 && w.State == state.WorkNew && errors.Is(err, errOrderNeverWritten)
	if orders != nil && w.Index != 0 && (w.State == state.WorkNew || w.Finished()) {
		// Not started: take it back, so the host never starts a spawn
		// nobody waits for. Finished: read. A claim that comes first
		// wins, and the removal waits for it.
		if derr := orders.Delete(ctx, w); derr == nil && w.State == state.WorkNew {
			err, neverMade = fmt.Errorf("%w; the order was taken back before the host started it", err), true
		}
	}
	if neverMade {
		// Nothing was made: the record and the credentials made for it
		// go, and the need is planned again.
		e.finish(a, err)
		log.Warn("spawn on another host given up before it started", telemetry.KeyHost, a.Host, telemetry.KeyError, err)
		if derr := e.deleteRecord(ctx, rec); derr != nil {
			log.Error("delete the record of a spawn never started", telemetry.KeyError, derr)
			return
		}
		e.forget(ctx, rec.ID, rec.Host, log)
		return
	}
	if !errors.Is(err, errHostGone) && !errors.Is(err, context.DeadlineExceeded) || w.State == state.WorkFailed {
		e.backendFailed(key, p, err)
	}
	e.finish(a, err)
	log.Error("spawn failed", telemetry.KeyHost, cmp.Or(a.Host, e.Self), telemetry.KeyError, err)
	rec.State, rec.Updated, rec.Reason = StateDestroying, e.Clock.Now(), "spawn failed: "+err.Error()
	if _, perr := e.Inventory.Put(ctx, rec); perr != nil {
		log.Error("record spawn failure", telemetry.KeyError, perr)
	}
}

// destroyElsewhere has a.Host destroy machine a.MachineID, and waits for it
// to be done. An order already there decides: a spawn not started is taken
// back, one running is waited for by a later pass, a destroy is awaited.
func (e *Executor) destroyElsewhere(ctx context.Context, p *rules.Platform, a state.Action) error {
	orders := NewOrders(e.Inventory.Store, a.Host)
	w, ok, _, err := orders.Get(ctx, a.MachineID, nil)
	if err != nil {
		return err
	}
	switch {
	case ok && w.Kind == state.WorkSpawn && w.State == state.WorkNew:
		if err := orders.Delete(ctx, w); err != nil {
			return fmt.Errorf("take back the spawn on %s: %w", a.Host, err)
		}
		return nil // never started: nothing to destroy
	case ok && w.State == state.WorkRunning && w.Kind == state.WorkSpawn:
		return fmt.Errorf("host %s %w", a.Host, errHostBusy)
	case ok && w.Kind == state.WorkDestroy && !w.Finished():
	default:
		if e.Grant != nil {
			if err := e.Grant(ctx, a.Host); err != nil {
				return fmt.Errorf("let host %s read its work orders: %w", a.Host, err)
			}
		}
		next := state.WorkOrder{Kind: state.WorkDestroy, MachineID: a.MachineID, Type: a.Type, Backend: a.Backend, Timeout: p.Policy.ProvisionTimeout}
		if ok {
			next.Index = w.Index
		}
		if w, err = orders.Put(ctx, next); err != nil {
			return err
		}
	}
	w, err = e.await(ctx, orders, w)
	if err != nil {
		return err
	}
	if derr := orders.Delete(ctx, w); derr != nil {
		e.Log.Warn("remove a finished work order", telemetry.KeyError, derr)
	}
	if w.State == state.WorkFailed {
		return fmt.Errorf("host %s: %s", a.Host, w.Error)
	}
	return nil
}

// await waits for w to be finished by its host, until ctx ends or the host
// is no longer an alive member. A read that fails (a Raft election) is
// tried again after a pause, until the deadline.
func (e *Executor) await(ctx context.Context, orders Orders, w state.WorkOrder) (state.WorkOrder, error) {
	if w.Finished() {
		return w, nil
	}
	var end error
	awaiting := watch.Watch{Wait: awaitRecheck, Clock: e.Clock, Retry: awaitRetry,
		OnError: func(err error, _ int) { e.Log.Debug("read a work order", telemetry.KeyError, err) }}
	err := awaiting.Run(ctx, func(q *api.QueryOptions) (uint64, bool, error) {
		if err := e.hostAlive(ctx, orders.Host); errors.Is(err, errHostGone) {
			end = err
			return 0, false, watch.ErrStop
		} else if err != nil {
			e.Log.Debug("read a host's health", telemetry.KeyError, err)
		}
		if q.WaitIndex == 0 {
			q.WaitIndex = w.Index // a wait from the order as written, not a fresh read
		}
		got, ok, idx, err := orders.Get(ctx, w.MachineID, q)
		switch {
		case err != nil:
			return 0, false, err
		case !ok:
			end = fmt.Errorf("the work order on %s is gone", orders.Host)
			return 0, false, watch.ErrStop
		}
		if w = got; w.Finished() {
			return 0, false, watch.ErrStop
		}
		return idx, false, nil
	}, nil)
	if err != nil {
		return w, fmt.Errorf("no outcome from host %s within the provision timeout: %w", orders.Host, err)
	}
	return w, end
}

// awaitRetry paces the reads of an order after they failed: a host's
// outcome is read again soon once the servers answer.
var awaitRetry = clock.Backoff{Initial: time.Second, Max: time.Second, Spread: 1}

// hostAlive reports whether host is an alive member, by its serf health
// check: one node's checks, not the member list.
func (e *Executor) hostAlive(ctx context.Context, host string) error {
	cctx, cancel := context.WithTimeout(ctx, consulCallTimeout)
	defer cancel()
	checks, _, err := e.Consul.Health().Node(host, (&api.QueryOptions{}).WithContext(cctx))
	if err != nil {
		return fmt.Errorf("read the health of host %s: %w", host, err)
	}
	for _, c := range checks {
		if c.CheckID == "serfHealth" {
			if c.Status == api.HealthPassing {
				return nil
			}
			break
		}
	}
	return fmt.Errorf("host %s %w", host, errHostGone)
}
