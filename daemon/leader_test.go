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
	p := &rules.Platform{}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }()
	for _, c := range nodes {
		e := &elector{
			self: c.MachineID, neverLead: !mayLead(c), consul: consul.Client, store: kvschema.New(consul.Client),
			platform: func() *rules.Platform { return p },
			// Never done: the winner holds the lock without starting the
			// control loop, which this test is not about.
			reseed: func(context.Context) bool { return false },
			clock:  clock.Real{}, log: hclog.NewNullLogger(), metrics: telemetry.New(), wake: make(chan struct{}, 1),
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := e.Run(ctx); err != nil {
				t.Errorf("%s: Run: %v", c.MachineID, err)
			}
		}()
	}
	store := kvschema.New(consul.Client)
	waitFor(t, 30*time.Second, "server-a holds the lock", func() bool {
		lctx, lcancel := context.WithTimeout(ctx, 5*time.Second)
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
