package rotate

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/raptiformica/raptiformica/internal/identity"
	"github.com/raptiformica/raptiformica/internal/kvschema"
	"github.com/raptiformica/raptiformica/internal/testconsul"
)

// consul is a real Consul agent that encrypts its gossip, with the key
// firstKey in its keyring.
var (
	consul   *testconsul.Server
	firstKey string
)

func TestMain(m *testing.M) {
	flag.Parse()
	if testing.Short() {
		os.Exit(m.Run())
	}
	var err error
	if firstKey, err = identity.NewGossipKey(); err != nil {
		panic(err)
	}
	if consul, err = testconsul.StartWith("-encrypt", firstKey); err != nil {
		fmt.Fprintln(os.Stderr, "start consul:", err)
		os.Exit(1)
	}
	code := m.Run()
	consul.Stop()
	os.Exit(code)
}

// keys returns the keys of the agent's keyring and its primary.
func keys(t *testing.T) (map[string]int, string) {
	t.Helper()
	rings, err := keyrings(context.Background(), Options{}, consul.Client)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range lan(rings) {
		return r.Keys, primaryOf(rings)
	}
	t.Fatal("no LAN keyring listed")
	return nil, ""
}

// Gossip on a real Consul replaces the key in its keyring, in KV and in
// the identity folder; run again after a rotation stopped once the new key
// was stored, it carries on with that key rather than making another.
func TestGossipOnRealConsul(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test: needs Consul (run without -short)")
	}
	ctx := context.Background()
	store := kvschema.New(consul.Client)
	if err := store.PutGossipKey(ctx, firstKey); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	id, err := identity.New("test")
	if err != nil {
		t.Fatal(err)
	}
	id.GossipKey = firstKey
	if err := identity.Write(dir, id); err != nil {
		t.Fatal(err)
	}

	var out bytes.Buffer
	key, err := Gossip(ctx, consul.Client, Options{Out: &out, Timeout: 30 * time.Second, IdentityDir: dir})
	if err != nil {
		t.Fatalf("rotate: %v\n%s", err, out.String())
	}
	if key == firstKey || len(key) != 44 {
		t.Fatalf("new key %q: want a fresh base64 32-byte key", key)
	}
	if ks, primary := keys(t); len(ks) != 1 || ks[key] != 1 || primary != key {
		t.Errorf("keyring after the rotation: %v, primary %q; want the new key only", ks, primary)
	}
	if got, err := store.GossipKey(ctx); err != nil || got != key {
		t.Errorf("KV's gossip key: %q, %v; want the new key", got, err)
	}
	if got, err := identity.Read(dir); err != nil || got.GossipKey != key || got.ManagementToken != id.ManagementToken {
		t.Errorf("identity after the rotation: %+v, %v; want the new gossip key and the same token", got, err)
	}
	for _, step := range []string{"step 1 of 4", "step 2 of 4", "step 3 of 4", "step 4 of 4", "done"} {
		if !strings.Contains(out.String(), step) {
			t.Errorf("output does not say %q:\n%s", step, out.String())
		}
	}

	// A rotation that stopped after step 2: the key is installed and
	// stored (machines made since carry it), not used.
	pending, err := identity.NewGossipKey()
	if err != nil {
		t.Fatal(err)
	}
	if err := consul.Client.Operator().KeyringInstall(pending, nil); err != nil {
		t.Fatal(err)
	}
	if err := store.PutGossipKey(ctx, pending); err != nil {
		t.Fatal(err)
	}
	out.Reset()
	again, err := Gossip(ctx, consul.Client, Options{Out: &out, Timeout: 30 * time.Second})
	if err != nil {
		t.Fatalf("rotate again: %v\n%s", err, out.String())
	}
	if again != pending || !strings.Contains(out.String(), "carrying on") {
		t.Errorf("rotation run again: key %q, want the stored %q\n%s", again, pending, out.String())
	}
	if ks, primary := keys(t); len(ks) != 1 || primary != pending {
		t.Errorf("keyring: %v, primary %q; want the stored key only", ks, primary)
	}
	if got, _ := identity.Read(dir); got.GossipKey != key {
		t.Errorf("a folder not named was changed: %q", got.GossipKey)
	}
}

// A key Consul refuses stops the rotation before anything changes for the
// members, saying what Consul said.
func TestGossipStopsBeforeUse(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test: needs Consul (run without -short)")
	}
	ctx := context.Background()
	store := kvschema.New(consul.Client)
	_, before := keys(t)
	// A stored key that is not a key: a rotation carries on with it, and
	// every member refuses to install it.
	if err := store.PutGossipKey(ctx, "bm90IGEga2V5"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = store.PutGossipKey(ctx, before) })
	_, err := Gossip(ctx, consul.Client, Options{Timeout: 3 * time.Second})
	if err == nil || !strings.Contains(err.Error(), "every member to hold the new key") || !strings.Contains(err.Error(), "the old key is still the one in use") {
		t.Fatalf("rotation with a key Consul refuses: %v", err)
	}
	t.Logf("stopped: %v", err)
	if _, primary := keys(t); primary != before {
		t.Errorf("primary key after a stopped rotation: %q, want %q still", primary, before)
	}
	if got, _, _ := consul.Client.KV().Get(kvschema.GossipKey, (&api.QueryOptions{}).WithContext(ctx)); got == nil || string(got.Value) != "bm90IGEga2V5" {
		t.Errorf("the stored key changed: %v", got)
	}
}
