package reconcile

import (
	"context"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/raptiformica/raptiformica/backends"
	"github.com/raptiformica/raptiformica/internal/clock"
	"github.com/raptiformica/raptiformica/internal/consulclient"
	"github.com/raptiformica/raptiformica/internal/kvschema"
	"github.com/raptiformica/raptiformica/internal/state"
	"github.com/raptiformica/raptiformica/internal/telemetry"
	"github.com/raptiformica/raptiformica/internal/testconsul"
)

// TestScaleAReplacementOnALeftServersAddressIsAVoter: a replacement server
// that listens on the address of a server that left, and that Consul still
// lists as left, is a voter to the leader as soon as Raft and autopilot
// say so. The Raft configuration names its servers by address, so there
// either name may come out; read that way, the replacement was "not yet a
// voter" in about one pass of two, and its heal waited for it.
func TestScaleAReplacementOnALeftServersAddressIsAVoter(t *testing.T) {
	seed := ownConsul(t)
	ip := testconsul.FreeIP()
	left, err := testconsul.StartServer(ip, "server-left", seed.IP)
	if err != nil {
		t.Fatal(err)
	}
	if err := left.Client.Agent().Leave(); err != nil {
		t.Fatal(err)
	}
	left.Stop()
	ctx := context.Background()
	// Out of Raft, and listed as left.
	if !pollUntil(t, time.Minute, func() bool {
		cfg, err := seed.Client.Operator().RaftGetConfiguration(nil)
		return err == nil && len(cfg.Servers) == 1 && memberIs(seed, "server-left", 3)
	}) {
		t.Fatal("the server that left is still in Raft, or not listed as left")
	}

	repl, err := testconsul.StartServer(ip, "server-repl", seed.IP)
	if err != nil {
		t.Fatal(err)
	}
	defer repl.Stop()
	recs := map[string]Record{"server-repl": {ID: "server-repl", Type: "server", State: StateJoining}}
	// Autopilot promotes it on its own tick, after its stabilization time.
	if !pollUntil(t, 90*time.Second, func() bool {
		cfg, err := seed.Client.Operator().RaftGetConfiguration(nil)
		if err != nil || len(cfg.Servers) != 2 {
			return false
		}
		h, err := seed.Client.Operator().AutopilotServerHealth(nil)
		if err != nil {
			return false
		}
		for _, s := range h.Servers {
			if s.Name == "server-repl" && s.Voter && s.Healthy {
				for _, r := range cfg.Servers {
					if r.ID == s.ID && r.Voter {
						return true
					}
				}
			}
		}
		return false
	}) {
		t.Fatal("the replacement never became a healthy voter")
	}
	inv := &Inventory{Store: kvschema.New(seed.Client)}
	if _, err := inv.Put(ctx, recs["server-repl"]); err != nil {
		t.Fatal(err)
	}
	// Serf lists members in no fixed order: asked twenty times, the
	// address's name was the left server's about half of them.
	for i := range 20 {
		obs, err := Observe(ctx, seed.Client, inv, nil, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		if m := obs.Members["server-repl"]; !m.Voter || !m.RaftVoter || !m.Server {
			t.Fatalf("read %d: the replacement, a healthy voter, is not one to the leader: %+v", i, m)
		}
	}
}

// ownConsul starts a Consul dev server for one test that adds servers to
// it (the package's shared one must stay a cluster of one), in parallel
// with the others, and stops it when the test ends.
func ownConsul(t *testing.T) *testconsul.Server {
	t.Helper()
	if testing.Short() {
		t.Skip("integration test: needs Consul (run without -short)")
	}
	t.Parallel()
	seed, err := testconsul.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(seed.Stop)
	return seed
}

// memberIs says whether c's agent lists member name with serf status code.
func memberIs(c *testconsul.Server, name string, status int) bool {
	ms, err := c.Client.Agent().Members(false)
	if err != nil {
		return false
	}
	for _, m := range ms {
		if m.Name == name {
			return m.Status == status
		}
	}
	return false
}

func pollUntil(t *testing.T, within time.Duration, f func() bool) bool {
	t.Helper()
	for end := time.Now().Add(within); time.Now().Before(end); time.Sleep(200 * time.Millisecond) {
		if f() {
			return true
		}
	}
	return false
}

// TestScaleAFailedServerGivenUpLeavesRaft: a failed server the planner
// gives up on is out of the Raft configuration, by the node ID derived from
// its name, whether its reap does not go ahead (the unvote action, which
// leaves its record, and its machine counted failed) or its reap's destroy
// hangs (a host that is down, a backend that does not answer). Autopilot's cleanup is off, as the agent
// has it: nothing else takes the dead server out.
func TestScaleAFailedServerGivenUpLeavesRaft(t *testing.T) {
	seed := ownConsul(t)
	ap, err := seed.Client.Operator().AutopilotGetConfiguration(nil)
	if err != nil {
		t.Fatal(err)
	}
	ap.CleanupDeadServers = false
	if err := seed.Client.Operator().AutopilotSetConfiguration(ap, nil); err != nil {
		t.Fatal(err)
	}
	inRaft := func(id string) bool {
		cfg, err := seed.Client.Operator().RaftGetConfiguration(nil)
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range cfg.Servers {
			if s.ID == consulclient.NodeID(id) {
				return true
			}
		}
		return false
	}
	inv := &Inventory{Store: kvschema.New(seed.Client)}
	for _, kind := range []state.Kind{state.KindUnvote, state.KindReap} {
		id := "server-" + string(kind)
		dead, err := testconsul.StartServer(testconsul.FreeIP(), id, seed.IP, "-node-id", consulclient.NodeID(id))
		if err != nil {
			t.Fatal(err)
		}
		if !pollUntil(t, time.Minute, func() bool { return inRaft(id) }) {
			t.Fatalf("%s never joined Raft", id)
		}
		dead.Stop()
		// As the planner sees it: Consul has it failed (serf status 4),
		// which the unvote looks at again before it acts.
		if !pollUntil(t, time.Minute, func() bool { return memberIs(seed, id, 4) }) {
			t.Fatalf("%s stopped, and Consul never had it failed", id)
		}

		ctx, cancel := context.WithCancel(context.Background())
		rec, err := inv.Put(ctx, Record{ID: id, Type: "server", Backend: "local", State: StateFailed})
		if err != nil {
			t.Fatal(err)
		}
		ex := &Executor{Inventory: inv, Consul: seed.Client, Clock: clock.Real{}, Log: hclog.NewNullLogger(), Metrics: telemetry.New()}
		obs := Observed{Records: map[string]Record{id: rec}, Members: map[string]Member{id: {Name: id, Status: state.MemberFailed, Server: true, RaftVoter: true}}}
		hung := map[string]backends.Backend{"local": &fakeBackend{inv: inv, hang: true}}
		if err := ex.Execute(ctx, platform(t, threeServers), hung, obs, []state.Action{{Kind: kind, MachineID: id, Type: "server", Backend: "local"}}); err != nil {
			t.Fatal(err)
		}
		if kind == state.KindUnvote {
			// The next pass must still count it failed: an action in
			// flight counts as what it will make the machine, and
			// an unvote makes it nothing else.
			var next Observed
			ex.Snapshot(&next)
			if next.InFlight[id] {
				t.Error("unvote: the machine is in flight, and a pass would not count it failed")
			}
		}
		out := pollUntil(t, 10*time.Second, func() bool { return !inRaft(id) })
		cancel() // ends the hung destroy
		ex.Wait()
		if !out {
			t.Errorf("%s: the failed server is still in the Raft configuration", kind)
		}
		if kind == state.KindUnvote {
			if recs, _, err := inv.List(context.Background(), nil); err != nil || recs[id].State != StateFailed {
				t.Errorf("unvote: its record is %+v, %v; want it left, failed", recs[id], err)
			}
		}
	}
}
