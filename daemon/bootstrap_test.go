package daemon

import (
	"context"
	"testing"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"

	"github.com/raptiformica/raptiformica/enrol"
	"github.com/raptiformica/raptiformica/internal/clock"
	"github.com/raptiformica/raptiformica/internal/kvschema"
	"github.com/raptiformica/raptiformica/internal/nodeconfig"
	"github.com/raptiformica/raptiformica/internal/testconsul"
	"github.com/raptiformica/raptiformica/reconcile"
)

// aclConsul starts a Consul dev agent for one test with the cluster's ACL
// defaults (deny), and returns it with its management token.
func aclConsul(t *testing.T) (*testconsul.Server, string) {
	t.Helper()
	const root = "root-token-of-this-test"
	c, err := testconsul.StartWith("-hcl", `acl { enabled = true
default_policy = "deny"
tokens { initial_management = "`+root+`" } }`)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Stop)
	return c, root
}

func clientWithToken(t *testing.T, c *testconsul.Server, token string) *api.Client {
	t.Helper()
	cfg := api.DefaultConfig()
	cfg.Address, cfg.Scheme, cfg.Token = c.Addr, "http", token
	cl, err := api.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return cl
}

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
	c, root := aclConsul(t)
	ctx := context.Background()
	admin := clientWithToken(t, c, root)
	own, err := enrol.MachineToken(ctx, admin, "laptop-own")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		id, token string
		recorded  bool
	}{{"laptop-own", own, false}, {"laptop-by-hand", root, true}} {
		cl := clientWithToken(t, c, tc.token)
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
