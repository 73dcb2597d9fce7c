package daemon

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/raptiformica/raptiformica/builtin"
	"github.com/raptiformica/raptiformica/internal/kvschema"
	"github.com/raptiformica/raptiformica/internal/nodeconfig"
	"github.com/raptiformica/raptiformica/internal/telemetry"
	"github.com/raptiformica/raptiformica/internal/testconsul"
	"github.com/raptiformica/raptiformica/reconcile"
	"github.com/raptiformica/raptiformica/rules"
)

// lockedBuffer is a log sink the mirror's goroutines and the test share.
type lockedBuffer struct {
	mu  sync.Mutex // guards buf
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// newTestMirror is a node's mirror in a fresh folder, on the KV of consul
// (nil: a mirror that only reads its files).
func newTestMirror(t *testing.T, consul *testconsul.Server) (*mirror, *lockedBuffer) {
	t.Helper()
	logs := &lockedBuffer{}
	m := &mirror{
		dir: filepath.Join(t.TempDir(), "mirror"), self: "server-1", server: true, parse: reconcile.ParseOptions(builtin.Registry()),
		log: hclog.New(&hclog.LoggerOptions{Level: hclog.Info, Output: logs}), metrics: telemetry.New(),
	}
	if err := os.MkdirAll(m.dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if consul != nil {
		m.store = kvschema.New(consul.Client)
		m.inventory = &reconcile.Inventory{Store: m.store}
	}
	return m, logs
}

func startTestConsul(t testing.TB) *testconsul.Server {
	t.Helper()
	if testing.Short() {
		t.Skip("integration test: runs a real Consul (run without -short)")
	}
	c, err := testconsul.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Stop)
	return c
}

func writeMirrorFile(t *testing.T, m *mirror, name, text string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(m.dir, name), []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
}

func sha(s string) string {
	h := sha256.Sum256([]byte(s))
	return hex.EncodeToString(h[:])
}

const (
	oldPlatform = onePlatform
	newPlatform = `cluster = "daemon-test"
machine "server" {
  min           = 3
  consul_server = true
}
`
)

func unreadable(m *mirror, what string) float64 {
	return testutil.ToFloat64(m.metrics.MirrorUnreadable.WithLabelValues(what))
}

// A mirrored description that cannot be parsed is an error in the log, in
// the status and in a metric: the node still starts (from its node
// config), but says that its mirror is broken.
func TestHostileCorruptPlatformMirrorIsReported(t *testing.T) {
	for _, tc := range []struct {
		name, text, version string
		want                []string // in the mirror error
	}{
		{name: "cut short", text: "cluster = \"daemon-test\"\nmachine \"server\" {\n  min = \n", version: "7\n",
			want: []string{"mirror/platform:3", "not re-seeding"}},
		{name: "binary garbage", text: "\x00\x01\x02\xff", version: "7\n", want: []string{"mirror/platform:1"}},
		{name: "version of another text", text: newPlatform, version: "7 sha256:" + sha(oldPlatform) + "\n",
			want: []string{"mirror/platform.version", "does not belong to", "not re-seeding"}},
		{name: "version unreadable", text: newPlatform, version: "seven\n", want: []string{"mirror/platform.version:1"}},
		{name: "no version", text: newPlatform, want: []string{"mirror/platform.version", "missing"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, logs := newTestMirror(t, nil)
			writeMirrorFile(t, m, "platform", tc.text)
			if tc.version != "" {
				writeMirrorFile(t, m, "platform.version", tc.version)
			}
			if err := m.load("", oldPlatform); err != nil {
				t.Fatalf("load: %v", err)
			}
			if m.Platform() == nil {
				t.Fatal("no description loaded: the node config's should have been")
			}
			got := m.MirrorError()
			for _, w := range tc.want {
				if !strings.Contains(got, w) {
					t.Errorf("mirror error: got %q want it to contain %q", got, w)
				}
			}
			if v := unreadable(m, "platform"); v != 1 {
				t.Errorf("mirror_unreadable{what=platform}: got %v want 1", v)
			}
			if !strings.Contains(logs.String(), "[ERROR]") || !strings.Contains(logs.String(), "mirror/platform") {
				t.Errorf("log: got %q want an error naming the file", logs.String())
			}
		})
	}
}

// A good mirror loads with the version stored with it and reports nothing;
// one written by an older agent (a version without a checksum) still loads.
func TestMirrorPlatformRoundTrip(t *testing.T) {
	m, _ := newTestMirror(t, nil)
	m.writePlatform([]byte(newPlatform), 7)
	if err := m.load("", oldPlatform); err != nil {
		t.Fatal(err)
	}
	if got, v := string(m.Platform().Source), m.platformVersion(); got != newPlatform || v != 7 {
		t.Errorf("got version %d of\n%s\nwant version 7 of the mirrored text", v, got)
	}
	if e := m.MirrorError(); e != "" || unreadable(m, "platform") != 0 {
		t.Errorf("a good mirror reported as broken: %q", e)
	}

	legacy, _ := newTestMirror(t, nil)
	writeMirrorFile(t, legacy, "platform", newPlatform)
	writeMirrorFile(t, legacy, "platform.version", "4\n")
	if err := legacy.load("", oldPlatform); err != nil {
		t.Fatal(err)
	}
	if got, v := string(legacy.Platform().Source), legacy.platformVersion(); got != newPlatform || v != 4 || legacy.MirrorError() != "" {
		t.Errorf("legacy mirror: got version %d (%q) of\n%s", v, legacy.MirrorError(), got)
	}
}

// A re-seed writes a text only under the version it was stored with: never
// a node config's text (or an older KV's) under the mirror's newer number,
// and nothing at all while the mirror cannot be read.
func TestHostileReseedNeverCarriesVersionPastText(t *testing.T) {
	consul := startTestConsul(t)
	ctx := context.Background()
	kv := consul.Client.KV()
	platformInKV := func(t *testing.T) *api.KVPair {
		t.Helper()
		pair, _, err := kv.Get(kvschema.Platform, nil)
		if err != nil {
			t.Fatal(err)
		}
		return pair
	}

	t.Run("corrupt mirror, older node config", func(t *testing.T) {
		if err := consul.Reset(kvschema.Prefix); err != nil {
			t.Fatal(err)
		}
		m, logs := newTestMirror(t, consul)
		writeMirrorFile(t, m, "platform", "cluster = \"daemon-test\"\nmachine \"server\" {\n  min = \n")
		writeMirrorFile(t, m, "platform.version", "7\n")
		if err := m.load("", oldPlatform); err != nil {
			t.Fatal(err)
		}
		if m.reseed(ctx) {
			t.Error("reseed reported a description in KV")
		}
		if pair := platformInKV(t); pair != nil {
			t.Errorf("KV re-seeded from a node whose mirror is corrupt: version %d of\n%s", pair.Flags, pair.Value)
		}
		if !strings.Contains(logs.String(), "not re-seeding") {
			t.Errorf("log: got %q want the refusal", logs.String())
		}
	})

	t.Run("mirror kept newer than KV, then KV lost", func(t *testing.T) {
		if err := consul.Reset(kvschema.Prefix); err != nil {
			t.Fatal(err)
		}
		m, _ := newTestMirror(t, consul)
		if err := m.load("", oldPlatform); err != nil {
			t.Fatal(err)
		}
		m.apply(&api.KVPair{Key: kvschema.Platform, Value: []byte(newPlatform), Flags: 7, ModifyIndex: 10})
		// A KV re-created from a staler copy: run, never mirrored.
		m.apply(&api.KVPair{Key: kvschema.Platform, Value: []byte(oldPlatform), Flags: 3, ModifyIndex: 11})
		if got := string(m.Platform().Source); got != oldPlatform {
			t.Fatalf("running\n%s\nwant KV's older text", got)
		}
		if m.platformVersion() != 7 {
			t.Fatalf("mirror version %d, want 7 kept", m.platformVersion())
		}
		if !m.reseed(ctx) {
			t.Fatal("reseed failed")
		}
		pair := platformInKV(t)
		if pair == nil {
			t.Fatal("KV not re-seeded")
		}
		switch {
		case string(pair.Value) == oldPlatform && pair.Flags == 3, string(pair.Value) == newPlatform && pair.Flags == 7:
		default:
			t.Errorf("re-seeded version %d with text\n%s\nwant each text under its own version (3 old, 7 new)", pair.Flags, pair.Value)
		}
	})

	t.Run("version of another text", func(t *testing.T) {
		if err := consul.Reset(kvschema.Prefix); err != nil {
			t.Fatal(err)
		}
		m, _ := newTestMirror(t, consul)
		writeMirrorFile(t, m, "platform", oldPlatform)
		writeMirrorFile(t, m, "platform.version", "7 sha256:"+sha(newPlatform)+"\n")
		if err := m.load("", newPlatform); err != nil {
			t.Fatal(err)
		}
		m.reseed(ctx)
		if pair := platformInKV(t); pair != nil && pair.Flags == 7 {
			t.Errorf("re-seeded version 7 with a text not stored under it:\n%s", pair.Value)
		}
	})
}

// A mirrored inventory that cannot be read is reported, never taken as an
// empty one: no re-seed from it (an empty inventory makes every machine
// look like an orphan), until a good copy from KV replaces it.
func TestHostileCorruptInventoryMirrorIsReported(t *testing.T) {
	consul := startTestConsul(t)
	ctx := context.Background()
	m, logs := newTestMirror(t, consul)
	if err := m.load("", oldPlatform); err != nil {
		t.Fatal(err)
	}
	writeMirrorFile(t, m, "inventory.json", "{\n  \"server-1\": {\"id\": \"server-1\",\n  \"server-2\": \x00\n")
	writeMirrorFile(t, m, "inventory.version", "2 40\n")

	if recs := m.records(); recs != nil {
		t.Errorf("records of a corrupt mirror: got %v want none", recs)
	}
	got := m.MirrorError()
	if !strings.Contains(got, "mirror/inventory.json:3") {
		t.Errorf("mirror error: got %q want the file and line", got)
	}
	if v := unreadable(m, "inventory"); v != 1 {
		t.Errorf("mirror_unreadable{what=inventory}: got %v want 1", v)
	}
	if !strings.Contains(logs.String(), "[ERROR]") || !strings.Contains(logs.String(), "inventory.json") {
		t.Errorf("log: got %q want an error naming the file", logs.String())
	}

	if m.reseed(ctx) {
		t.Error("reseed reported a description in KV")
	}
	if pair, _, err := consul.Client.KV().Get(kvschema.Platform, nil); err != nil || pair != nil {
		t.Errorf("KV re-seeded from a node whose inventory mirror is corrupt: %v %v", pair, err)
	}
	if e, err := m.store.Epoch(ctx); err != nil || e != 0 {
		t.Errorf("epoch after a refused re-seed: got %d (%v) want none", e, err)
	}

	// A good copy from KV replaces the corrupt one and clears the error.
	b := []byte(`{"server-1": {"id": "server-1"}}`)
	if err := m.writeInventory(b, inventoryVersion{Epoch: 2, Index: 50}); err != nil {
		t.Fatal(err)
	}
	if recs := m.records(); recs["server-1"].ID != "server-1" {
		t.Errorf("records after a good copy: got %v", recs)
	}
	if v := m.inventoryVersion(); v != (inventoryVersion{Epoch: 2, Index: 50}) {
		t.Errorf("inventory version: got %v want 2.50", v)
	}
	if e := m.MirrorError(); e != "" || unreadable(m, "inventory") != 0 {
		t.Errorf("mirror error after a good copy: got %q (gauge %v) want none", e, unreadable(m, "inventory"))
	}
}

// The overlay address is the node's own, configured by its mesh: a loaded
// machine may take longer than any fixed wait to make it usable, and the
// agent waits rather than exit (TestMeshJoinByHand lost its dial-only
// machine under load). Needs root to add an address to lo.
func TestHostileSlowOverlayAddress(t *testing.T) {
	if testing.Short() {
		t.Skip("waits 11 s for an address")
	}
	addr := fmt.Sprintf("fd00:5eed::%x", 0x100+rand.IntN(0xfeff))
	if out, err := exec.Command("ip", "-6", "addr", "add", addr+"/128", "dev", "lo").CombinedOutput(); err != nil {
		t.Skipf("cannot add an address to lo (%v: %s)", err, out)
	}
	_ = exec.Command("ip", "-6", "addr", "del", addr+"/128", "dev", "lo").Run()
	t.Cleanup(func() { _ = exec.Command("ip", "-6", "addr", "del", addr+"/128", "dev", "lo").Run() })
	cfg := nodeconfig.Config{BindAddr: addr, Mesh: &nodeconfig.Mesh{}}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		lns, err := listen(ctx, cfg, listenHosts(cfg), 0, "http_port", hclog.NewNullLogger())
		for _, ln := range lns {
			ln.Close()
		}
		done <- err
	}()
	select {
	case err := <-done:
		t.Fatalf("listen returned before the address existed: %v", err)
	case <-time.After(11 * time.Second):
	}
	if out, err := exec.Command("ip", "-6", "addr", "add", addr+"/128", "dev", "lo").CombinedOutput(); err != nil {
		t.Fatalf("add %s: %v: %s", addr, err, out)
	}
	if err := <-done; err != nil {
		t.Fatalf("listen on the overlay address once it exists: %v", err)
	}
}

// TestScaleRetryJoinNamesServers: a restarted node looks for the cluster
// at the Consul servers it last knew, not at every member: a hundred
// workers do not make every agent's retry_join a hundred long.
func TestScaleRetryJoinNamesServers(t *testing.T) {
	m, _ := newTestMirror(t, nil)
	recs := map[string]reconcile.Record{
		"server-1": {ID: "server-1", Type: "server", Address: "10.0.0.1", Seed: true},
		"server-2": {ID: "server-2", Type: "server", Address: "10.0.0.2"},
		"server-3": {ID: "server-3", Type: "server", Address: "10.0.0.3"},
	}
	for i := 0; i < 100; i++ {
		id := fmt.Sprintf("worker-%d", i)
		recs[id] = reconcile.Record{ID: id, Type: "worker", Address: fmt.Sprintf("10.0.1.%d", i)}
	}
	b, err := json.Marshal(recs)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.writeInventory(b, inventoryVersion{Epoch: 1, Index: 7}); err != nil {
		t.Fatal(err)
	}
	// Before a description is known, every member is a way in.
	if got := len(m.peers()); got != 102 {
		t.Errorf("peers without a description: %d, want every other member (102)", got)
	}
	p, err := rules.Parse("p.hcl", []byte(`
machine "server" {
  min = 3
  consul_server = true
}
machine "worker" {
  min = 100
}`), m.parse)
	if err != nil {
		t.Fatal(err)
	}
	m.setPlatform(p, 1)
	if got, want := strings.Join(m.peers(), ","), "10.0.0.2,10.0.0.3"; got != want {
		t.Errorf("peers: got %s want the other servers %s", got, want)
	}
}
