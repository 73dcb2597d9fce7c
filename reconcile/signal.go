package reconcile

import (
	"fmt"
	"math"
	"strconv"
	"time"

	"github.com/raptiformica/raptiformica/internal/state"
	"github.com/raptiformica/raptiformica/rules"
)

// staleAfter is how many of its intervals a reading may be old and still
// be acted on: a signal that stopped being read holds the count.
const staleAfter = 3

// signalWant is the count a type that scales on a signal asks for now,
// between its min and max, and records the decision in the pass's
// Decision.Scales and the type's status. The decision is decideScale's.
func (ps *pass) signalWant(name string, mt rules.MachineType, t *tally) int {
	have := t.live + t.pending + t.failedIn + t.unready
	prev, known := ps.obs.Scales[name]
	reading, read := ps.obs.Signals[name]
	next, wake := decideScale(mt, prev, known, reading, read, have, ps.now)
	if !wake.IsZero() {
		ps.wakeAt(wake)
	}
	if ps.d.Scales == nil {
		ps.d.Scales = map[string]state.ScaleState{}
	}
	ps.d.Scales[name] = next
	ts := ps.d.Types[name]
	ts.Scale = &state.ScaleStatus{Signal: SignalName(mt.Scale), Target: mt.Scale.Target, Reading: next.Reading, Want: next.Want, Decision: next.Decision}
	ps.d.Types[name] = ts
	return next.Want
}

// SignalName is how status names what a type scales on.
func SignalName(sc *rules.Scale) string {
	switch sc.Signal {
	case rules.SignalPrometheus:
		return sc.Signal + ": " + sc.Query
	case rules.SignalConsulService:
		return sc.Signal + ": " + sc.Service
	default:
		return sc.Signal + ": " + sc.Check
	}
}

// decideScale is the count type mt asks for on its signal at now, from
// the state of the decisions before (prev; known false when there is
// none), the last reading (read false when there is none) and the count
// the type has (have: pending machines included). The count:
//
//   - is the value over the target a machine, rounded up, kept between
//     min and max;
//   - holds, whatever the value, while the signal is missing, fails or is
//     stale (never "scale to min" on a broken signal);
//   - goes up at once, to what the value asks, but no sooner than the
//     up cooldown after the last rise;
//   - goes down one machine at a time, only once every reading has asked
//     for fewer for the whole scale_down_after, and no sooner than the
//     down cooldown after the last change either way.
//
// wake is when the same inputs would decide otherwise (a cooldown or the
// low time runs out); zero when only a new reading can.
func decideScale(mt rules.MachineType, prev state.ScaleState, known bool, r state.Reading, read bool, have int, now time.Time) (next state.ScaleState, wake time.Time) {
	sc := mt.Scale
	next = prev
	next.Type = mt.Name
	base := clamp(have, mt.Min, mt.Max)
	if known {
		base = clamp(prev.Want, mt.Min, mt.Max) // the description may have moved min or max
	}
	next.Want = base
	switch {
	case !read || r.At.IsZero():
		return hold(next, "the signal has not been read yet"), wake
	case r.Error != "":
		next.Reading = r
		return hold(next, "the signal failed: "+r.Error), wake
	case now.Sub(r.At) > staleAfter*sc.Interval:
		next.Reading = r
		return hold(next, fmt.Sprintf("the signal is stale (read at %s)", r.At.UTC().Format(time.RFC3339))), wake
	case math.IsNaN(r.Value) || math.IsInf(r.Value, 0):
		// Kept as an error: JSON has no NaN, and the state and the
		// status must still be written.
		next.Reading = state.Reading{At: r.At, Error: "the value is not a number"}
		return hold(next, "the signal's value is not a number"), wake
	}
	next.Reading = r
	asked := askedFor(r.Value, sc.Target, mt.Min, mt.Max)
	value := strconv.FormatFloat(r.Value, 'g', 6, 64)
	switch {
	case asked > base:
		next.LowSince = time.Time{}
		if until := prev.LastUp.Add(sc.UpCooldown); !prev.LastUp.IsZero() && now.Before(until) {
			next.Decision = fmt.Sprintf("at %d: the value %s asks for %d, after the up cooldown", base, value, asked)
			return next, until
		}
		next.Want, next.LastUp = asked, now
		next.Changes++
		next.Decision = fmt.Sprintf("up to %d: the value %s asks for %d", asked, value, asked)
	case asked < base:
		if next.LowSince.IsZero() {
			next.LowSince = now
		}
		if until := next.LowSince.Add(sc.DownAfter); now.Before(until) {
			next.Decision = fmt.Sprintf("at %d: the value %s asks for %d, low since %s", base, value, asked, next.LowSince.UTC().Format(time.RFC3339))
			return next, until
		}
		last := prev.LastUp
		if prev.LastDown.After(last) {
			last = prev.LastDown
		}
		if until := last.Add(sc.DownCooldown); !last.IsZero() && now.Before(until) {
			next.Decision = fmt.Sprintf("at %d: the value %s asks for %d, after the down cooldown", base, value, asked)
			return next, until
		}
		next.Want, next.LastDown = base-1, now
		next.Changes++
		next.Decision = fmt.Sprintf("down to %d, one at a time: the value %s asks for %d", base-1, value, asked)
	default:
		next.LowSince = time.Time{}
		next.Decision = fmt.Sprintf("at %d: the value %s asks for it", base, value)
	}
	return next, wake
}

func hold(s state.ScaleState, why string) state.ScaleState {
	s.LowSince = time.Time{}
	s.Decision = fmt.Sprintf("holds at %d: %s", s.Want, why)
	return s
}

func clamp(n, lo, hi int) int { return max(lo, min(hi, n)) }

// askedFor is the count value asks for at target a machine, between lo and
// hi, kept in floating point until it is within them: a huge value or a
// tiny target overflows an int to its most negative on some machines.
func askedFor(value, target float64, lo, hi int) int {
	f := math.Ceil(value / target)
	switch {
	case !(f > float64(lo)): // NaN too
		return lo
	case f >= float64(hi):
		return hi
	}
	return int(f)
}
