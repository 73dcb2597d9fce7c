package state

import (
	"errors"
	"fmt"
	"time"

	"github.com/raptiformica/raptiformica/internal/nodeconfig"
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
	Instance *Instance `json:"instance,omitempty"`
	Scope    string    `json:"scope,omitempty"`
	// Error says why a failed order failed.
	Error string `json:"error,omitempty"`
	// Index is the order's KV ModifyIndex, for check-and-set.
	Index uint64 `json:"-"`
}

// RecordKey is the machine the order is for (Keyed).
func (w WorkOrder) RecordKey() string { return w.MachineID }

// Finished reports whether the order's host is done with it.
func (w WorkOrder) Finished() bool { return w.State == WorkDone || w.State == WorkFailed }

// maxWorkOrderSize bounds one stored order: a node config (a certificate,
// its key, a token) and an instance are a few KiB.
const maxWorkOrderSize = 64 << 10

// WorkOrderKind names work orders in messages.
const WorkOrderKind = "work order"

// ParseWorkOrder reads a stored work order for the machine id.
func ParseWorkOrder(id string, b []byte) (WorkOrder, error) {
	w, err := Decode[WorkOrder](WorkOrderKind, "for "+id, id, b, maxWorkOrderSize)
	if err == nil {
		err = w.valid()
	}
	if err != nil {
		return WorkOrder{}, fmt.Errorf("work order for %s: %w", id, err)
	}
	return w, nil
}

// valid refuses an order its host could not carry out.
func (w WorkOrder) valid() error {
	switch {
	case w.Kind != WorkSpawn && w.Kind != WorkDestroy:
		return fmt.Errorf("unknown kind %q", w.Kind)
	case w.Kind == WorkSpawn && w.Node == nil && w.State == WorkNew:
		return errors.New("a spawn without a node config")
	case w.Timeout <= 0:
		return fmt.Errorf("timeout %s", w.Timeout)
	}
	return nil
}

func (w WorkOrder) withIndex(i uint64) WorkOrder { w.Index = i; return w }
