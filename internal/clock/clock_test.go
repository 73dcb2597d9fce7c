package clock

import (
	"context"
	"errors"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/raptiformica/raptiformica/internal/clock/clocktest"
)

func TestBackoffDelay(t *testing.T) {
	noJitter := func() float64 { return 0 }
	fullJitter := func() float64 { return 1 }
	for _, tc := range []struct {
		name     string
		b        Backoff
		failures int
		want     time.Duration
	}{
		{"no failure, no wait", Backoff{Initial: time.Second, Max: time.Minute, Jitter: noJitter}, 0, 0},
		{"first failure waits initial", Backoff{Initial: time.Second, Max: time.Minute, Jitter: noJitter}, 1, time.Second},
		{"doubles", Backoff{Initial: time.Second, Max: time.Minute, Jitter: noJitter}, 4, 8 * time.Second},
		{"capped", Backoff{Initial: time.Second, Max: 5 * time.Second, Jitter: noJitter}, 10, 5 * time.Second},
		{"many failures do not overflow", Backoff{Initial: time.Second, Max: time.Hour, Jitter: noJitter}, 1000, time.Hour},
		{"jitter takes off at most a fifth", Backoff{Initial: 10 * time.Second, Max: time.Minute, Jitter: fullJitter}, 1, 8 * time.Second},
		{"full spread may take off the whole wait", Backoff{Initial: 10 * time.Second, Max: time.Minute, Spread: 1, Jitter: fullJitter}, 1, 0},
		{"full spread without jitter waits the whole", Backoff{Initial: 10 * time.Second, Max: time.Minute, Spread: 1, Jitter: noJitter}, 3, 40 * time.Second},
		{"a spread above 1 is full", Backoff{Initial: 10 * time.Second, Max: time.Minute, Spread: 3, Jitter: fullJitter}, 1, 0},
		{"a source above 1 does not go below the floor", Backoff{Initial: 10 * time.Second, Max: time.Minute, Spread: 0.5, Jitter: func() float64 { return 7 }}, 1, 5 * time.Second},
		{"a source below 0 does not go above the cap", Backoff{Initial: 10 * time.Second, Max: time.Minute, Spread: 0.5, Jitter: func() float64 { return -7 }}, 10, time.Minute},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.b.Delay(tc.failures); got != tc.want {
				t.Errorf("Delay(%d): got %v want %v", tc.failures, got, tc.want)
			}
		})
	}
}

func TestPollOnFakeClock(t *testing.T) {
	f := clocktest.NewFake(time.Unix(0, 0))
	calls := 0
	done := make(chan error, 1)
	go func() {
		done <- Poll(context.Background(), f, time.Second, func() (bool, error) {
			calls++
			return calls == 3, nil
		})
	}()
	for range 2 {
		for f.Waiters() == 0 {
			time.Sleep(time.Millisecond)
		}
		f.Advance(time.Second)
	}
	if err := <-done; err != nil || calls != 3 {
		t.Fatalf("Poll: got %v after %d calls, want nil after 3", err, calls)
	}
	if got := f.Now(); !got.Equal(time.Unix(2, 0)) {
		t.Errorf("fake time: got %v want 2s past the start", got)
	}
}

func TestPollStops(t *testing.T) {
	boom := errors.New("boom")
	if err := Poll(context.Background(), clocktest.NewFake(time.Time{}), time.Hour, func() (bool, error) { return false, boom }); !errors.Is(err, boom) {
		t.Errorf("a failing condition: got %v want %v", err, boom)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := Poll(ctx, clocktest.NewFake(time.Time{}), time.Hour, func() (bool, error) { return false, nil }); !errors.Is(err, context.Canceled) {
		t.Errorf("a cancelled context: got %v want %v", err, context.Canceled)
	}
}

// TestRealNowIsMonotonic guards what the planner's ages rely on: a
// difference of two Real Nows is measured on the monotonic clock, so a
// step of the wall clock between them does not count. A Now stripped of
// that reading (Round(0), as a stored time is) does not have it.
func TestRealNowIsMonotonic(t *testing.T) {
	now := Real{}.Now()
	if !strings.Contains(now.String(), " m=") {
		t.Fatalf("Real.Now() %v carries no monotonic reading", now)
	}
	if strings.Contains(now.Round(0).String(), " m=") {
		t.Fatalf("a stripped time still carries a monotonic reading")
	}
}

// TestScaleBackoffSpreadBounds draws many waits as many nodes would after
// one common failure: every wait stays within [(1-Spread)·d, d], and a full
// spread uses the whole of it, where the default fifth keeps them all in
// the last fifth (N nodes retrying within d/5 of each other).
func TestScaleBackoffSpreadBounds(t *testing.T) {
	src := rand.New(rand.NewPCG(1, 2))
	for _, tc := range []struct {
		name      string
		spread    float64
		floor     time.Duration
		lowestMax time.Duration // the least wait drawn must be below this
	}{
		{"default fifth", 0, 8 * time.Second, 10 * time.Second},
		{"full", 1, 0, time.Second},
		{"half", 0.5, 5 * time.Second, 6 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := Backoff{Initial: 10 * time.Second, Max: time.Minute, Spread: tc.spread, Jitter: src.Float64}
			lowest, highest := time.Duration(1<<62), time.Duration(0)
			for range 1000 {
				d := b.Delay(1)
				if d < tc.floor || d > 10*time.Second {
					t.Fatalf("Delay(1): got %v want within [%v, 10s]", d, tc.floor)
				}
				lowest, highest = min(lowest, d), max(highest, d)
			}
			if lowest >= tc.lowestMax || highest < 9*time.Second {
				t.Errorf("1000 draws span [%v, %v]: want them spread over [%v, 10s]", lowest, highest, tc.floor)
			}
		})
	}
}
