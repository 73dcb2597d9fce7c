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

// Member is a Consul LAN member.
type Member struct {
	Name    string             `json:"name"`
	Address string             `json:"address"`
	Status  state.MemberStatus `json:"status"`
	Type    string             `json:"machine_type,omitempty"`
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
	Offers map[string]state.Offer
	// Provisioned are the members' provisioning records, by machine ID,
	// read only when a machine type is ready_after_provision (nil
	// otherwise): a machine of such a type counts as live only once its
	// record says ok for the description's checksum.
	Provisioned map[string]state.Provisioned
	// HostBackoffUntil is, by host then backend, when a backend that
	// failed on another member may be given work there again.
	HostBackoffUntil map[string]map[string]time.Time
	// Bad are the stored records this pass refused (state.Decode): named
	// in the status, never acted on.
	Bad []state.Bad
	// TermStart is when this leader's term began, on its clock; zero when
	// unknown (a dry run), which counts as long ago.
	TermStart time.Time
	// Signals are the last readings of the signals the types scale on,
	// by machine type; a type missing has none yet.
	Signals map[string]state.Reading
	// Scales are the scale states kept in KV, by machine type: the
	// decisions of this leader's passes and of the leaders before it.
	Scales map[string]state.ScaleState
}

// Decision is the planner's answer for one pass.
type Decision struct {
	Actions []state.Action              `json:"actions"`
	Types   map[string]state.TypeStatus `json:"types"`
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
	// Scales are this pass's scale states of the types that scale on a
	// signal, to be kept in KV where they differ from Observed.Scales.
	Scales map[string]state.ScaleState `json:"-"`
}

// Plan is the part of the decision the leader publishes (GET /v1/plan).
func (d Decision) Plan() state.Plan {
	return state.Plan{Actions: d.Actions, Types: d.Types, Halted: d.Halted, Waiting: d.Waiting, NextCheck: d.NextCheck}
}
