package reconcile

import (
	"context"
	"testing"
	"time"

	"github.com/raptiformica/raptiformica/internal/testconsul"
)

// TestScaleAReplacementOnALeftServersAddressIsAVoter: a replacement server
// that listens on the address of a server that left, and that Consul still
// lists as left, is a voter to the leader as soon as Raft and autopilot
// say so. The Raft configuration names its servers by address, so there
// either name may come out; read that way, the replacement was "not yet a
// voter" in about one pass of two, and its heal waited for it.
func TestScaleAReplacementOnALeftServersAddressIsAVoter(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test: needs Consul (run without -short)")
	}
	t.Parallel()
	seed, err := testconsul.Start()
	if err != nil {
		t.Fatal(err)
	}
	defer seed.Stop()
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
	// Serf lists members in no fixed order: asked twenty times, the
	// address's name was the left server's about half of them.
	for i := range 20 {
		if v := serverVoters(ctx, seed.Client, recs); !v["server-repl"] {
			t.Fatalf("read %d: the replacement, a healthy voter, is not one to the leader: %v", i, v)
		}
	}
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
