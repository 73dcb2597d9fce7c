package state

import "time"

// MachineState is where a machine is in its life; package reconcile draws
// the transitions.
type MachineState string

// The machine states.
const (
	StateSpawning   MachineState = "spawning"
	StateJoining    MachineState = "joining"
	StateJoined     MachineState = "joined"
	StateFailed     MachineState = "failed"
	StateDestroying MachineState = "destroying"
)

// MaxRecordSize bounds one stored inventory record: a few addresses, a
// reason and times come to well under a KiB; a reason holds at most an
// error's text.
const MaxRecordSize = 64 << 10

// RecordKind names inventory records in messages.
const RecordKind = "inventory record"

// Record is a machine in the inventory, stored as JSON at
// raptiformica/inventory/<machine id>. Only servers write it: its type,
// host, scope, manual mark, creation time and state decide what the leader
// places where, and what it destroys.
type Record struct {
	ID      string       `json:"id"`
	Type    string       `json:"type"`
	Backend string       `json:"backend"`
	State   MachineState `json:"state"`
	Address string       `json:"address,omitempty"`
	// Addresses are all the addresses its backend reported at spawn, for
	// a machine on several networks: over the mesh, members dial each
	// until it links.
	Addresses []string `json:"addresses,omitempty"`
	// Manual marks a machine spawned by hand (`raptiformica spawn`): it is
	// on top of what the description asks for, so it neither counts toward
	// its type's min and max nor is ever scaled down. It is reaped, and not
	// replaced, when it dies.
	Manual bool `json:"manual,omitempty"`
	// Host is the member that made the machine and holds its instance,
	// when that is not whoever leads: its destroy goes there, and its
	// instance is judged from that host's list.
	Host string `json:"host,omitempty"`
	// HostSince is the KV index at which the host reported the machine
	// made: only a list the host published after it (a larger index)
	// can tell that the machine is gone.
	HostSince uint64 `json:"host_since,omitempty"`
	// Scope is what its backend manages it in, as its host's backend
	// named it (backends.Scoped): a leader whose own backend has the same
	// scope lists and destroys it itself, its host alive or not.
	Scope string `json:"scope,omitempty"`
	// Spare marks a standby machine of its type (rules.MachineType.Spares):
	// made and joined, not counted as live, promoted when a machine of the
	// type dies.
	Spare bool `json:"spare,omitempty"`
	// Seed marks the node that founded the cluster.
	Seed    bool      `json:"seed,omitempty"`
	Created time.Time `json:"created"`
	// Updated is when State last changed.
	Updated time.Time `json:"updated"`
	// FailedSince is when the member was first seen failed; zero when healthy.
	FailedSince time.Time `json:"failed_since,omitzero"`
	// Reason says why the machine is in its state (the last error, or why it
	// is being destroyed).
	Reason string `json:"reason,omitempty"`
	// Index is the record's KV ModifyIndex, for check-and-set.
	Index uint64 `json:"-"`
}

// RecordKey is the machine the record is of.
func (r Record) RecordKey() string { return r.ID }

func (r Record) withIndex(i uint64) Record { r.Index = i; return r }
