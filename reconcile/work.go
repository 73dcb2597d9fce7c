package reconcile

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/raptiformica/raptiformica/backends"
	"github.com/raptiformica/raptiformica/internal/kvschema"
	"github.com/raptiformica/raptiformica/internal/nodeconfig"
	"github.com/raptiformica/raptiformica/internal/state"
)

// WorkKind is what a work order asks its host to do.
type WorkKind string

// The work orders' kinds.
const (
	WorkSpawn   WorkKind = "spawn"
	WorkDestroy WorkKind = "destroy"
)

// WorkState is where a work order is.
type WorkState string

// The work orders' states: the leader writes a new one, its host claims it
// (running) by check-and-set before it calls the backend, and writes how
// it ended.
const (
	WorkNew     WorkState = ""
	WorkRunning WorkState = "running"
	WorkDone    WorkState = "done"
	WorkFailed  WorkState = "failed"
)

// WorkOrder is an action the leader gives the member that is to run it:
// the spawn or destroy of one machine on one of that member's backends. It
// is written, like every intent, before the action runs, and it outlives
// the leader that wrote it: its host carries on, and the next leader reads
// the outcome.
type WorkOrder struct {
	Kind      WorkKind `json:"kind"`
	MachineID string   `json:"machine_id"`
	Type      string   `json:"machine_type,omitempty"`
	Backend   string   `json:"backend"`
	// Node is a new machine's config, credentials included: why work
	// orders are readable by their host and the servers only.
	Node *nodeconfig.Config `json:"node,omitempty"`
	// Timeout bounds the backend call on the host.
	Timeout time.Duration `json:"timeout"`
	State   WorkState     `json:"state,omitempty"`
	// Instance is what a done spawn made, and Scope what its backend
	// manages it in (backends.Scoped).
	Instance *backends.Instance `json:"instance,omitempty"`
	Scope    string             `json:"scope,omitempty"`
	// Error says why a failed order failed.
	Error string `json:"error,omitempty"`
	// Index is the order's KV ModifyIndex, for check-and-set.
	Index uint64 `json:"-"`
}

// MachineKey is the machine the order is for (state.Keyed).
func (w WorkOrder) MachineKey() string { return w.MachineID }

// Finished reports whether the order's host is done with it.
func (w WorkOrder) Finished() bool { return w.State == WorkDone || w.State == WorkFailed }

// maxWorkOrderSize bounds one stored order: a node config (a certificate,
// its key, a token) and an instance are a few KiB.
const maxWorkOrderSize = 64 << 10

// ParseWorkOrder reads a stored work order for the machine id.
func ParseWorkOrder(id string, b []byte) (WorkOrder, error) {
	w, err := state.Decode[WorkOrder]("work order", "for "+id, id, b, maxWorkOrderSize)
	if err != nil {
		return WorkOrder{}, err
	}
	switch {
	case w.Kind != WorkSpawn && w.Kind != WorkDestroy:
		return WorkOrder{}, fmt.Errorf("work order for %s: unknown kind %q", id, w.Kind)
	case w.Kind == WorkSpawn && w.Node == nil && w.State == WorkNew:
		return WorkOrder{}, fmt.Errorf("work order for %s: a spawn without a node config", id)
	case w.Timeout <= 0:
		return WorkOrder{}, fmt.Errorf("work order for %s: timeout %s", id, w.Timeout)
	}
	return w, nil
}

// watchKey is a key that stays in every host's folder of orders: Consul
// answers a blocking read of a prefix that holds no key with the index of
// the whole KV store, so a host watching an empty folder would wake on
// every write in the cluster, which at a thousand machines is the load
// that matters. It is no order.
const watchKey = ".watch"

// Orders are the work orders of one host, in its KV folder.
type Orders struct {
	Host   string
	folder *kvschema.Folder
}

// NewOrders returns the work orders given to host.
func NewOrders(store *kvschema.Store, host string) Orders {
	return Orders{Host: host, folder: store.Work(host)}
}

// List returns the host's orders by machine ID, and the index to wait
// from: a blocking query when q has a WaitIndex. An order that does not
// parse is returned in bad, by machine ID, for its reader to report.
func (o Orders) List(ctx context.Context, q *api.QueryOptions) (orders map[string]WorkOrder, bad map[string]error, index uint64, err error) {
	es, index, err := o.folder.Entries(ctx, q)
	if err != nil {
		return nil, nil, 0, err
	}
	orders = make(map[string]WorkOrder, len(es))
	for id, e := range es {
		if id == watchKey {
			continue
		}
		w, err := ParseWorkOrder(id, e.Value)
		if err != nil {
			if bad == nil {
				bad = map[string]error{}
			}
			bad[id] = err
			continue
		}
		w.Index = e.Index
		orders[id] = w
	}
	return orders, bad, index, nil
}

// Anchor writes the key that keeps the folder from being empty (see
// watchKey), once: a key already there is left as it is. The host does
// it before it watches.
func (o Orders) Anchor(ctx context.Context) error {
	_, err := o.folder.CAS(ctx, watchKey, []byte("the host's watch of this folder wakes only for its orders"), 0)
	return err
}

// Get reads the order for machine id, waiting for a change past q's
// WaitIndex when it has one; ok is false when there is none. next is the
// index to wait from.
func (o Orders) Get(ctx context.Context, id string, q *api.QueryOptions) (w WorkOrder, ok bool, next uint64, err error) {
	b, index, next, err := o.folder.Wait(ctx, id, q)
	if err != nil || b == nil {
		return WorkOrder{}, false, next, err
	}
	if w, err = ParseWorkOrder(id, b); err != nil {
		return WorkOrder{}, false, next, err
	}
	w.Index = index
	return w, true, next, nil
}

// Put writes w if its Index still matches (0: only if there is none) and
// returns it with its new index; ErrConflict when someone else wrote first.
func (o Orders) Put(ctx context.Context, w WorkOrder) (WorkOrder, error) {
	b, err := json.Marshal(w)
	if err != nil {
		return w, err
	}
	ok, err := o.folder.CAS(ctx, w.MachineID, b, w.Index)
	if err != nil {
		return w, fmt.Errorf("write the work order for %s on %s: %w", w.MachineID, o.Host, err)
	}
	if !ok {
		return w, fmt.Errorf("write the work order for %s on %s: %w", w.MachineID, o.Host, ErrConflict)
	}
	fresh, found, _, err := o.Get(ctx, w.MachineID, nil)
	if err != nil {
		return w, err
	}
	if !found {
		return w, fmt.Errorf("write the work order for %s on %s: %w", w.MachineID, o.Host, ErrConflict)
	}
	return fresh, nil
}

// Delete removes w if its Index still matches; ErrConflict when it moved.
func (o Orders) Delete(ctx context.Context, w WorkOrder) error {
	ok, err := o.folder.DeleteCAS(ctx, w.MachineID, w.Index)
	if err != nil {
		return fmt.Errorf("delete the work order for %s on %s: %w", w.MachineID, o.Host, err)
	}
	if !ok {
		return fmt.Errorf("delete the work order for %s on %s: %w", w.MachineID, o.Host, ErrConflict)
	}
	return nil
}
