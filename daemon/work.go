package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"

	"github.com/raptiformica/raptiformica/backends"
	"github.com/raptiformica/raptiformica/internal/clock"
	"github.com/raptiformica/raptiformica/internal/fsutil"
	"github.com/raptiformica/raptiformica/internal/nodeconfig"
	"github.com/raptiformica/raptiformica/internal/state"
	"github.com/raptiformica/raptiformica/internal/telemetry"
	"github.com/raptiformica/raptiformica/internal/watch"
	"github.com/raptiformica/raptiformica/reconcile"
)

const (
	// workWait is how long one blocking read of this machine's work
	// orders waits for a change.
	workWait = 5 * time.Minute
	// outcomeTimeout bounds writing an order's outcome, which outlives
	// the agent's own stop: a spawn that ended is reported even then.
	outcomeTimeout = 30 * time.Second
)

// worker runs the work orders the leader gives this machine: the spawns
// and destroys placed on its backends. It claims each order by
// check-and-set before it calls the backend, so that an order runs once
// however many times it is read, and writes the outcome for whoever leads.
type worker struct {
	orders   reconcile.Orders
	backends func() map[string]backends.Backend
	// env is this machine's own: a new machine's node config names the
	// Consul binary and cluster folder of the leader that wrote it,
	// which mean nothing here.
	env backends.Env
	// published, when set, writes an order's outcome with write and then
	// publishes this machine's offer again, with the lists of its
	// backends, no check in between (offerer.publishAfter): the leader
	// judges the machine by a list published after the outcome.
	published func(ctx context.Context, write func()) uint64
	// served is the file that keeps which backends this machine has run
	// orders on: only their lists are published (see hosting).
	served string
	clock  clock.Clock
	log    hclog.Logger

	mu      sync.Mutex
	running map[string]bool // machine IDs of the orders running here; guarded by mu
	hosts   map[string]bool // backends this machine has run orders on; guarded by mu
	said    map[string]string
	// unanswered holds, by machine ID, the orders whose claim got no
	// answer (see take), as read before the claim took the node config
	// out of KV. Only Run's goroutine touches it.
	unanswered map[string]state.WorkOrder
	wg         sync.WaitGroup
}

// hosting reports the backends this machine has run work orders on, and so
// holds machines of: the offer lists those backends' machines only. A
// backend every member can list (the local machines of one box, say) would
// otherwise have every member publish the same list again on every change,
// which costs the cluster the square of its size; only the members the
// leader gave work need to say what they hold.
func (w *worker) hosting() map[string]bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.hosts == nil {
		w.hosts = map[string]bool{}
		if b, err := os.ReadFile(w.served); err == nil {
			var names []string
			if json.Unmarshal(b, &names) == nil {
				for _, n := range names {
					w.hosts[n] = true
				}
			}
		}
	}
	return maps.Clone(w.hosts)
}

// serve notes that this machine runs orders on backend, for good: its
// machines may outlive any agent restart.
func (w *worker) serve(backend string) {
	hosts := w.hosting()
	if hosts[backend] {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.hosts[backend] = true
	names := slices.Sorted(maps.Keys(w.hosts))
	b, _ := json.Marshal(names)
	if w.served != "" {
		if err := fsutil.WriteFileAtomic(w.served, b, 0o600); err != nil {
			w.log.Warn("keep the backends this machine hosts machines on", telemetry.KeyError, err)
		}
	}
}

// workRetry is the pause after failed reads of the orders: a host
// without its orders makes nothing, so it asks again soon.
var workRetry = clock.Backoff{Initial: 2 * time.Second, Max: 2 * time.Second, Spread: 1}

// Run takes and runs orders until ctx ends, then waits for the running
// ones and returns nil.
func (w *worker) Run(ctx context.Context) error {
	defer w.wg.Wait()
	w.running, w.said, w.unanswered = map[string]bool{}, map[string]string{}, map[string]state.WorkOrder{}
	anchored := false
	ordersWatch := watch.Watch{Wait: workWait, Clock: w.clock, Retry: workRetry,
		OnError: func(err error, _ int) { w.log.Debug("read this machine's work orders", telemetry.KeyError, err) }}
	_ = ordersWatch.Run(ctx, func(q *api.QueryOptions) (uint64, bool, error) {
		if !anchored {
			// Until it is there, the watch wakes on every write in the
			// cluster: tried again each time round, and not faster
			// than once a second meanwhile.
			if err := w.orders.Anchor(ctx); err == nil {
				anchored = true
			} else {
				w.once(".watch", "anchor this machine's folder of work orders", err)
				if err := clock.Sleep(ctx, w.clock, time.Second); err != nil {
					return 0, false, err
				}
			}
		}
		orders, bad, next, err := w.orders.List(ctx, q)
		if err != nil {
			return 0, false, err
		}
		for _, b := range bad {
			w.once(b.Key, "a work order that does not parse is left alone", errors.New(b.Error))
		}
		var unsure error
		for _, id := range slices.Sorted(maps.Keys(orders)) {
			if err := w.take(ctx, orders[id]); err != nil {
				unsure = err
			}
		}
		for id := range w.unanswered {
			if _, ok := orders[id]; !ok {
				delete(w.unanswered, id) // taken back: nothing to run
			}
		}
		if unsure != nil {
			// A claim that went unapplied changed nothing to wake the
			// watch: read afresh after workRetry instead.
			return 0, false, unsure
		}
		return next, false, nil
	}, nil)
	return nil
}

// once logs a problem with an order once per distinct error.
func (w *worker) once(id, msg string, err error) {
	if w.said[id] == err.Error() {
		return
	}
	w.said[id] = err.Error()
	w.log.Warn(msg, telemetry.KeyMachineID, id, telemetry.KeyError, err)
}

// take claims a new order and starts it; an order that says it runs but
// does not run here was running when this agent stopped, and is reported
// failed, so that the leader cleans up whatever it left. It returns an
// error when a claim got no answer: the order is to be read again soon.
func (w *worker) take(ctx context.Context, o state.WorkOrder) error {
	w.mu.Lock()
	busy := w.running[o.MachineID]
	w.mu.Unlock()
	switch {
	case busy || o.Finished():
		return nil
	case o.State == state.WorkRunning:
		if mine, ok := w.unanswered[o.MachineID]; ok && mine.Kind == o.Kind {
			// Our own claim, applied though its answer was lost: only
			// this agent claims this machine's orders, and it read the
			// order new before it claimed.
			delete(w.unanswered, o.MachineID)
			w.start(ctx, o, mine.Node)
			return nil
		}
		w.report(ctx, o, backends.Instance{}, errors.New("this machine's agent stopped while it ran the order"))
		return nil
	}
	// The claim takes the new machine's credentials out of KV: this
	// agent holds them in memory for the spawn, and an order that says it
	// runs is never run again.
	read, node := o, o.Node
	o.State, o.Node = state.WorkRunning, nil
	claimed, err := w.orders.Put(ctx, o)
	switch {
	case errors.Is(err, state.ErrConflict):
		delete(w.unanswered, o.MachineID)
		return nil // taken back, or changed: the next read decides
	case err != nil:
		// A write whose answer is lost (the Raft leader gone between
		// its commit and its reply) may have been applied: the order
		// then reads as running, and must not be taken for one this
		// agent left behind when it stopped.
		w.unanswered[o.MachineID] = read
		w.once(o.MachineID, "claim a work order", err)
		return fmt.Errorf("claim the work order for %s: %w", o.MachineID, err)
	}
	delete(w.unanswered, o.MachineID)
	w.start(ctx, claimed, node)
	return nil
}

// start runs a claimed order in its own goroutine, with the node config
// its claim took out of KV, and reports its outcome.
func (w *worker) start(ctx context.Context, claimed state.WorkOrder, node *nodeconfig.Config) {
	o := claimed
	w.mu.Lock()
	w.running[o.MachineID] = true
	w.mu.Unlock()
	w.wg.Go(func() {
		defer func() {
			w.mu.Lock()
			delete(w.running, o.MachineID)
			w.mu.Unlock()
		}()
		claimed.Node = node
		inst, scope, err := w.run(ctx, claimed)
		claimed.Scope = scope
		w.report(ctx, claimed, inst, err)
	})
}

// run calls the backend for one claimed order, within its timeout, and
// says what the backend manages a spawned machine in.
func (w *worker) run(ctx context.Context, o state.WorkOrder) (inst backends.Instance, scope string, err error) {
	log := w.log.With(telemetry.KeyAction, string(o.Kind), telemetry.KeyMachineID, o.MachineID, telemetry.KeyBackend, o.Backend)
	be, ok := w.backends()[o.Backend]
	if !ok {
		return backends.Instance{}, "", fmt.Errorf("backend %q is not configured on %s", o.Backend, w.orders.Host)
	}
	w.serve(o.Backend)
	log.Info("running a work order from the leader")
	begin := w.clock.Now()
	if o.Kind == state.WorkSpawn && o.Node != nil {
		node := *o.Node
		node.ClusterDir, node.ConsulBinary, node.MadeBy = w.env.ClusterDir, w.env.ConsulBinary, w.orders.Host
		o.Node = &node
	}
	inst, err = reconcile.RunOrder(ctx, be, o)
	log.Info("work order ran", telemetry.KeyDuration, w.clock.Now().Sub(begin), telemetry.KeyError, err)
	if err == nil && o.Kind == state.WorkSpawn {
		if sc, ok := be.(backends.Scoped); ok {
			sctx, cancel := context.WithTimeout(ctx, o.Timeout)
			scope, _ = sc.Scope(sctx)
			cancel()
		}
	}
	return inst, scope, err
}

// report writes how an order ended, tried until outcomeTimeout (a Raft
// election may be under way), and then publishes this machine's offer
// again: after the outcome, so that the leader, which records the machine
// at the outcome's index, judges it only by a list written later.
func (w *worker) report(ctx context.Context, o state.WorkOrder, inst backends.Instance, err error) {
	o.Node = nil // its credentials were for the spawn: they go with it
	o.State, o.Error, o.Instance = state.WorkDone, "", nil
	if err != nil {
		o.State, o.Error = state.WorkFailed, clip(err.Error(), maxOrderError)
	} else if o.Kind == state.WorkSpawn {
		o.Instance = &inst
	}
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), outcomeTimeout)
	defer cancel()
	write := func() {
		var werr error
		_ = clock.Poll(rctx, w.clock, time.Second, func() (bool, error) {
			_, werr = w.orders.Put(rctx, o)
			return werr == nil || errors.Is(werr, state.ErrConflict), nil
		})
		if werr != nil {
			w.log.Error("report a work order's outcome", telemetry.KeyMachineID, o.MachineID, telemetry.KeyError, werr)
		}
	}
	if w.published == nil {
		write()
		return
	}
	w.published(rctx, write)
}

// clip keeps the first n bytes of s, marked as cut: a backend's error says
// what went wrong first.
func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + " … (cut)"
}

// maxOrderError caps the error an outcome carries: a backend's message may
// be long (a command's output), and an order must stay small enough to be
// read back.
const maxOrderError = 4 << 10
