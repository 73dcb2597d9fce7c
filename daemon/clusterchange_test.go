package daemon

import (
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"

	"github.com/raptiformica/raptiformica/internal/clock"
	"github.com/raptiformica/raptiformica/internal/nodeconfig"
	"github.com/raptiformica/raptiformica/reconcile"
	"github.com/raptiformica/raptiformica/rules"
)

// TestHooksClusterChangeCoalescesABurst: the first answer of the watch is
// no change; ten changes within a second run the hooks at most twice (once
// after they settle, once at the end of the interval for the rest), and
// each run has the event and this machine on its standard input.
func TestHooksClusterChangeCoalescesABurst(t *testing.T) {
	runs := filepath.Join(t.TempDir(), "runs")
	p := &rules.Platform{Cluster: "c", Hooks: []rules.Hook{{
		Event: "cluster_change", Timeout: 5 * time.Second, Interval: 2 * time.Second,
		Command: []string{"/bin/sh", "-c", `cat >> "$0"; echo >> "$0"`, runs},
	}}}
	c := &clusterChange{
		self: "worker-1", platform: func() *rules.Platform { return p },
		hooks: &reconcile.HookRunner{Log: hclog.NewNullLogger(), Clock: clock.Real{}}, clock: clock.Real{}, log: hclog.NewNullLogger(),
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	changed := make(chan struct{}, 1)
	done := make(chan struct{})
	go func() { c.fireOnChanges(ctx, changed); close(done) }()
	send := func() {
		select {
		case changed <- struct{}{}:
		default:
		}
	}
	send() // the membership as found
	time.Sleep(200 * time.Millisecond)
	if b, _ := os.ReadFile(runs); len(b) > 0 {
		t.Fatalf("the first answer of the watch ran the hooks: %s", b)
	}
	for i := 0; i < 10; i++ {
		send()
		time.Sleep(100 * time.Millisecond)
	}
	time.Sleep(4 * time.Second) // settle + interval + the hook itself
	cancel()
	<-done
	b, _ := os.ReadFile(runs)
	if n := strings.Count(string(b), `"event":"cluster_change"`); n < 1 || n > 2 {
		t.Errorf("ten changes in a second ran the hooks %d times, want 1 or 2:\n%s", n, b)
	}
	if !strings.Contains(string(b), `"machine_id":"worker-1"`) {
		t.Errorf("the hook's input does not name this machine:\n%s", b)
	}
}

// TestHooksClusterChangeRunsOnTheAgent: a real agent runs its description's
// cluster_change hook when a member's failure detector changes.
func TestHooksClusterChangeRunsOnTheAgent(t *testing.T) {
	runs := filepath.Join(t.TempDir(), "runs")
	a, _ := startAgentWith(t, onePlatform+`hook "cluster_change" {
  command  = ["/bin/sh", "-c", "cat >> \"$0\"; echo >> \"$0\"", "`+runs+`"]
  interval = "1s"
}
`)
	time.Sleep(2 * time.Second) // the watch's first answer, which runs nothing
	before, _ := os.ReadFile(runs)
	reg := &api.CatalogRegistration{Node: "worker-far", Address: "192.0.2.20",
		Check: &api.AgentCheck{Node: "worker-far", CheckID: "serfHealth", Name: "Serf Health Status", Status: api.HealthPassing}}
	if _, err := a.consul.Catalog().Register(reg, nil); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "the cluster_change hook ran on the agent", func() bool {
		b, _ := os.ReadFile(runs)
		return strings.Count(string(b), `"event":"cluster_change"`) > strings.Count(string(before), `"event":"cluster_change"`)
	})
}

// TestHooksAfterMeshFiresWhenTheFirstLinkComesUp: after_mesh runs on the
// machine when its overlay goes from no link to one, not on every look.
func TestHooksAfterMeshFiresWhenTheFirstLinkComesUp(t *testing.T) {
	runs := filepath.Join(t.TempDir(), "runs")
	p := &rules.Platform{Cluster: "c", Hooks: []rules.Hook{{
		Event: "after_mesh", Timeout: 5 * time.Second,
		Command: []string{"/bin/sh", "-c", `cat >> "$0"; echo >> "$0"`, runs},
	}}}
	s := &meshSync{cfg: nodeconfig.Config{MachineID: "laptop-1"}, platform: func() *rules.Platform { return p },
		hooks: &reconcile.HookRunner{Log: hclog.NewNullLogger(), Clock: clock.Real{}}}
	ctx := context.Background()
	linked := false
	for _, up := range []bool{false, true, true, true, false, true} { // two times from none to one
		linked = s.afterMesh(ctx, linked, up)
	}
	waitFor(t, 10*time.Second, "two after_mesh runs", func() bool {
		b, _ := os.ReadFile(runs)
		return strings.Count(string(b), `"event":"after_mesh"`) == 2
	})
	time.Sleep(500 * time.Millisecond)
	if b, _ := os.ReadFile(runs); strings.Count(string(b), `"event":"after_mesh"`) != 2 || !strings.Contains(string(b), `"machine_id":"laptop-1"`) {
		t.Errorf("after_mesh runs:\n%s", b)
	}
}

// TestScaleClusterChangeWatchesOnlyWithHooks: a machine whose description
// has no cluster_change hook reads nothing of the membership (the read
// grows with the cluster); one with a hook watches, with stale reads, and
// stops when the hook goes.
func TestScaleClusterChangeWatchesOnlyWithHooks(t *testing.T) {
	var reads, consistent atomic.Int64
	consul := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v1/health/state/any" {
			reads.Add(1)
			if _, ok := r.URL.Query()["stale"]; !ok {
				consistent.Add(1)
			}
		}
		w.Header().Set("X-Consul-Index", "1")
		_, _ = w.Write([]byte("[]"))
	}))
	defer consul.Close()
	cfg := api.DefaultConfig()
	cfg.Address = consul.Listener.Addr().String()
	client, err := api.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	withHook := &rules.Platform{Cluster: "c", Hooks: []rules.Hook{{Event: "cluster_change", Command: []string{"/bin/true"}}}}
	var current atomic.Pointer[rules.Platform]
	current.Store(&rules.Platform{Cluster: "c"})
	c := &clusterChange{
		self: "worker-1", consul: client, platform: current.Load,
		hooks: &reconcile.HookRunner{Log: hclog.NewNullLogger(), Clock: clock.Real{}}, clock: clock.Real{}, log: hclog.NewNullLogger(),
		wake: make(chan struct{}, 1),
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = c.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()

	c.poke() // a description changed, still without the hook
	time.Sleep(300 * time.Millisecond)
	if n := reads.Load(); n != 0 {
		t.Errorf("without a cluster_change hook: %d reads of the membership, want none", n)
	}
	current.Store(withHook)
	c.poke()
	waitFor(t, 10*time.Second, "the membership is watched", func() bool { return reads.Load() >= 2 })
	if n := consistent.Load(); n != 0 {
		t.Errorf("%d of %d membership reads were not stale", n, reads.Load())
	}
	current.Store(&rules.Platform{Cluster: "c"})
	c.poke()
	time.Sleep(300 * time.Millisecond) // the read in flight ends
	before := reads.Load()
	time.Sleep(500 * time.Millisecond)
	if after := reads.Load(); after != before {
		t.Errorf("the hook is gone but the membership is still read: %d reads, then %d", before, after)
	}
}
