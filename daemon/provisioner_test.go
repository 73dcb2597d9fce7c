package daemon

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/raptiformica/raptiformica/internal/clock"
	"github.com/raptiformica/raptiformica/internal/kvschema"
	"github.com/raptiformica/raptiformica/internal/state"
	"github.com/raptiformica/raptiformica/internal/telemetry"
	"github.com/raptiformica/raptiformica/provision"
	"github.com/raptiformica/raptiformica/reconcile"
	"github.com/raptiformica/raptiformica/rules"
)

// TestProvisionerPublishesAndConverges: the component runs this machine's
// provisioners, publishes each state to its key in KV, runs them again
// when the description changes them, reports a failure with its last
// lines, and fires after_provision on the machine.
func TestProvisionerPublishesAndConverges(t *testing.T) {
	consul := startTestConsul(t)
	store := kvschema.New(consul.Client)
	tmp := t.TempDir()
	count, hookLog := filepath.Join(tmp, "count"), filepath.Join(tmp, "hooks")
	var mu sync.Mutex
	platformWith := func(steps ...[]string) *rules.Platform {
		return &rules.Platform{
			Cluster: "c",
			Machines: map[string]rules.MachineType{"web": {Name: "web", Min: 1, Max: 1, Provisioners: []rules.Provisioner{
				{Name: "site", Steps: steps, Timeout: time.Minute},
			}}},
			Hooks: []rules.Hook{{Event: "after_provision", Command: []string{"/bin/sh", "-c", `cat >> "$0"; echo >> "$0"`, hookLog}, Timeout: 10 * time.Second}},
		}
	}
	countStep := []string{"/bin/sh", "-c", `echo run >> "$0"`, count}
	plat := platformWith(countStep)
	metrics := telemetry.New()
	p := &provisioner{
		self: "web-1", machineType: "web",
		runner:   &provision.Self{Dir: filepath.Join(tmp, "provisioners"), Backoff: clock.Backoff{Initial: 50 * time.Millisecond, Max: 50 * time.Millisecond}},
		platform: func() *rules.Platform { mu.Lock(); defer mu.Unlock(); return plat },
		store:    store, hooks: &reconcile.HookRunner{Log: hclog.NewNullLogger(), Clock: clock.Real{}},
		clock: clock.Real{}, log: hclog.NewNullLogger(), metrics: metrics,
		wake: make(chan struct{}, 1), publish: make(chan struct{}, 1),
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	published := func() state.Provisioned {
		all, _, err := store.ProvisionedRecords(context.Background(), nil)
		if err != nil {
			t.Fatal(err)
		}
		rec, _ := state.ParseProvisioned("web-1", all["web-1"])
		return rec
	}
	sum1 := plat.Machines["web"].ProvisionChecksum()
	waitFor(t, 20*time.Second, "the first provisioning is published ok", func() bool { return published().ReadyFor(sum1) })
	if got := testutil.ToFloat64(metrics.ProvisionState.WithLabelValues("ok")); got != 1 {
		t.Errorf("provision_state{ok} = %v, want 1", got)
	}
	if st := p.Status(); st == nil || st.State != state.ProvisionOK {
		t.Errorf("Status: %+v", st)
	}

	// A changed step: converged again, and the new checksum published.
	mu.Lock()
	plat = platformWith(countStep, []string{"true"})
	mu.Unlock()
	sum2 := plat.Machines["web"].ProvisionChecksum()
	p.poke()
	waitFor(t, 20*time.Second, "the changed provisioning is published ok", func() bool { return published().ReadyFor(sum2) })
	if b, _ := os.ReadFile(count); string(b) != "run\nrun\n" {
		t.Errorf("steps ran %q, want twice", b)
	}
	// Unchanged: a poke runs nothing.
	p.poke()
	time.Sleep(300 * time.Millisecond)
	if b, _ := os.ReadFile(count); string(b) != "run\nrun\n" {
		t.Errorf("an unchanged description ran the steps again: %q", b)
	}

	// A failing step: published failed, with its last lines, retried.
	mu.Lock()
	plat = platformWith([]string{"/bin/sh", "-c", "echo one; echo 'two: it broke' >&2; exit 4"})
	mu.Unlock()
	p.poke()
	// The record that showed it, not a read after: the next retry (50 ms
	// on) publishes itself running, and a second read raced with it.
	var rec state.Provisioned
	waitFor(t, 20*time.Second, "the failure is published after a retry", func() bool {
		rec = published()
		return rec.State == state.ProvisionFailed && rec.Failures >= 2
	})
	if rec.Output != "$ /bin/sh -c \"echo one; echo 'two: it broke' >&2; exit 4\"\none\ntwo: it broke" || rec.LastLine() != "two: it broke" || !strings.Contains(rec.Error, "exit status 4") {
		t.Errorf("failed record: %+v", rec)
	}
	if got := testutil.ToFloat64(metrics.ProvisionRuns.WithLabelValues("failed")); got < 2 {
		t.Errorf("provision_runs_total{failed} = %v, want the retries counted", got)
	}
	// The hook heard of two passes that ran and of the first failure, not
	// of every retry.
	waitFor(t, 10*time.Second, "after_provision ran three times", func() bool {
		b, _ := os.ReadFile(hookLog)
		return strings.Count(string(b), `"event":"after_provision"`) == 3
	})
	time.Sleep(300 * time.Millisecond)
	b, _ := os.ReadFile(hookLog)
	if n := strings.Count(string(b), `"state":"failed"`); n != 1 {
		t.Errorf("after_provision heard of %d failures, want the first only:\n%s", n, b)
	}
}

// TestAgentProvisionsItself: a real agent runs its type's provisioners,
// the leader counts it live only then (ready_after_provision), and its
// status and page say so.
func TestAgentProvisionsItself(t *testing.T) {
	a, _ := startAgentWith(t, `cluster = "daemon-test"
policy {
  resync_interval = "1s"
}
machine "server" {
  min                   = 1
  consul_server         = true
  ready_after_provision = true
  provisioner "marker" {
    steps = [["/bin/sh", "-c", "echo provisioned > marker"]]
  }
}
`)
	// startAgentWith returned once the leader counted the machine live.
	b, err := os.ReadFile(filepath.Join(a.Config.DataDir, "provisioners", "marker", "marker"))
	if err != nil || string(b) != "provisioned\n" {
		t.Fatalf("the step's file: %q, %v", b, err)
	}
	st, err := httpStatus(a.Config)
	if err != nil {
		t.Fatal(err)
	}
	if p := st.Provisioning; p == nil || p.State != state.ProvisionOK || p.Checksum != a.Platform().Machines["server"].ProvisionChecksum() {
		t.Errorf("/v1/status provisioning: %+v", st.Provisioning)
	}
	resp, err := http.Get(fmt.Sprintf("http://%s:%d/", a.Config.BindAddr, a.Config.HTTPPort))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	page, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	for _, want := range []string{`provisioning here: <strong id="provisioning">ok</strong>`, `<td class="ok">ok</td>`} {
		if !strings.Contains(string(page), want) {
			t.Errorf("status page lacks %q", want)
		}
	}
}
