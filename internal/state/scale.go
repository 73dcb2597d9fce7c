package state

import (
	"time"

	"github.com/raptiformica/raptiformica/internal/kvschema"
)

// Reading is one read of a machine type's signal (rules.Scale): its value,
// or why there is none. A reading with an error, or none at all, holds
// the type's count where it is.
type Reading struct {
	Value float64   `json:"value"`
	At    time.Time `json:"at"`
	// Error says why the signal could not be read; Value means nothing
	// then.
	Error string `json:"error,omitempty"`
}

// OK reports whether the reading has a value.
func (r Reading) OK() bool { return r.Error == "" && !r.At.IsZero() }

// ScaleState is what the leader keeps of a machine type's scaling on a
// signal, stored as JSON at kvschema.Scale/<type>: the count it decided
// and when, so that a new leader honours the cooldowns, and why.
type ScaleState struct {
	Type string `json:"type"`
	// Want is the count last decided, between the type's min and max; 0
	// before the first decision.
	Want int `json:"want"`
	// LastUp and LastDown are when the count was last raised and
	// lowered, on the deciding leader's clock.
	LastUp   time.Time `json:"last_up,omitzero"`
	LastDown time.Time `json:"last_down,omitzero"`
	// LowSince is since when every reading asked for fewer machines than
	// Want; zero when the last did not.
	LowSince time.Time `json:"low_since,omitzero"`
	// Reading is the last reading the decision was made on.
	Reading Reading `json:"reading"`
	// Decision says what the last pass decided and why.
	Decision string `json:"decision"`
	// Changes counts the changes of Want, for the metrics.
	Changes int `json:"changes,omitempty"`
	// Index is the record's KV ModifyIndex, for check-and-set.
	Index uint64 `json:"-"`
}

// RecordKey is the machine type (Keyed).
func (s ScaleState) RecordKey() string { return s.Type }

func (s ScaleState) withIndex(i uint64) ScaleState { s.Index = i; return s }

// MaxScaleStateSize bounds one stored scale state: a few times, a number
// and a sentence.
const MaxScaleStateSize = 8 << 10

// ScaleStateKind names scale states in messages.
const ScaleStateKind = "scale state"

// ScaleStates is the servers' folder of machine types' scale states.
func ScaleStates(s *kvschema.Store) Folder[ScaleState] {
	return NewFolder[ScaleState](s.Folder(kvschema.Scale), ScaleStateKind, MaxScaleStateSize, nil)
}
