// Package reconcile is the control loop: a pure planner that turns the
// platform description and the observed state into actions, and an executor
// that carries them out through backends while recording every intent in
// Consul KV before it acts.
//
// A machine's life, as its inventory record shows it:
//
//	            spawn intent           instance started        member alive
//	(needed) ──────────────▶ spawning ────────────────▶ joining ───────────▶ joined
//	                            │                          │                  │  ▲
//	                            │ provision timeout        │                  │  │ alive again
//	                            ▼                          ▼                  ▼  │
//	                        destroying ◀────────────────────────────────── failed
//	                            │         grace period over (reap),
//	                            ▼         scale-down, or destroy request
//	                         (record deleted once the instance is gone
//	                          and the member has left)
//
// Every transition is written to KV with check-and-set before the action it
// announces runs, so a new leader resumes or cleans up what the old one left
// and never spawns twice for one need.
package reconcile

import (
	"time"

	"github.com/raptiformica/raptiformica/backends"
	"github.com/raptiformica/raptiformica/internal/state"
)

// State is where a machine is in its life; see the package doc for the
// transitions.
type State = state.MachineState

// The machine states.
const (
	StateSpawning   = state.StateSpawning
	StateJoining    = state.StateJoining
	StateJoined     = state.StateJoined
	StateFailed     = state.StateFailed
	StateDestroying = state.StateDestroying
)

// Record is a machine in the inventory (state.Record).
type Record = state.Record

// MemberStatus is a Consul LAN member's serf status.
type MemberStatus string

// Member statuses, as serf reports them.
const (
	MemberAlive   MemberStatus = "alive"
	MemberLeaving MemberStatus = "leaving"
	MemberLeft    MemberStatus = "left"
	MemberFailed  MemberStatus = "failed"
)

// Member is a Consul LAN member.
type Member struct {
	Name    string       `json:"name"`
	Address string       `json:"address"`
	Status  MemberStatus `json:"status"`
	Type    string       `json:"machine_type,omitempty"`
	// Server is true for a member the Raft configuration lists, voter or
	// not: never from its gossip tags, which are its own word.
	Server bool `json:"server"`
	// Voter is true for a server that is a healthy Raft voter. A new server
	// is a non-voter until autopilot finds it stable; until then it adds
	// nothing to quorum, so it does not count as joined. It is only known
	// for machines still joining.
	Voter bool `json:"voter"`
	// RaftVoter is true for a server the Raft configuration has as a
	// voter, healthy or not: a dead one still counts toward quorum. It is
	// what proves a member a server (a client cannot become a voter), and
	// so what may receive a server's credentials.
	RaftVoter bool `json:"raft_voter,omitempty"`
}

// Observed is everything the planner looks at besides the description.
type Observed struct {
	// Records are the inventory, by machine ID.
	Records map[string]Record
	// Members are Consul's LAN members, by node name (the machine ID).
	Members map[string]Member
	// Instances are each backend's machines, by backend name then machine
	// ID. A backend that could not be listed is absent, so that nothing is
	// judged from missing knowledge.
	Instances map[string]map[string]backends.Instance
	// LocalOnly names the backends whose list covers only the machines this
	// node spawned: a machine missing from it is unknown, not gone.
	LocalOnly map[string]bool
	// Scopes are what the leader's own backends manage, by backend
	// (backends.Scoped); a backend missing has an unknown scope.
	Scopes map[string]string
	// ListedAt is, by backend, the inventory index read before its list
	// was taken (an earlier pass's, when the list was reused): a machine
	// recorded after it is not judged gone for missing from the list. A
	// backend missing counts as listed now.
	ListedAt map[string]uint64
	// BackendErrors says why a backend cannot be used now (unavailable, or
	// listing failed).
	BackendErrors map[string]string
	// BackoffUntil is when each failing backend may be tried again.
	BackoffUntil map[string]time.Time
	// BackendFailures is the last error of each backend backing off.
	BackendFailures map[string]string
	// LastSpawn is when each machine type was last spawned.
	LastSpawn map[string]time.Time
	// InFlight are the machine IDs with an action still running. A spawn's
	// record is written before it runs, so every spawn in flight also has a
	// record.
	InFlight map[string]bool
	// Self is the leader's own machine ID: never scaled down by itself.
	Self string
	// Seen is what the previous passes of this leader saw of the machines
	// that are not up (Decision.Seen of the last pass): removals wait for
	// ages measured on its clock, in passes in a row.
	Seen map[string]Sighting
	// Offers are the alive members' offers of backends, by machine ID; nil
	// when they could not be read.
	Offers map[string]Offer
	// Provisioned are the members' provisioning records, by machine ID,
	// read only when a machine type is ready_after_provision (nil
	// otherwise): a machine of such a type counts as live only once its
	// record says ok for the description's checksum.
	Provisioned map[string]Provisioned
	// HostBackoffUntil is, by host then backend, when a backend that
	// failed on another member may be given work there again.
	HostBackoffUntil map[string]map[string]time.Time
	// Bad are the stored records this pass refused (state.Decode): named
	// in the status, never acted on.
	Bad []state.Bad
	// TermStart is when this leader's term began, on its clock; zero when
	// unknown (a dry run), which counts as long ago.
	TermStart time.Time
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
}

// Decision is the planner's answer for one pass.
type Decision struct {
	Actions []Action              `json:"actions"`
	Types   map[string]TypeStatus `json:"types"`
	// Halted says why replacements are suspended, or is empty.
	Halted string `json:"halted,omitempty"`
	// Waiting explains needs that could not be acted on this pass
	// (cooldown, backoff, concurrency limit, no usable backend).
	Waiting []string `json:"waiting,omitempty"`
	// NextCheck is the earliest time at which the same observation would
	// give another plan (a grace period, cooldown, backoff or timeout runs
	// out); zero when only an event can change it. The loop wakes then, so
	// that timers act on time rather than at the next resync.
	NextCheck time.Time `json:"next_check,omitzero"`
	// FreshLists asks that the next pass list every backend afresh, not
	// reuse a recent list: a removal waits on it for its confirmation.
	FreshLists bool `json:"-"`
	// Seen is this pass's sightings, for the next pass's Observed.Seen.
	Seen map[string]Sighting `json:"-"`
}
