// Package watch runs Consul blocking queries the way they are meant to be run:
// with the last index, resetting when the index goes backwards, reporting only
// real changes, and rate-limited so that a flapping key cannot cause a storm.
package watch

import (
	"context"
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

// Loop runs query until ctx ends, calling onChange after every change (and
// once at the start). Errors are passed to onError and retried after a
// pause drawn from Retry.
// It blocks until ctx is done and returns ctx's error.
func Loop(ctx context.Context, wait time.Duration, query Query, onChange func(), onError func(error)) error {
	var index uint64
	const minGap = 100 * time.Millisecond
	failures := 0
	for {
		start := time.Now()
		q := (&api.QueryOptions{WaitIndex: index, WaitTime: wait}).WithContext(ctx)
		next, changed, err := query(q)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if err != nil {
			if onError != nil {
				onError(err)
			}
			index = 0
			failures++
			if err := clock.Sleep(ctx, clock.Real{}, Retry.Delay(failures)); err != nil {
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
		if changed {
			onChange()
		}
		if gap := time.Since(start); gap < minGap {
			if err := clock.Sleep(ctx, clock.Real{}, minGap-gap); err != nil {
				return err
			}
		}
	}
}
