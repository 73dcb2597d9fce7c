package reconcile

import (
	"bytes"
	"context"
	"encoding/json"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/raptiformica/raptiformica/internal/capped"
	"github.com/raptiformica/raptiformica/internal/clock"
	"github.com/raptiformica/raptiformica/internal/telemetry"
	"github.com/raptiformica/raptiformica/rules"
)

// HookEvent is what a hook command reads as JSON on its standard input.
type HookEvent struct {
	Event   string    `json:"event"`
	Cluster string    `json:"cluster"`
	Time    time.Time `json:"time"`
	Action  Action    `json:"action"`
}

// HookRunner runs the description's hook commands. A nil *HookRunner runs
// nothing.
type HookRunner struct {
	Log     hclog.Logger
	Metrics *telemetry.Metrics
	Clock   clock.Clock
}

// Fire starts every hook of event in the background and returns at once. A
// hook runs as an argv list, never through a shell, with the event as JSON on
// its standard input; it is killed when its timeout passes.
func (h *HookRunner) Fire(ctx context.Context, p *rules.Platform, event string, a Action) {
	if h == nil {
		return
	}
	hooks := p.HooksFor(event)
	if len(hooks) == 0 {
		return
	}
	payload, _ := json.Marshal(HookEvent{Event: event, Cluster: p.Cluster, Time: h.Clock.Now(), Action: a})
	for _, hk := range hooks {
		go h.run(context.WithoutCancel(ctx), hk, payload)
	}
}

// run runs one hook and waits for it. Its combined output is logged.
func (h *HookRunner) run(ctx context.Context, hk rules.Hook, payload []byte) {
	ctx, cancel := context.WithTimeout(ctx, hk.Timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, hk.Command[0], hk.Command[1:]...)
	cmd.Stdin = bytes.NewReader(payload)
	// A group of its own, so that its timeout kills what it started too
	// (`sleep 60 &` kept a hook with a 1 s timeout for a minute), and the
	// pipes are let go soon after.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 2 * time.Second
	// One buffer for both streams: os/exec then gives the hook a single
	// pipe, and its lines stay in the order it wrote them.
	output := capped.New(hookOutputLimit)
	cmd.Stdout, cmd.Stderr = output, output
	err := cmd.Run()
	kv := []any{telemetry.KeyEvent, hk.Event, "command", hk.Command, "output", output.String()}
	if output.Truncated() {
		kv = append(kv, "output_cut", strings.TrimSpace(output.Note()))
	}
	result := "success"
	if err != nil {
		result = "error"
		h.Log.Error("hook failed", append(kv, telemetry.KeyError, err)...)
	} else {
		h.Log.Debug("hook ran", kv...)
	}
	if h.Metrics != nil {
		h.Metrics.HookRuns.WithLabelValues(hk.Event, result).Inc()
	}
}

// hookOutputLimit is how much of a hook's output is kept for the log.
const hookOutputLimit = 16 << 10
