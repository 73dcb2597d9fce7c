package daemon

import (
	"context"
	"encoding/base64"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/hashicorp/consul/api"

	"github.com/raptiformica/raptiformica/internal/kvschema"
	"github.com/raptiformica/raptiformica/internal/nodeconfig"
)

func TestMeshSecretsFor(t *testing.T) {
	for _, tc := range []struct {
		name string
		kv   kvschema.MeshSecrets
		want meshSecrets
		ok   bool
	}{
		{name: "no secret (or not readable): keep what the node has", kv: kvschema.MeshSecrets{}},
		{name: "at rest", kv: kvschema.MeshSecrets{Current: "s"}, want: meshSecrets{Listen: "s"}, ok: true},
		{name: "step 1: dial with the next one too", kv: kvschema.MeshSecrets{Current: "s", Next: "n"}, want: meshSecrets{Listen: "s", Dial: []string{"n"}}, ok: true},
		{name: "step 2: listen with the new one, dial with the old too", kv: kvschema.MeshSecrets{Current: "n", Previous: "s"}, want: meshSecrets{Listen: "n", Dial: []string{"s"}}, ok: true},
		{name: "a secret given twice is dialled once", kv: kvschema.MeshSecrets{Current: "n", Next: "n", Previous: "n"}, want: meshSecrets{Listen: "n"}, ok: true},
		{name: "both others (a re-seed in between): dialled, sorted", kv: kvschema.MeshSecrets{Current: "c", Next: "z", Previous: "a"}, want: meshSecrets{Listen: "c", Dial: []string{"a", "z"}}, ok: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := meshSecretsFor(tc.kv)
			if ok != tc.ok {
				t.Fatalf("ok: got %v want %v", ok, tc.ok)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("secrets (-want +got):\n%s", diff)
			}
		})
	}
}

// The secrets a node took are kept, readable by its owner only, and win
// over the node config's at the next start; a damaged file is ignored.
func TestMeshSecretsKept(t *testing.T) {
	dir := t.TempDir()
	cfg := nodeconfig.Config{DataDir: dir, Mesh: &nodeconfig.Mesh{Secret: "from-config"}}
	if got := startSecrets(cfg); !got.equal(meshSecrets{Listen: "from-config"}) {
		t.Errorf("without a kept file: got %+v, want the config's secret", got)
	}
	kept := meshSecrets{Listen: "new", Dial: []string{"old"}}
	if err := saveMeshSecrets(dir, kept); err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(filepath.Join(dir, meshSecretsFile)); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("kept file: %v, mode %v; want 0600", err, st.Mode().Perm())
	}
	if got := startSecrets(cfg); !got.equal(kept) {
		t.Errorf("with a kept file: got %+v, want %+v", got, kept)
	}
	if err := os.WriteFile(filepath.Join(dir, meshSecretsFile), []byte("{not json"), 0o600); err != nil {
		t.Fatal(err)
	}
	if got := startSecrets(cfg); !got.equal(meshSecrets{Listen: "from-config"}) {
		t.Errorf("with a damaged file: got %+v, want the config's secret", got)
	}
}

// A fresh start empties Consul's data folder but for the gossip keyring,
// whose primary key is the node's.
func TestWipeConsulDataKeepsKeyring(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "consul")
	keyring := `["bmV3LWtleS1uZXcta2V5LW5ldy1rZXktbmV3LWtleSE=", "b2xkLWtleS1vbGQta2V5LW9sZC1rZXktb2xkLWtleSE="]`
	for name, body := range map[string]string{consulKeyringFile: keyring, "raft/raft.db": "raft", "node-id": "id"} {
		if err := os.MkdirAll(filepath.Dir(filepath.Join(dir, name)), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if got := gossipKeyOf(dir, "config-key"); got != "bmV3LWtleS1uZXcta2V5LW5ldy1rZXktbmV3LWtleSE=" {
		t.Errorf("key of a keyring: got %q, want its first (primary) key", got)
	}
	if err := wipeConsulData(dir); err != nil {
		t.Fatal(err)
	}
	for _, gone := range []string{"raft", "node-id"} {
		if _, err := os.Stat(filepath.Join(dir, gone)); err == nil {
			t.Errorf("%s survived the wipe", gone)
		}
	}
	if b, err := os.ReadFile(filepath.Join(dir, consulKeyringFile)); err != nil || string(b) != keyring {
		t.Errorf("keyring after the wipe: %q, %v; want it kept as it was", b, err)
	}
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	if err := wipeConsulData(dir); err != nil {
		t.Errorf("wipe without a keyring: %v", err)
	}
	if got := gossipKeyOf(dir, "config-key"); got != "config-key" {
		t.Errorf("key without a keyring: got %q, want the config's", got)
	}
}

// A rotated gossip key survives the one wipe of Consul's data the agent
// makes, a recovery on a fresh Consul: the fresh Consul (real, with its
// node config still naming the old key) comes back with the new key only,
// and re-seeds an emptied KV with it, so that the machines the recovery
// spawns can join.
func TestFreshConsulKeepsRotatedGossipKey(t *testing.T) {
	a, _ := startAgent(t)
	old := a.Config.Encrypt
	raw := make([]byte, 32)
	for i := range raw {
		raw[i] = byte(i + 1)
	}
	key := base64.StdEncoding.EncodeToString(raw)
	op := a.consul.Operator()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	w := (&api.WriteOptions{}).WithContext(ctx)
	for _, step := range []func() error{
		func() error { return op.KeyringInstall(key, w) },
		func() error { return op.KeyringUse(key, w) },
		func() error { return op.KeyringRemove(old, w) },
	} {
		if err := step(); err != nil {
			t.Fatal(err)
		}
	}

	// The restart is seen through a file in Consul's data, which a fresh
	// Consul starts without.
	marker := filepath.Join(a.Config.DataDir, "consul", "test-marker")
	if err := os.WriteFile(marker, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	a.proc.RestartFresh()
	// Its leader bootstraps ACLs a moment after it is elected: the test
	// waits for the token to be known, not only for a leader.
	waitFor(t, time.Minute, "a fresh Consul with a leader and ACLs bootstrapped", func() bool {
		if _, err := os.Stat(marker); err == nil {
			return false
		}
		l, err := a.consul.Status().Leader()
		if err != nil || l == "" {
			return false
		}
		_, _, err = a.consul.ACL().TokenReadSelf(nil)
		return err == nil
	})
	cfg, err := os.ReadFile(filepath.Join(a.Config.DataDir, "consul.json"))
	if err != nil || !strings.Contains(string(cfg), old) {
		t.Fatalf("Consul's config should still name the node config's key (the test's point): %v", err)
	}
	rings, err := op.KeyringList((&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rings {
		if r.WAN {
			continue
		}
		if len(r.Keys) != 1 || r.Keys[key] != r.NumNodes || r.PrimaryKeys[key] != r.NumNodes {
			t.Errorf("keyring of the fresh Consul: keys %v, primary %v; want the rotated key only", r.Keys, r.PrimaryKeys)
		}
	}
	if _, err := a.consul.KV().Delete(kvschema.GossipKey, w); err != nil {
		t.Fatal(err)
	}
	if err := a.seed.gossipKey(ctx); err != nil {
		t.Fatal(err)
	}
	if got, err := a.store.GossipKey(ctx); err != nil || got != key {
		t.Errorf("gossip key re-seeded into KV: got %q, %v; want the rotated key", got, err)
	}
}
