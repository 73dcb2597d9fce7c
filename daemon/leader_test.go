package daemon

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/raptiformica/raptiformica/internal/clock"
	"github.com/raptiformica/raptiformica/internal/kvschema"
	"github.com/raptiformica/raptiformica/internal/nodeconfig"
	"github.com/raptiformica/raptiformica/internal/telemetry"
	"github.com/raptiformica/raptiformica/internal/testconsul"
	"github.com/raptiformica/raptiformica/rules"
)

// TestScaleOnlyServersCampaign: of a server, a client and a server with
// never_lead on one real Consul, only the first campaigns: it is the only
// one with a session, and it holds the lock. A thousand clients add no
// session, no renewal and no blocking read of the lock.
func TestScaleOnlyServersCampaign(t *testing.T) {
	consul := startTestConsul(t)
	nodes := []nodeconfig.Config{
		{MachineID: "server-a", ConsulServer: true},
		{MachineID: "client-b"},
		{MachineID: "client-c", NeverLead: true},
		{MachineID: "server-d", ConsulServer: true, NeverLead: true},
	}
	runElectors(t, consul, nodes)
	store := kvschema.New(consul.Client)
	waitFor(t, 30*time.Second, "server-a holds the lock", func() bool {
		lctx, lcancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer lcancel()
		return store.Leader(lctx) == "server-a"
	})
	// The others have had the time it took the winner to campaign, and
	// some more: none of them may have made a session meanwhile.
	time.Sleep(2 * time.Second)
	sessions, _, err := consul.Client.Session().List(nil)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, s := range sessions {
		names = append(names, s.Name)
	}
	if got, want := strings.Join(names, ","), "raptiformica leader server-a"; got != want {
		t.Errorf("sessions: got %q want only %q", got, want)
	}
}

// runElectors campaigns for each node on consul until the test ends. The
// winner holds the lock without leading: its re-seed never succeeds, and
// the control loop is not what these tests are about.
func runElectors(t *testing.T, consul *testconsul.Server, nodes []nodeconfig.Config) {
	t.Helper()
	p := &rules.Platform{}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	for _, c := range nodes {
		e := &elector{
			self: c.MachineID, neverLead: !mayLead(c), consul: consul.Client, store: kvschema.New(consul.Client),
			platform: func() *rules.Platform { return p },
			reseed:   func(context.Context) bool { return false },
			clock:    clock.Real{}, log: hclog.NewNullLogger(), metrics: telemetry.New(), wake: make(chan struct{}, 1),
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := e.Run(ctx); err != nil {
				t.Errorf("%s: Run: %v", c.MachineID, err)
			}
		}()
	}
}

// TestScaleLeadershipMovesWithinTheLockDelay: when the holder's session
// goes (its machine died, as Consul's failure detector found), another
// server holds the lock within the lock delay and a retry or two, not the
// 5 s api.Lock waited after meeting a lock delay.
func TestScaleLeadershipMovesWithinTheLockDelay(t *testing.T) {
	consul := startTestConsul(t)
	runElectors(t, consul, []nodeconfig.Config{{MachineID: "server-a", ConsulServer: true}, {MachineID: "server-b", ConsulServer: true}})
	kv := consul.Client.KV()
	holder := func() string {
		pair, _, err := kv.Get(kvschema.Leader, nil)
		if err != nil || pair == nil {
			return ""
		}
		return pair.Session
	}
	waitFor(t, 30*time.Second, "a server holds the lock", func() bool { return holder() != "" })
	for round := range 3 {
		old := holder()
		if _, err := consul.Client.Session().Destroy(old, nil); err != nil {
			t.Fatal(err)
		}
		gone := time.Now()
		waitFor(t, 30*time.Second, "another session holds the lock", func() bool { h := holder(); return h != "" && h != old })
		took := time.Since(gone)
		t.Logf("round %d: the lock moved in %s", round, took.Round(time.Millisecond))
		if took < lockDelay-100*time.Millisecond {
			t.Errorf("round %d: the lock moved in %s, within its lock delay of %s", round, took, lockDelay)
		}
		if limit := lockDelay + 3*time.Second; took > limit {
			t.Errorf("round %d: the lock moved in %s, want within %s (the lock delay and a few retries)", round, took, limit)
		}
	}
}
