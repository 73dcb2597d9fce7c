package reconcile

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/raptiformica/raptiformica/backends"
	"github.com/raptiformica/raptiformica/internal/clock"
	"github.com/raptiformica/raptiformica/internal/telemetry"
)

// Watches runs the Watch of each backend it is given that has one
// (backends.Watcher), for as long as it is given that backend: the
// leader's over the description's backends, a host's over the backends it
// holds machines of. Follow and Stop are called from one goroutine.
type Watches struct {
	Clock clock.Clock
	Log   hclog.Logger
	// Stopped is told each machine a backend reports stopped, from that
	// backend's watch; it must return quickly.
	Stopped func(backend, machineID string)
	// Want, when set, keeps the machines worth watching on a backend
	// that can watch some only (backends.SelectiveWatcher); the others
	// watch every machine.
	Want func(backend string, in backends.Instance) bool

	running map[string]runningWatch
	wg      sync.WaitGroup
}

type runningWatch struct {
	be     backends.Backend
	cancel context.CancelFunc
}

// watchBackoff spaces the attempts of a backend's watch that fails.
var watchBackoff = clock.Backoff{Initial: time.Second, Max: 30 * time.Second}

// Follow starts the watches of the backends new since the last call and
// stops those of backends no longer given (a new description builds new
// backends, even under the same names).
func (w *Watches) Follow(ctx context.Context, bes map[string]backends.Backend) {
	for name, rw := range w.running {
		if be, ok := bes[name]; !ok || be != rw.be {
			rw.cancel()
			delete(w.running, name)
		}
	}
	for _, name := range sortedKeys(bes) {
		be := bes[name]
		wt, ok := be.(backends.Watcher)
		if _, running := w.running[name]; running || !ok {
			continue
		}
		if w.running == nil {
			w.running = map[string]runningWatch{}
		}
		wctx, cancel := context.WithCancel(ctx)
		w.running[name] = runningWatch{be: be, cancel: cancel}
		w.wg.Add(1)
		go func() {
			defer w.wg.Done()
			w.run(wctx, name, wt)
		}()
	}
}

// run watches one backend until ctx ends, again after a pause when its
// watch fails.
func (w *Watches) run(ctx context.Context, name string, wt backends.Watcher) {
	c := clock.Or(w.Clock)
	stopped := func(id string) { w.Stopped(name, id) }
	watch := wt.Watch
	if sw, ok := wt.(backends.SelectiveWatcher); ok && w.Want != nil {
		watch = func(ctx context.Context, stopped func(string)) error {
			return sw.WatchOnly(ctx, func(in backends.Instance) bool { return w.Want(name, in) }, stopped)
		}
	}
	for failures := 0; ; {
		began := c.Now()
		err := watch(ctx, stopped)
		if ctx.Err() != nil {
			return
		}
		if errors.Is(err, backends.ErrCannotWatch) {
			if w.Log != nil {
				w.Log.Info("backend cannot watch its machines here: its lists alone find a machine that stops", telemetry.KeyBackend, name, telemetry.KeyError, err)
			}
			return
		}
		if c.Now().Sub(began) > watchBackoff.Max {
			failures = 0
		}
		failures++
		if w.Log != nil {
			w.Log.Warn("backend watch failed", telemetry.KeyBackend, name, telemetry.KeyError, err, telemetry.KeyAttempt, failures)
		}
		if clock.Sleep(ctx, c, watchBackoff.Delay(failures)) != nil {
			return
		}
	}
}

// Stop ends every watch and waits for them.
func (w *Watches) Stop() {
	for _, rw := range w.running {
		rw.cancel()
	}
	w.wg.Wait()
}
