package reconcile

import (
	"context"
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
