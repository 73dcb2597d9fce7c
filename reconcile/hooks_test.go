package reconcile

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/raptiformica/raptiformica/internal/clock"
	"github.com/raptiformica/raptiformica/rules"
)

// A hook's timeout kills what it started too: `sleep 6 & sleep 6` with a
// 1 s timeout once kept the hook (and its output pipe) for 6 s.
func TestHostileHookTimeoutKillsItsGroup(t *testing.T) {
	h := &HookRunner{Log: hclog.NewNullLogger(), Clock: clock.Real{}}
	hk := rules.Hook{Event: "after_spawn", Command: []string{"/bin/sh", "-c", "sleep 6 & sleep 6"}, Timeout: time.Second}
	start := time.Now()
	h.run(context.Background(), hk, []byte("{}"))
	if took := time.Since(start); took > 4*time.Second {
		t.Errorf("a hook with a 1 s timeout ran for %s", took)
	}
}

// A hook that prints without end is capped the way the exec backend's and
// SSH commands are, and its log line says what was cut.
func TestHostileHookOutputCap(t *testing.T) {
	var logged bytes.Buffer
	log := hclog.New(&hclog.LoggerOptions{Output: &logged, Level: hclog.Debug, JSONFormat: true})
	h := &HookRunner{Log: log, Clock: clock.Real{}}
	hk := rules.Hook{Event: "after_spawn", Command: []string{"/bin/sh", "-c", "head -c 4000000 /dev/zero | tr '\\0' o; head -c 4000000 /dev/zero | tr '\\0' e >&2"}, Timeout: 20 * time.Second}
	h.run(context.Background(), hk, []byte("{}"))
	var line struct {
		Output    string `json:"output"`
		OutputCut string `json:"output_cut"`
	}
	if err := json.Unmarshal(logged.Bytes(), &line); err != nil {
		t.Fatalf("log line: %v\n%.300s", err, logged.String())
	}
	if len(line.Output) > hookOutputLimit {
		t.Errorf("logged %d bytes of output, more than the %d cap", len(line.Output), hookOutputLimit)
	}
	if !strings.Contains(line.OutputCut, "not kept") {
		t.Errorf("output_cut = %q, want a note of what was not kept", line.OutputCut)
	}
}
