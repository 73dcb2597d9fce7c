package enrol

import (
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"slices"
	"testing"

	"github.com/raptiformica/raptiformica/internal/kvschema"
	"github.com/raptiformica/raptiformica/internal/state"
	"github.com/raptiformica/raptiformica/internal/testconsul"
	"github.com/raptiformica/raptiformica/mesh"
	"github.com/raptiformica/raptiformica/mesh/peering"
	"github.com/raptiformica/raptiformica/rules"
)

// meshEntries are n mesh entries, the first servers of them servers, each
// listening on one endpoint 10.0.x.y:9651, each with a key of its own and
// that key's address (an entry whose address is not its key's is
// refused).
func meshEntries(n, servers int) map[string]state.MeshEntry {
	out := map[string]state.MeshEntry{}
	for i := range n {
		id := fmt.Sprintf("m%03d", i)
		s := sha256.Sum256([]byte(id))
		key := hex.EncodeToString(ed25519.NewKeyFromSeed(s[:]).Public().(ed25519.PublicKey))
		addr, err := mesh.AddressOf(key)
		if err != nil {
			panic(err)
		}
		out[id] = state.MeshEntry{MachineID: id, Key: key, Address: addr.String(), Server: i < servers,
			Endpoints: []string{fmt.Sprintf("10.0.%d.%d:9651", i/250, i%250+1)}}
	}
	return out
}

// A new machine's config names a bounded list of peers however many
// members there are: the servers, the members the rule will link it to,
// and the static ones (anchors, the configuring node).
func TestScaleNewMachineMeshPeersAreBounded(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test: runs a real Consul (run without -short)")
	}
	t.Parallel()
	consul, err := testconsul.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(consul.Stop)
	store := kvschema.New(consul.Client)
	ctx := context.Background()
	if err := store.InitMeshSecret(ctx, "s3cret"); err != nil {
		t.Fatal(err)
	}
	nodes := meshEntries(60, 3)
	for _, n := range nodes {
		if err := state.MeshEntries(store).Set(ctx, n); err != nil {
			t.Fatal(err)
		}
	}
	m := rules.Mesh{Mode: rules.MeshOverlay, Port: 9651, MaxLinks: 6}
	self := peering.Member{ID: "new", Listens: true}
	cfg, err := meshConfigFor(ctx, store, m, self, []string{"anchor.example.org:9651"})
	if err != nil {
		t.Fatal(err)
	}
	allowed := map[string]bool{"anchor.example.org:9651": true}
	for _, id := range peering.Choose(self, mesh.Members(nodes), 6) {
		allowed[nodes[id].Endpoints[0]] = true
	}
	for _, id := range []string{"m000", "m001", "m002"} {
		allowed[nodes[id].Endpoints[0]] = true
		if !slices.Contains(cfg.Peers, nodes[id].Endpoints[0]) {
			t.Errorf("the new machine's peers %v lack server %s", cfg.Peers, id)
		}
	}
	for _, p := range cfg.Peers {
		if !allowed[p] {
			t.Errorf("the new machine's peers name %s, neither a server, nor chosen, nor static", p)
		}
	}
	if len(cfg.Peers) > 1+3+6 {
		t.Errorf("the new machine dials %d peers of 60 members, want at most 10: %v", len(cfg.Peers), cfg.Peers)
	}
	if cfg.Secret != "s3cret" || cfg.ListenPort != 9651 {
		t.Errorf("the new machine's mesh: secret %q, port %d; want the cluster's", cfg.Secret, cfg.ListenPort)
	}
}
