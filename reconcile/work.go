package reconcile

import (
	"context"
	"errors"
	"fmt"

	"github.com/hashicorp/consul/api"

	"github.com/raptiformica/raptiformica/backends"
	"github.com/raptiformica/raptiformica/internal/kvschema"
	"github.com/raptiformica/raptiformica/internal/state"
)

// watchKey is a key that stays in every host's folder of orders: Consul
// answers a blocking read of a prefix that holds no key with the index of
// the whole KV store, so a host watching an empty folder would wake on
// every write in the cluster, which at a thousand machines is the load
// that matters. It is no order.
const watchKey = ".watch"

// Orders are the work orders of one host, in its KV folder.
type Orders struct {
	Host   string
	folder state.Folder[state.WorkOrder]
	raw    *kvschema.Folder
}

// NewOrders returns the work orders given to host.
func NewOrders(store *kvschema.Store, host string) Orders {
	return Orders{Host: host, folder: state.WorkOrders(store, host), raw: store.Work(host)}
}

// List returns the host's orders by machine ID, the ones that did not
// parse (for its reader to report), and the index to wait from: a
// blocking query when q has a WaitIndex.
func (o Orders) List(ctx context.Context, q *api.QueryOptions) (map[string]state.WorkOrder, []state.Bad, uint64, error) {
	return o.folder.List(ctx, q)
}

// Anchor writes the key that keeps the folder from being empty (see
// watchKey), once: a key already there is left as it is. The host does
// it before it watches.
func (o Orders) Anchor(ctx context.Context) error {
	_, err := o.raw.CAS(ctx, watchKey, []byte("the host's watch of this folder wakes only for its orders"), 0)
	return err
}

// Get reads the order for machine id, waiting for a change past q's
// WaitIndex when it has one; ok is false when there is none. next is the
// index to wait from.
func (o Orders) Get(ctx context.Context, id string, q *api.QueryOptions) (w state.WorkOrder, ok bool, next uint64, err error) {
	return o.folder.Get(ctx, id, q)
}

// Put writes w if its Index still matches (0: only if there is none) and
// returns it with its new index; state.ErrConflict when someone else
// wrote first.
func (o Orders) Put(ctx context.Context, w state.WorkOrder) (state.WorkOrder, error) {
	return o.folder.Put(ctx, w, w.Index)
}

// Delete removes w if its Index still matches; state.ErrConflict when it
// moved.
func (o Orders) Delete(ctx context.Context, w state.WorkOrder) error {
	return o.folder.Delete(ctx, w.MachineID, w.Index)
}

// RunOrder is the one place the engine calls a backend to make or remove
// a machine: the leader for what it runs itself (in process: the order's
// fast path, without the round trip through KV) and every host for the
// orders it is given (daemon's worker). It calls be within o.Timeout.
func RunOrder(ctx context.Context, be backends.Backend, o state.WorkOrder) (backends.Instance, error) {
	octx, cancel := context.WithTimeout(ctx, o.Timeout)
	defer cancel()
	var inst backends.Instance
	var err error
	switch {
	case o.Kind == state.WorkDestroy:
		err = be.Destroy(octx, o.MachineID)
	case o.Kind == state.WorkSpawn && o.Node != nil:
		inst, err = be.Spawn(octx, backends.Spec{Node: *o.Node})
	default:
		return inst, fmt.Errorf("work order for %s: nothing to run (kind %q)", o.MachineID, o.Kind)
	}
	if err != nil && errors.Is(octx.Err(), context.DeadlineExceeded) {
		err = fmt.Errorf("no answer within the provision timeout (%s): %w", o.Timeout, err)
	}
	return inst, err
}
