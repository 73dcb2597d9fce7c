package state

import (
	"sort"
	"time"

	"github.com/raptiformica/raptiformica/internal/kvschema"
)

// Offer is what one machine can run: each of the description's backends,
// asked on that machine (Available), as Nomad clients fingerprint their
// task drivers. Every agent publishes its own (kvschema.Offers), so that a
// machine can be placed on any member that offers its backend, not only on
// the leader.
type Offer struct {
	Machine string `json:"machine"`
	// Backends are the description's backends by name.
	Backends map[string]BackendOffer `json:"backends"`
	// Arch is the machine's system and architecture as its agent was
	// built for them ("linux/arm64"), and Version the agent's version:
	// what `members` shows, and what a mixed cluster is told apart by.
	// The member says them of itself, for itself: a member that lies is
	// given machines it cannot run, nothing more.
	Arch    string `json:"arch,omitempty"`
	Version string `json:"version,omitempty"`
	// Checked is when the machine last asked its backends.
	Checked time.Time `json:"checked"`
	// Index is the offer's KV index: an offer written after a record
	// (a larger index) lists what its host ran after the record's last
	// change, whatever the machines' clocks say.
	Index uint64 `json:"-"`
}

// BackendOffer is one backend as one machine found it.
type BackendOffer struct {
	Available bool `json:"available"`
	// Reason says why it is not available there.
	Reason string `json:"reason,omitempty"`
	// Listed says that Instances is the backend's whole list there: the
	// machines it runs, which the leader judges the host's machines by.
	Listed    bool       `json:"listed,omitempty"`
	Instances []Instance `json:"instances,omitempty"`
	// LocalOnly says that the list covers only the machines spawned there
	// (backends.LocalView): a machine missing from it is unknown.
	LocalOnly bool `json:"local_only,omitempty"`
	// Scope is what the backend manages there (backends.Scoped).
	Scope string `json:"scope,omitempty"`
	// Detail says in a word how the backend runs machines there
	// (backends.Detailer: the qemu backend's "kvm" or "tcg").
	Detail string `json:"detail,omitempty"`
	// Arch is the architecture (Go's name) of the machines it makes there,
	// empty when it cannot tell (backends.Archer).
	Arch string `json:"arch,omitempty"`
	// FreeMemory is the memory free for its machines there, in bytes;
	// 0 when the backend cannot tell (backends.MemoryReporter).
	FreeMemory uint64 `json:"free_memory,omitempty"`
}

// Offered lists the backends the offer makes available, sorted.
func (o Offer) Offered() []string {
	var out []string
	for name, b := range o.Backends {
		if b.Available {
			out = append(out, name)
		}
	}
	sort.Strings(out)
	return out
}

// MaxOfferSize bounds one stored offer: a description has at most a few
// dozen backends, each a name and a line of reason, and a host lists its
// machines (about 150 bytes each: a thousand fit). Half Consul's limit on
// one value.
const MaxOfferSize = 256 << 10

// ParseOffer reads a stored offer of the machine id.
func ParseOffer(id string, b []byte) (Offer, error) {
	return Decode[Offer](OfferKind, kvschema.Offers+id, id, b, MaxOfferSize)
}

// RecordKey is the machine the offer is of (Keyed).
func (o Offer) RecordKey() string { return o.Machine }

// OfferKind names offers in messages.
const OfferKind = "offer"

func (o Offer) withIndex(i uint64) Offer { o.Index = i; return o }
