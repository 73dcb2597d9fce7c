package daemon

import (
	"context"
	"sync"
	"time"

	"github.com/raptiformica/raptiformica/internal/logfile"
	"github.com/raptiformica/raptiformica/internal/telemetry"
)

// logCheckInterval is how often the agent looks at the size of its own
// log file while it grows (less often while it does not; see
// logfile.Writer.Watch): the file passes its cap by at most what is logged
// in between.
const logCheckInterval = time.Second

// rotateOwnLog caps the agent's own log when its standard error is a file
// (agent.log, where the local backend and adoption without systemd send
// it; under systemd it is journald's, which caps itself). The logger and
// the Go runtime keep writing to standard error, which is pointed at the
// new file at each rotation; a goroutine checks the size every interval
// until ctx ends or stop is called, and stop waits for it. A log that
// cannot be rotated is worth a warning, never stopping the node.
func (a *Agent) rotateOwnLog(ctx context.Context, every time.Duration) (stop func()) {
	w, ok, err := logfile.Stderr(logfile.Options{MaxBytes: a.LogMaxBytes})
	if err != nil {
		a.Log.Warn("agent log is not rotated", telemetry.KeyError, err)
	}
	if !ok {
		return func() {}
	}
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() { w.Watch(ctx, every) })
	return func() {
		cancel()
		wg.Wait()
		if err := w.Err(); err != nil {
			a.Log.Warn("agent log rotation failed", telemetry.KeyError, err)
		}
		w.Close()
	}
}
