package reconcile

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
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

// TestHooksPredicateGatesTheCommand: a hook with a predicate runs its
// command only when the predicate exits 0, with the event on the
// predicate's standard input too.
func TestHooksPredicateGatesTheCommand(t *testing.T) {
	dir := t.TempDir()
	marker, role := dir+"/ran", dir+"/role-lb"
	h := &HookRunner{Log: hclog.NewNullLogger(), Clock: clock.Real{}}
	hk := rules.Hook{Event: "cluster_change", Timeout: 10 * time.Second,
		Predicate: []string{"/bin/sh", "-c", `grep -q '"event"' && test -f "$0"`, role},
		Command:   []string{"/bin/sh", "-c", `echo ran >> "$0"`, marker}}
	payload := []byte(`{"event":"cluster_change"}`)
	h.run(context.Background(), hk, payload)
	if _, err := os.Stat(marker); err == nil {
		t.Fatal("the command ran though its predicate exited 1")
	}
	if err := os.WriteFile(role, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	h.run(context.Background(), hk, payload)
	if b, err := os.ReadFile(marker); err != nil || string(b) != "ran\n" {
		t.Errorf("the command after its predicate said yes: %q, %v", b, err)
	}
}
