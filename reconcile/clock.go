package reconcile

import (
	"math/rand/v2"
	"time"
)

// Clock is the time source of the control loop. Logic never calls time.Now
// directly, so tests drive time.
type Clock interface {
	Now() time.Time
	// After is time.After on this clock.
	After(d time.Duration) <-chan time.Time
}

// RealClock is the wall clock.
type RealClock struct{}

// Now returns the current time.
func (RealClock) Now() time.Time { return time.Now() }

// After waits for d on the wall clock.
func (RealClock) After(d time.Duration) <-chan time.Time { return time.After(d) }

// Backoff returns how long to wait after the given number of consecutive
// failures: initial doubled per failure, capped at max, with up to 20% of
// jitter taken off so that many nodes do not retry in step. It is pure but for
// the jitter source, which tests may fix.
func Backoff(initial, max time.Duration, failures int, jitter func() float64) time.Duration {
	if failures <= 0 {
		return 0
	}
	d := initial
	for i := 1; i < failures && d < max; i++ {
		d *= 2
	}
	d = min(d, max)
	if jitter == nil {
		jitter = rand.Float64
	}
	return d - time.Duration(float64(d)*0.2*jitter())
}
