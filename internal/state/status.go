package state

import "time"

// MemberStatus is a Consul LAN member's serf status.
type MemberStatus string

// Member statuses, as serf reports them.
const (
	MemberAlive   MemberStatus = "alive"
	MemberLeaving MemberStatus = "leaving"
	MemberLeft    MemberStatus = "left"
	MemberFailed  MemberStatus = "failed"
)

// Status is what the leader reports after each pass. It is published to KV
// (kvschema.Status) so that every agent and the CLI can show it.
type Status struct {
	Leader        string                `json:"leader"`
	Cluster       string                `json:"cluster"`
	LastReconcile time.Time             `json:"last_reconcile"`
	LastSuccess   time.Time             `json:"last_success,omitzero"`
	LastResult    string                `json:"last_result"`
	LastError     string                `json:"last_error,omitempty"`
	Duration      string                `json:"duration"`
	Types         map[string]TypeStatus `json:"types"`
	Planned       []Action              `json:"planned"`
	InFlight      []Action              `json:"in_flight"`
	Recent        []Outcome             `json:"recent,omitempty"`
	Halted        string                `json:"halted,omitempty"`
	Waiting       []string              `json:"waiting,omitempty"`
	BackendErrors map[string]string     `json:"backend_errors,omitempty"`
	// OfferedBy names, for each backend the leader cannot use itself, the
	// other members that offer it: where its spawns go instead.
	OfferedBy map[string][]string `json:"offered_by,omitempty"`
	// BadRecords are the stored records the pass refused (one too large,
	// unreadable, or naming another machine than its key): none of them
	// was acted on.
	BadRecords []Bad `json:"bad_records,omitempty"`
}

// Kind names an action.
type Kind string

// Action kinds.
const (
	// KindSpawn creates a machine of Type on Backend.
	KindSpawn Kind = "spawn"
	// KindMarkJoined records that a spawned or failed machine is alive.
	KindMarkJoined Kind = "mark_joined"
	// KindMarkFailed records when a machine was first seen failed.
	KindMarkFailed Kind = "mark_failed"
	// KindReap removes a machine that failed for longer than the grace
	// period, or never joined: force-leave, destroy, delete the record.
	KindReap Kind = "reap"
	// KindScaleDown removes a healthy machine above its type's max: leave,
	// destroy, delete the record.
	KindScaleDown Kind = "scale_down"
	// KindPreempt removes a healthy machine of a lower priority whose room
	// a type below its min needs, where nothing else can place it: leave,
	// destroy, delete the record; its own type may go below its min.
	KindPreempt Kind = "preempt"
	// KindPromote makes a standby machine of a type (Record.Spare) one
	// of its live machines, in the place of one that died: a record
	// written, nothing started.
	KindPromote Kind = "promote"
	// KindDestroyOrphan destroys a backend instance that has no record.
	KindDestroyOrphan Kind = "destroy_orphan"
	// KindRestoreRecord writes the record of an alive member that has
	// none (a KV re-seeded from an older mirror), from what its backend
	// lists: the record was lost, not the machine.
	KindRestoreRecord Kind = "restore_record"
	// KindUnvote takes a server Consul has had failed for longer than the
	// grace period out of the Raft configuration, and leaves its machine
	// and record to its reap: while the reap does not go ahead, the dead
	// server would count toward quorum.
	KindUnvote Kind = "unvote"
)

// Action is one step the executor takes.
type Action struct {
	Kind      Kind   `json:"kind"`
	MachineID string `json:"machine_id,omitempty"`
	Type      string `json:"machine_type,omitempty"`
	Backend   string `json:"backend,omitempty"`
	Reason    string `json:"reason"`
	// Manual marks a spawn asked for by hand; see Record.Manual.
	Manual bool `json:"manual,omitempty"`
	// Spare marks the spawn of a standby machine; see Record.Spare.
	Spare bool `json:"spare,omitempty"`
	// Host is the member that runs the action when it is not the leader:
	// the one placement chose for a spawn, the one that holds the machine
	// for a removal.
	Host string `json:"host,omitempty"`
	// Scope is, for a spawn, what the chosen host's backend manages (its
	// offer's, or the leader's own): recorded with the intent, so that a
	// machine its host left half-made is the leader's to clean up when
	// both see the same thing.
	Scope string `json:"scope,omitempty"`
}

// TypeStatus is desired against live for one machine type.
type TypeStatus struct {
	Min int `json:"min"`
	Max int `json:"max"`
	// Live are joined members that are alive.
	Live int `json:"live"`
	// Pending are spawning or joining.
	Pending int `json:"pending"`
	// Failed are failed members not yet reaped.
	Failed int `json:"failed"`
	// Unready are alive members of a ready_after_provision type whose
	// provisioning has not succeeded for the description in force: not
	// live, and not replaced either (a replacement would provision the
	// same way).
	Unready int `json:"unready,omitempty"`
	// Priority is the type's (rules.MachineType.Priority).
	Priority int `json:"priority,omitempty"`
	// GaveWay says, while the type is below its min for want of room,
	// which types of higher priority hold the room it could use.
	GaveWay string `json:"gave_way,omitempty"`
	// Scale is the type's scaling on a signal, when it has one.
	Scale *ScaleStatus `json:"scale,omitempty"`
	// Spares are its standby machines that are up (rules'
	// MachineType.Spares): not live, promoted when a live one dies.
	Spares int `json:"spares,omitempty"`
}

// ScaleStatus is, for status, plan and metrics, a type's signal, its last
// value and the decision taken on it.
type ScaleStatus struct {
	// Signal names the signal and what it reads ("prometheus: <query>").
	Signal string `json:"signal"`
	// Target is the value one machine is for.
	Target float64 `json:"target"`
	// Reading is the last reading.
	Reading Reading `json:"reading"`
	// Want is the count decided, between min and max.
	Want int `json:"want"`
	// Decision says what was decided and why.
	Decision string `json:"decision"`
}

// Outcome is a finished action and how it ended.
type Outcome struct {
	Action
	Result string    `json:"result"` // success or error
	Error  string    `json:"error,omitempty"`
	At     time.Time `json:"at"`
}

// Plan is what the leader would do now, as `plan` shows it: the part of
// the planner's decision (reconcile.Decision) that it publishes.
type Plan struct {
	Actions []Action              `json:"actions"`
	Types   map[string]TypeStatus `json:"types"`
	// Halted says why replacements are suspended, or is empty.
	Halted string `json:"halted,omitempty"`
	// Waiting explains needs that could not be acted on this pass.
	Waiting []string `json:"waiting,omitempty"`
	// NextCheck is the earliest time at which the same observation would
	// give another plan; zero when only an event can change it.
	NextCheck time.Time `json:"next_check,omitzero"`
}
