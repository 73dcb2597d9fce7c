// Package clock is the one way raptiformica tells time, waits and retries:
// a Clock that logic reads instead of time.Now (so tests drive time), a
// pure Backoff policy, and Sleep and Poll, waits that end early when their
// context does. Every wait in the project goes through here.
package clock

import (
	"context"
	"math/rand/v2"
	"time"
)

// Clock is a time source. Logic never calls time.Now or time.After itself.
type Clock interface {
	Now() time.Time
	// After is time.After on this clock.
	After(d time.Duration) <-chan time.Time
}

// Real is the wall clock.
type Real struct{}

// Now returns the current time with its monotonic reading: the control
// loop measures ages as differences of two Nows, which that reading keeps
// true when the wall clock is stepped (NTP, a VM resumed, an operator).
// Such a time must stay in memory: stored or sent, it loses the reading.
func (Real) Now() time.Time { return time.Now() }

// After waits for d on the wall clock.
func (Real) After(d time.Duration) <-chan time.Time { return time.After(d) }

// Or returns c, or the wall clock when c is nil: for a component whose Clock
// field was left unset.
func Or(c Clock) Clock {
	if c == nil {
		return Real{}
	}
	return c
}

// Backoff is how long to wait after consecutive failures: Initial doubled
// per failure, capped at Max, with a part taken off at random so that many
// nodes do not retry in step. Spread is that part, from 0 to 1: a wait d
// becomes one between (1-Spread)·d and d. Zero means a fifth; 1 is full
// jitter, for failures that many nodes meet at the same instant (a Raft
// leader change ends every blocking query at once), where only a wait drawn
// from the whole of [0, d] spreads their retries over d. The zero Jitter
// draws from math/rand; tests fix it.
type Backoff struct {
	Initial, Max time.Duration
	Spread       float64
	Jitter       func() float64
}

// DefaultSpread is the part of a wait drawn at random when Backoff.Spread
// is zero.
const DefaultSpread = 0.2

// Delay returns the wait after the given number of consecutive failures; 0
// for none. It is pure but for the jitter source, and never more than Max
// (nor Initial after one failure), never less than (1-Spread) of that.
func (b Backoff) Delay(failures int) time.Duration {
	if failures <= 0 {
		return 0
	}
	d := b.Initial
	for i := 1; i < failures && d < b.Max; i++ {
		d *= 2
	}
	d = min(d, b.Max)
	jitter := b.Jitter
	if jitter == nil {
		jitter = rand.Float64
	}
	spread := b.Spread
	if spread <= 0 {
		spread = DefaultSpread
	}
	spread = min(spread, 1)
	// A source outside [0, 1] (a test's, a bad one) must not widen the
	// bounds the doc promises.
	r := min(max(jitter(), 0), 1)
	return d - time.Duration(float64(d)*spread*r)
}

// Sleep waits d on c. It returns ctx's error if ctx ends first, else nil.
func Sleep(ctx context.Context, c Clock, d time.Duration) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-c.After(d):
		return nil
	}
}

// Poll calls cond at once and then every interval until it reports done or
// fails, and returns its error; or ctx's error when ctx ends first.
func Poll(ctx context.Context, c Clock, every time.Duration, cond func() (done bool, err error)) error {
	for {
		done, err := cond()
		if done || err != nil {
			return err
		}
		if err := Sleep(ctx, c, every); err != nil {
			return err
		}
	}
}

// Every calls f at once and then every interval until ctx ends, for loops
// that look again on a period whatever the outcome. It blocks until ctx
// ends and returns nil.
func Every(ctx context.Context, c Clock, every time.Duration, f func()) {
	for {
		f()
		if Sleep(ctx, c, every) != nil {
			return
		}
	}
}
