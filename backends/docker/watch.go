package docker

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/docker/docker/api/types/events"
	"github.com/docker/docker/api/types/filters"

	"github.com/raptiformica/raptiformica/internal/clock"
)

const (
	// watchEvery bounds one subscription to the engine's events, as our
	// Consul watches are bounded: a stream the engine keeps open but no
	// longer feeds is found out within this time.
	watchEvery = 5 * time.Minute
	// watchOpenTimeout bounds the wait for the engine to open the stream
	// (its response's headers); the stream itself has no natural end.
	watchOpenTimeout = 10 * time.Second
)

// stopActions are the container events that mean a container stopped or
// went away, as the engine (20.10) reports them: docker kill, docker stop,
// an exiting entrypoint and an OOM kill of the entrypoint all end in "die"
// (after "kill" or "oom", which alone stop nothing: a signal may be caught,
// the OOM killer may pick another process); docker rm -f of a running
// container says "die" then "destroy"; removing a container that never
// ran says "destroy" only. Pause, unpause and restart's "start" are no
// stop.
var stopActions = []events.Action{events.ActionDie, events.ActionDestroy}

// Watch reports the cluster's containers that stop, from the engine's
// event stream: it calls stopped with the machine ID label of each
// container of the cluster that dies or is removed (twice for one removed
// while running: a reason to look is cheap, a missed one is not), or ""
// for a container of the cluster without the label. stopped runs on
// Watch's goroutine, one call at a time, and should return at once: the
// engine holds back our events meanwhile and drops them past its buffer.
//
// Watch blocks until ctx ends, and returns ctx's error then. It returns
// another error, at once, when the engine cannot be reached or ends the
// stream (the engine restarts): the caller tries again with backoff. It
// leaves no goroutine behind when it returns.
//
// Each subscription lasts watchEvery, then Watch subscribes again, from
// just after the last event it reported (or from when Watch was called):
// the engine replays what happened between two subscriptions from its log
// of recent events, so none is lost to a resubscription. The engine's log
// keeps the last 256 events of all kinds: what falls out of it before it
// is replayed (a busy engine between two subscriptions, or any event
// between a Watch that failed and the next call) is lost, which costs
// speed only: List stays the authority. The first mark is this machine's
// time, the next ones the engine's: a skew between the two replays a few
// older events, or loses the ones within the skew.
func (b *Backend) Watch(ctx context.Context, stopped func(machineID string)) error {
	clk := clock.Or(b.clock)
	// since is the earliest time, in Unix nanoseconds, whose events were
	// not reported yet.
	since := clk.Now().UnixNano()
	for {
		if err := b.Available(ctx); err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("watch the containers of cluster %s: %w", b.cluster, err)
		}
		if err := b.watchOnce(ctx, clk, &since, stopped); err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("watch the containers of cluster %s: %w", b.cluster, err)
		}
		if b.betweenSubscriptions != nil {
			b.betweenSubscriptions()
		}
	}
}

// watchOnce reads one subscription to the engine's events from *since
// until watchEvery has passed on clk (nil error), ctx ends, or the stream
// fails. It moves *since past each event it reports. It returns once the
// client's reader of the stream has ended.
func (b *Backend) watchOnce(ctx context.Context, clk clock.Clock, since *int64, stopped func(string)) error {
	f := filters.NewArgs(
		filters.Arg("type", string(events.ContainerEventType)),
		filters.Arg("label", LabelCluster+"="+b.cluster),
	)
	for _, a := range stopActions {
		f.Add("event", string(a))
	}
	sub, cancel := context.WithCancel(ctx)
	// The client blocks until the engine answers; an engine that accepts
	// the connection but does not answer is given up on.
	openTimer := time.AfterFunc(watchOpenTimeout, cancel)
	msgs, errs := b.cli.Events(sub, events.ListOptions{
		Since:   fmt.Sprintf("%d.%09d", *since/1e9, *since%1e9),
		Filters: f,
	})
	defer func() {
		cancel()
		// The client's reader ends once sub is cancelled: its read of
		// the response's body and its send to us both end with sub. It
		// then closes errs, after at most one error, which errs buffers.
		for range errs {
		}
	}()
	if !openTimer.Stop() {
		return fmt.Errorf("the docker engine did not open its event stream within %v", watchOpenTimeout)
	}
	next := clk.After(watchEvery)
	for {
		select {
		case m := <-msgs:
			if m.TimeNano >= *since {
				*since = m.TimeNano + 1
			}
			stopped(m.Actor.Attributes[LabelMachineID])
		case err := <-errs:
			if err == nil {
				return errors.New("the docker engine ended its event stream")
			}
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				return fmt.Errorf("the docker engine ended its event stream: %w", err)
			}
			return fmt.Errorf("docker events: %w", err)
		case <-next:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}
