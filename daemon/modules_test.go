package daemon

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/raptiformica/raptiformica/internal/kvschema"
	"github.com/raptiformica/raptiformica/rules"
)

const testModule = `{"raptiformica_api_version": "0.1",
 "platform": {"default": {"hooks": {"cluster_change": {"rejoin": {"command": "true"}}}}}}`

// The mirror gives out the description with the cluster's modules applied;
// a change of modules in KV reaches it, is mirrored on disk, and a node
// whose KV lost them writes its copy back.
func TestModulesReachTheMirror(t *testing.T) {
	consul := startTestConsul(t)
	m, logs := newTestMirror(t, consul)
	p, err := rules.Parse("p.hcl", []byte(newPlatform), m.parse)
	if err != nil {
		t.Fatal(err)
	}
	m.setPlatform(p, 1)
	changed := make(chan struct{}, 10)
	w := &moduleWatch{path: filepath.Join(m.dir, modulesFile), store: m.store, parse: m.parse, log: m.log, changed: func() { changed <- struct{}{} }}
	m.overlay = w.apply
	if got := m.Platform(); got != p {
		t.Fatalf("without modules: got another platform than the description")
	}

	mod, err := rules.ParseModule("rejoin", "rejoin.json", []byte(testModule))
	if err != nil {
		t.Fatal(err)
	}
	stored := rules.EncodeModules([]*rules.Module{mod})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = w.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	if ok, err := m.store.CASModules(ctx, stored, 0); err != nil || !ok {
		t.Fatalf("store modules: %v %v", ok, err)
	}
	select {
	case <-changed:
	case <-time.After(10 * time.Second):
		t.Fatalf("no change seen; log:\n%s", logs)
	}
	eff := m.Platform()
	if hs := eff.HooksFor("cluster_change"); len(hs) != 1 || hs[0].Command[2] != "true" {
		t.Errorf("effective hooks: got %+v, want the module's", eff.Hooks)
	}
	if m.Platform() != eff {
		t.Errorf("the effective platform is merged again on every call")
	}
	if len(p.Hooks) != 0 {
		t.Errorf("the description itself changed: %+v", p.Hooks)
	}
	if b, err := os.ReadFile(w.path); err != nil || string(b) != string(stored) {
		t.Errorf("modules mirror: got %q, %v", b, err)
	}

	// A KV that lost its modules gets this node's back.
	if _, err := consul.Client.KV().Delete(kvschema.Modules, nil); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		pair, _, err := m.store.Modules(ctx, nil)
		if err == nil && pair != nil && string(pair.Value) == string(stored) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("modules not re-seeded: %v %v; log:\n%s", pair, err, logs)
		}
		time.Sleep(100 * time.Millisecond)
	}

	// A restarted node runs with the mirrored modules before KV answers.
	again := &moduleWatch{path: w.path, store: m.store, parse: m.parse, log: m.log}
	again.load()
	if got := again.apply(p); len(got.Hooks) != 1 {
		t.Errorf("after a restart: hooks %+v, want the mirrored module's", got.Hooks)
	}
	// Modules stored by other means that do not load are ignored.
	if _, err := consul.Client.KV().Put(&api.KVPair{Key: kvschema.Modules, Value: []byte(`[{"name":"x","file":"x.json","source":"{}"}]`)}, nil); err != nil {
		t.Fatal(err)
	}
	deadline = time.Now().Add(10 * time.Second)
	for !strings.Contains(logs.String(), "modules in KV rejected") {
		if time.Now().After(deadline) {
			t.Fatalf("bad modules not reported; log:\n%s", logs)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if hs := m.Platform().HooksFor("cluster_change"); len(hs) != 1 {
		t.Errorf("after bad modules: got %+v, want the last good ones kept", hs)
	}
}
