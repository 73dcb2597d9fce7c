package reconcile

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/raptiformica/raptiformica/internal/capped"
	"github.com/raptiformica/raptiformica/internal/clock"
	"github.com/raptiformica/raptiformica/internal/state"
	"github.com/raptiformica/raptiformica/internal/telemetry"
	"github.com/raptiformica/raptiformica/rules"
)

// HookEvent is what a hook command reads as JSON on its standard input.
type HookEvent struct {
	Event   string       `json:"event"`
	Cluster string       `json:"cluster"`
	Time    time.Time    `json:"time"`
	Action  state.Action `json:"action"`
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
func (h *HookRunner) Fire(ctx context.Context, p *rules.Platform, event string, a state.Action) {
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

// run runs one hook and waits for it: its predicate first, if it has one,
// and the command only when that exits 0. Both share the hook's timeout.
// The combined output is logged.
func (h *HookRunner) run(ctx context.Context, hk rules.Hook, payload []byte) {
	ctx, cancel := context.WithTimeout(ctx, hk.Timeout)
	defer cancel()
	if len(hk.Predicate) > 0 {
		output := capped.New(hookOutputLimit)
		err := command(ctx, hk.Predicate, payload, output).Run()
		var exit *exec.ExitError
		switch {
		case errors.As(err, &exit) && ctx.Err() == nil:
			h.Log.Debug("hook skipped: its predicate said no", telemetry.KeyEvent, hk.Event, telemetry.KeyPredicate, hk.Predicate, telemetry.KeyExitCode, exit.ExitCode())
			h.count(hk, "skipped")
			return
		case err != nil:
			h.Log.Error("hook predicate failed", telemetry.KeyEvent, hk.Event, telemetry.KeyPredicate, hk.Predicate, telemetry.KeyOutput, output.String(), telemetry.KeyError, err)
			h.count(hk, "error")
			return
		}
	}
	output := capped.New(hookOutputLimit)
	err := command(ctx, hk.Command, payload, output).Run()
	kv := []any{telemetry.KeyEvent, hk.Event, telemetry.KeyCommand, hk.Command, telemetry.KeyOutput, output.String()}
	if output.Truncated() {
		kv = append(kv, telemetry.KeyOutputCut, strings.TrimSpace(output.Note()))
	}
	result := "success"
	if err != nil {
		result = "error"
		h.Log.Error("hook failed", append(kv, telemetry.KeyError, err)...)
	} else {
		h.Log.Debug("hook ran", kv...)
	}
	h.count(hk, result)
}

func (h *HookRunner) count(hk rules.Hook, result string) {
	if h.Metrics != nil {
		h.Metrics.HookRuns.WithLabelValues(hk.Event, result).Inc()
	}
}

// command is one of a hook's commands, with the event on its standard
// input and its output into output.
func command(ctx context.Context, argv []string, payload []byte, output *capped.Buffer) *exec.Cmd {
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Stdin = bytes.NewReader(payload)
	// A group of its own, so that its timeout kills what it started too
	// (`sleep 60 &` kept a hook with a 1 s timeout for a minute), and the
	// pipes are let go soon after.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 2 * time.Second
	// One buffer for both streams: os/exec then gives the hook a single
	// pipe, and its lines stay in the order it wrote them.
	cmd.Stdout, cmd.Stderr = output, output
	return cmd
}

// hookOutputLimit is how much of a hook's output is kept for the log.
const hookOutputLimit = 16 << 10
