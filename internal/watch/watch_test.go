package watch

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/raptiformica/raptiformica/internal/clock"
	"github.com/raptiformica/raptiformica/internal/clock/clocktest"
)

// TestScaleRetrySpreadsOverTheWait guards what spreads a thousand members'
// retries after a common failure: the first wait may be anywhere in [0, 1 s]
// and the later ones never exceed the cap.
func TestScaleRetrySpreadsOverTheWait(t *testing.T) {
	lowest, highest := time.Hour, time.Duration(0)
	for range 1000 {
		d := Retry.Delay(1)
		if d < 0 || d > time.Second {
			t.Fatalf("first retry: got %v want within [0, 1s]", d)
		}
		lowest, highest = min(lowest, d), max(highest, d)
	}
	if lowest > 100*time.Millisecond || highest < 900*time.Millisecond {
		t.Errorf("1000 first retries span [%v, %v]: want them over the whole of [0, 1s]", lowest, highest)
	}
	for failures := 1; failures < 100; failures++ {
		if d := Retry.Delay(failures); d > 30*time.Second {
			t.Fatalf("retry after %d failures: got %v want at most 30s", failures, d)
		}
	}
}

// TestWatchRunsOnItsClock: a watch's gap and its pauses after failures are
// measured on the clock it is given, so that a loop built on it is tested
// without sleeping; a failure starts the next query from a fresh read, and
// an index that goes back does too.
func TestWatchRunsOnItsClock(t *testing.T) {
	clk := clocktest.NewFake(time.Unix(0, 0))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	type call struct {
		index uint64
		stale bool
	}
	calls := make(chan call)
	answers := make(chan error)
	results := []uint64{5, 9, 0, 3}
	n := 0
	query := func(q *api.QueryOptions) (uint64, bool, error) {
		calls <- call{q.WaitIndex, q.AllowStale}
		if err := <-answers; err != nil {
			return 0, false, err
		}
		idx := results[n]
		n++
		return idx, true, nil
	}
	changes := make(chan struct{}, 10)
	var failed []int
	w := Watch{Wait: time.Minute, Gap: time.Second, Clock: clk, AllowStale: true,
		Retry:   clock.Backoff{Initial: 10 * time.Second, Max: 10 * time.Second, Jitter: func() float64 { return 0 }},
		OnError: func(_ error, failures int) { failed = append(failed, failures) }}
	done := make(chan error)
	go func() { done <- w.Run(ctx, query, func() { changes <- struct{}{} }) }()

	expect := func(want uint64) {
		t.Helper()
		c := <-calls
		if c.index != want || !c.stale {
			t.Fatalf("query with index %d (stale %t), want %d (stale)", c.index, c.stale, want)
		}
	}
	// waitGap advances the fake clock past a pause of d once the watch sleeps.
	waitGap := func(d time.Duration) {
		t.Helper()
		for clk.Waiters() == 0 {
			time.Sleep(time.Millisecond)
		}
		clk.Advance(d)
	}
	expect(0)
	answers <- nil // index 5
	<-changes
	waitGap(time.Second)
	expect(5)
	answers <- errors.New("no leader")
	waitGap(10 * time.Second)
	expect(0)      // a failure reads afresh
	answers <- nil // index 9
	<-changes
	waitGap(time.Second)
	expect(9)
	answers <- nil // index 0: went back
	<-changes
	waitGap(time.Second)
	expect(0)
	cancel()
	answers <- nil
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Errorf("Run returned %v, want the context's error", err)
	}
	if len(failed) != 1 || failed[0] != 1 {
		t.Errorf("OnError saw %v, want one first failure", failed)
	}
}

// TestWatchEndsOnErrStop: a query that finds what it waited for ends its
// watch with ErrStop, and Run returns nil rather than retrying it.
func TestWatchEndsOnErrStop(t *testing.T) {
	calls := 0
	err := Watch{Wait: time.Second, Gap: time.Nanosecond}.Run(context.Background(), func(q *api.QueryOptions) (uint64, bool, error) {
		calls++
		if calls == 3 {
			return 0, false, fmt.Errorf("order finished: %w", ErrStop)
		}
		return uint64(calls), false, nil
	}, nil)
	if err != nil || calls != 3 {
		t.Errorf("Run returned %v after %d queries, want nil after 3", err, calls)
	}
}
