package daemon

import (
	"context"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/raptiformica/raptiformica/backends"
	"github.com/raptiformica/raptiformica/internal/clock"
	"github.com/raptiformica/raptiformica/internal/telemetry"
)

// holderCallTimeout bounds each read and write the holder watch makes (the
// holder's record, a backend's list, the session).
const holderCallTimeout = 10 * time.Second

// endStoppedHolder ends the session of the lock's holder as soon as this
// node's own backend reports the holder's machine stopped, so that the lock
// moves within its lock delay of the machine's death rather than after
// Consul's failure detector (seconds with fast gossip, about ten at its
// default timings): the leader's machine then heals as fast as a follower's.
//
// It acts only on its own backend's word about a machine that backend
// manages: the holder must be listed, not running, in a list asked after the
// backend said it stopped, and the session must be the holder's own node's.
// A session belongs to the process that made it; ending it when that
// process is gone frees only what Consul frees when it notices, and if the
// list is wrong (a holder restarted in between), the cost is one needless
// change of leader, never two leaders: every action is an intent written by
// check-and-set, and a holder that loses its lock stops its actions.
//
// It returns when ctx ends (the lock changed hands or the campaign ended),
// when the holder's machine is not one of this node's backends' with a
// Watch, or once the session is ended.
func (e *elector) endStoppedHolder(ctx context.Context, holder, session string) {
	if holder == "" || holder == e.self || e.inventory == nil || e.backends == nil {
		return
	}
	rctx, cancel := context.WithTimeout(ctx, holderCallTimeout)
	rec, found, err := e.inventory.Get(rctx, holder)
	cancel()
	if err != nil || !found {
		return
	}
	be := e.backends()[rec.Backend]
	w, ok := be.(backends.Watcher)
	if !ok {
		return
	}
	look := make(chan struct{}, 1)
	wctx, wcancel := context.WithCancel(ctx)
	defer wcancel()
	watch := w.Watch
	if sw, ok := w.(backends.SelectiveWatcher); ok {
		// The holder's machine alone, not every machine of its scope.
		watch = func(ctx context.Context, stopped func(string)) error {
			return sw.WatchOnly(ctx, func(in backends.Instance) bool { return in.MachineID == holder }, stopped)
		}
	}
	go func() {
		for failures := 1; ; failures++ {
			err := watch(wctx, func(id string) {
				if id == holder || id == "" {
					select {
					case look <- struct{}{}:
					default:
					}
				}
			})
			if wctx.Err() != nil {
				return
			}
			e.log.Debug("watch of the leader's machine failed", telemetry.KeyBackend, rec.Backend, telemetry.KeyError, err)
			if clock.Sleep(wctx, e.clock, campaignBackoff.Delay(failures)) != nil {
				return
			}
		}
	}()
	for {
		select {
		case <-ctx.Done():
			return
		case <-look:
		}
		// The holder's machine was often the Raft leader too: ending
		// its session waits for a new one, so a stop confirmed but
		// not yet acted on is tried again until it is.
		for {
			stopped, ended := e.holderStopped(ctx, be, holder, session)
			if ended {
				return
			}
			if !stopped || clock.Sleep(ctx, e.clock, lockRetry) != nil {
				break
			}
		}
	}
}

// holderStopped asks be afresh whether holder's machine is stopped and, if
// so and session is still that machine's node's, ends the session. It
// reports whether the machine is stopped, and whether the session is
// ended (or gone, or not the holder's: nothing left to do).
func (e *elector) holderStopped(ctx context.Context, be backends.Backend, holder, session string) (stopped, ended bool) {
	lctx, cancel := context.WithTimeout(ctx, holderCallTimeout)
	defer cancel()
	insts, err := be.List(lctx)
	if err != nil {
		return false, false
	}
	for _, in := range insts {
		if in.MachineID == holder {
			stopped = !in.Running
		}
	}
	if !stopped {
		return false, false
	}
	entry, _, err := e.consul.Session().Info(session, (&api.QueryOptions{}).WithContext(lctx))
	if err != nil {
		return true, false
	}
	if entry == nil || entry.Node != holder {
		return true, true
	}
	if _, err := e.consul.Session().Destroy(session, (&api.WriteOptions{}).WithContext(lctx)); err != nil {
		e.log.Debug("could not end the session of the leader's stopped machine yet", telemetry.KeyLeader, holder, telemetry.KeyError, err)
		return true, false
	}
	e.log.Info("the leader's machine stopped, as its backend says: ended its session so that the lock moves now", telemetry.KeyLeader, holder)
	return true, true
}
