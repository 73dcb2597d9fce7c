// Package watch runs Consul blocking queries the way they are meant to be run:
// with the last index, resetting when the index goes backwards, reporting only
// real changes, and rate-limited so that a flapping key cannot cause a storm.
package watch

import (
	"context"
	"errors"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/raptiformica/raptiformica/internal/clock"
)

// Query runs one blocking query with q and returns the result's index and
// whether the payload differs from the last one the caller saw.
type Query func(q *api.QueryOptions) (index uint64, changed bool, err error)

// Retry is how long a watch waits after consecutive failed queries. Its
// waits are drawn from the whole of [0, d] (full jitter): a Raft leader
// change fails every member's blocking query in the same instant, and a
// wait that varied by a fifth had N members ask again within 200 ms of
// each other; drawn from [0, 1 s], they ask over the whole second, and over
// the next two if that fails too.
var Retry = clock.Backoff{Initial: time.Second, Max: 30 * time.Second, Spread: 1}

// ErrStop, returned (or wrapped) by a Query, ends its watch: Run returns
// nil. It is how a watch that waits for a condition (an order finished)
// ends once it holds.
var ErrStop = errors.New("stop watching")

// Watch runs one blocking query over and over: every agent loop that
// waits on Consul for a change is one.
type Watch struct {
	// Wait is how long one query blocks for a change.
	Wait time.Duration
	// Gap is the least time between the starts of two queries, so that a
	// flapping key cannot cause a storm; 0 is 100 ms.
	Gap time.Duration
	// Clock measures the gap and the pauses after failures; nil is the
	// real one.
	Clock clock.Clock
	// Retry is the pause after consecutive failures; zero is package
	// Retry.
	Retry clock.Backoff
	// AllowStale lets any server answer, not only the Raft leader: for
	// reads that only tell the reader to look, or that the reader checks.
	AllowStale bool
	// OnError is told of each failed query and how many failed in a row;
	// nil ignores them.
	OnError func(err error, failures int)
}

// Run runs query until ctx ends or query returns ErrStop, calling onChange after every change (and
// once at the start, when the first query says so). A failed query is
// passed to OnError and tried again from a fresh read after a pause drawn
// from Retry. It returns nil after ErrStop, else ctx's error once ctx is
// done.
func (w Watch) Run(ctx context.Context, query Query, onChange func()) error {
	clk := clock.Or(w.Clock)
	gap := w.Gap
	if gap == 0 {
		gap = 100 * time.Millisecond
	}
	retry := w.Retry
	if retry.Initial == 0 {
		retry = Retry
	}
	var index uint64
	failures := 0
	for {
		start := clk.Now()
		q := (&api.QueryOptions{WaitIndex: index, WaitTime: w.Wait, AllowStale: w.AllowStale}).WithContext(ctx)
		next, changed, err := query(q)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if errors.Is(err, ErrStop) {
			return nil
		}
		if err != nil {
			failures++
			if w.OnError != nil {
				w.OnError(err, failures)
			}
			index = 0
			if err := clock.Sleep(ctx, clk, retry.Delay(failures)); err != nil {
				return err
			}
			continue
		}
		failures = 0
		switch {
		case next < index:
			// The index went backwards (a snapshot restore, a new
			// cluster): start over from a fresh read.
			index = 0
		default:
			index = next
		}
		if changed && onChange != nil {
			onChange()
		}
		if d := gap - clk.Now().Sub(start); d > 0 {
			if err := clock.Sleep(ctx, clk, d); err != nil {
				return err
			}
		}
	}
}

// Loop runs a Watch of wait on the real clock, passing errors to onError.
func Loop(ctx context.Context, wait time.Duration, query Query, onChange func(), onError func(error)) error {
	w := Watch{Wait: wait}
	if onError != nil {
		w.OnError = func(err error, _ int) { onError(err) }
	}
	return w.Run(ctx, query, onChange)
}
