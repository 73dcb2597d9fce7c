package daemon

import (
	"context"
	"testing"

	"github.com/hashicorp/go-hclog"

	"github.com/raptiformica/raptiformica/enrol"
	"github.com/raptiformica/raptiformica/internal/clock"
	"github.com/raptiformica/raptiformica/internal/kvschema"
	"github.com/raptiformica/raptiformica/internal/nodeconfig"
	"github.com/raptiformica/raptiformica/internal/testconsul"
	"github.com/raptiformica/raptiformica/reconcile"
)

// TestTrustClientWritesNoRecordOfItsOwn: a client machine's agent, with
// its own token, does not record itself (Consul refuses it, and the agent
// takes that as done: whoever made or enrolled it recorded it); with a
// token that may write the inventory (a node config an operator wrote by
// hand with the cluster's), it records itself as before.
func TestTrustClientWritesNoRecordOfItsOwn(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test: runs a real Consul (run without -short)")
	}
	t.Parallel()
	c, root := testconsul.StartACL(t), testconsul.ACLRoot
	ctx := context.Background()
	admin := c.ClientWithToken(t, root)
	own, err := enrol.MachineToken(ctx, admin, "laptop-own")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		id, token string
		recorded  bool
	}{{"laptop-own", own, false}, {"laptop-by-hand", root, true}} {
		cl := c.ClientWithToken(t, tc.token)
		seed := &kvSeed{cfg: nodeconfig.Config{MachineID: tc.id, MachineType: "laptop", Backend: "by-hand"},
			store: kvschema.New(cl), inventory: &reconcile.Inventory{Store: kvschema.New(cl)}, clock: clock.Real{}, log: hclog.NewNullLogger()}
		if err := seed.record(ctx); err != nil {
			t.Errorf("%s: record: %v", tc.id, err)
		}
		_, found, err := (&reconcile.Inventory{Store: kvschema.New(admin)}).Get(ctx, tc.id)
		if err != nil || found != tc.recorded {
			t.Errorf("%s: recorded %v (%v), want %v", tc.id, found, err, tc.recorded)
		}
	}
}
