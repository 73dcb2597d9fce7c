package e2e

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/raptiformica/raptiformica/daemon/agentapi"
	"github.com/raptiformica/raptiformica/internal/kvschema"
)

// TestSecureConsulRefusesStrangers: a local process without the cluster's
// token reaches every machine's Consul on its own address, as a stranger on
// the network would, and is refused: it lists, reads and writes no key (the
// gossip key and the mesh secret among them), sees no member, and cannot
// replace the description. The operator's commands, holding the token `up`
// keeps in the folder (readable by its owner only), work.
func TestSecureConsulRefusesStrangers(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	c.up(c.writePlatform("platform.hcl", platformSrc(3, 3)))
	c.waitAgree(3, time.Minute, "after up")

	if st, err := os.Stat(filepath.Join(c.dir, "identity.json")); err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("the cluster's identity in its folder: %v (mode %v), want a file only its owner reads", err, st.Mode().Perm())
	}
	for _, m := range c.machines() {
		if !m.Running {
			continue
		}
		cfg := api.DefaultConfig()
		cfg.Address, cfg.Scheme, cfg.Token = fmt.Sprintf("%s:%d", m.Config.BindAddr, m.Config.ConsulHTTPPort), "http", ""
		stranger, err := api.NewClient(cfg)
		if err != nil {
			t.Fatal(err)
		}
		who := m.Config.MachineID
		if pairs, _, err := stranger.KV().List(kvschema.Prefix, nil); err == nil && len(pairs) > 0 {
			t.Errorf("%s: a stranger listed %d keys", who, len(pairs))
		}
		for _, key := range []string{kvschema.GossipKey, kvschema.Platform, kvschema.Inventory + who} {
			if pair, _, err := stranger.KV().Get(key, nil); err == nil && pair != nil {
				t.Errorf("%s: a stranger read %s", who, key)
			}
		}
		if _, err := stranger.KV().Put(&api.KVPair{Key: kvschema.Platform, Value: []byte("machine \"server\" {\n  min = 9\n}\n")}, nil); err == nil || !strings.Contains(err.Error(), "403") {
			t.Errorf("%s: a stranger's write of the description: got %v, want 403", who, err)
		}
		if members, err := stranger.Agent().Members(false); err == nil && len(members) > 0 {
			t.Errorf("%s: a stranger listed %d members", who, len(members))
		}
	}
	// The operator's commands hold the token, and the description is
	// still the one applied.
	out, errOut, code := c.rf("platform", "get")
	if code != 0 || !strings.Contains(out, "min           = 3") {
		t.Errorf("platform get with the cluster's token: exit %d, %s%s", code, out, errOut)
	}
	if out, errOut, code := c.rf("members"); code != 0 || strings.Count(out, "alive") != 3 {
		t.Errorf("members with the cluster's token: exit %d, %s%s", code, out, errOut)
	}
}

// TestSecureAgentActsForTokenHoldersOnly: the endpoints that make an agent
// act (dial a mesh peer) or run backend calls (a plan) refuse a caller
// without the cluster's token, or with another, before they look at the
// request; reading the status needs none.
func TestSecureAgentActsForTokenHoldersOnly(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	c.up(c.writePlatform("platform.hcl", platformSrc(1, 1)))
	c.waitAgree(1, time.Minute, "after up")
	m := c.machines()[0].Config
	addr := fmt.Sprintf("%s:%d", m.BindAddr, m.HTTPPort)
	for _, token := range []string{"", "not-the-token"} {
		err := agentapi.AddMeshPeer(context.Background(), addr, "tcp://192.0.2.1:9651", token)
		var refused *agentapi.AgentRefused
		if !errors.As(err, &refused) || !strings.HasPrefix(refused.Status, "401") {
			t.Errorf("POST %s with token %q: got %v, want 401", agentapi.MeshPeersPath, token, err)
		}
	}
	// A plan observes through the backends, on the leader: token holders
	// only.
	var refused *agentapi.AgentRefused
	if _, err := agentapi.FetchPlan(context.Background(), addr, ""); !errors.As(err, &refused) || !strings.HasPrefix(refused.Status, "401") {
		t.Errorf("GET %s without a token: got %v, want 401", agentapi.PlanPath, err)
	}
	if d, err := agentapi.FetchPlan(context.Background(), addr, c.token()); err != nil || len(d.Actions) != 0 {
		t.Errorf("the leader's plan with the token: got %+v, %v; want no action at rest", d, err)
	}
	if _, err := agentStatus(m); err != nil {
		t.Errorf("reading the status without a token: %v", err)
	}
}
