package clock

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"
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
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.b.Delay(tc.failures); got != tc.want {
				t.Errorf("Delay(%d): got %v want %v", tc.failures, got, tc.want)
			}
		})
	}
}

func TestPollOnFakeClock(t *testing.T) {
	f := NewFake(time.Unix(0, 0))
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
	if err := Poll(context.Background(), NewFake(time.Time{}), time.Hour, func() (bool, error) { return false, boom }); !errors.Is(err, boom) {
		t.Errorf("a failing condition: got %v want %v", err, boom)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := Poll(ctx, NewFake(time.Time{}), time.Hour, func() (bool, error) { return false, nil }); !errors.Is(err, context.Canceled) {
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
