package daemon

import (
	"context"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"

	"github.com/raptiformica/raptiformica/internal/kvschema"
	"github.com/raptiformica/raptiformica/internal/testconsul"
	"github.com/raptiformica/raptiformica/rules"
)

func TestScaleJudgeRead(t *testing.T) {
	for _, tc := range []struct {
		name         string
		applied, got uint64
		consistent   bool
		want         readVerdict
	}{
		{"the key as applied", 50, 50, false, readSame},
		{"the key as applied, from the leader", 50, 50, true, readSame},
		{"ahead, stale", 50, 60, false, readTake},
		{"behind, stale: ask the leader", 50, 30, false, readConfirm},
		{"missing, stale: ask the leader", 50, 0, false, readConfirm},
		{"nothing applied, stale: ask the leader", 0, 30, false, readConfirm},
		{"behind, from the leader: the KV went back", 50, 30, true, readTake},
		{"ahead, from the leader", 50, 60, true, readTake},
		{"missing, from the leader", 50, 0, true, readMissing},
		{"nothing applied, from the leader", 0, 30, true, readTake},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := judgeRead(tc.applied, tc.got, tc.consistent); got != tc.want {
				t.Errorf("judgeRead(%d, %d, %v): got %v want %v", tc.applied, tc.got, tc.consistent, got, tc.want)
			}
		})
	}
}

// fakeKey answers a forwardKey's reads as two kinds of server would: a
// stale read from the one behind, a consistent one from the leader. Pure
// logic under test: the real-Consul tests are below.
type fakeKey struct {
	stale, leader *api.KVPair // nil: no key
	asked         []string    // "stale" or "consistent", per read
}

func (f *fakeKey) get(_ context.Context, q *api.QueryOptions) (*api.KVPair, *api.QueryMeta, error) {
	p := f.leader
	kind := "consistent"
	if q.AllowStale {
		p, kind = f.stale, "stale"
	}
	f.asked = append(f.asked, kind)
	idx := uint64(99) // a missing key answers with the server's table index
	if p != nil {
		idx = p.ModifyIndex
	}
	return p, &api.QueryMeta{LastIndex: idx}, nil
}

func pairAt(index uint64, text string) *api.KVPair {
	return &api.KVPair{Key: kvschema.Platform, ModifyIndex: index, Value: []byte(text)}
}

// TestScaleStaleReadBehindIsPassedOver: a watch that applied the key at 50
// never applies an older answer a server behind gives (after a failed
// query, or a wait that ended), nor re-seeds on its "no key"; but when the
// leader says the KV went back (a recovery on a fresh Consul), it takes
// the KV's rather than holding on to the old high index.
func TestScaleStaleReadBehindIsPassedOver(t *testing.T) {
	newest := pairAt(50, "v2")
	for _, tc := range []struct {
		name          string
		stale, leader *api.KVPair
		wantTaken     string // "" for none
		wantMissing   bool
		wantIndex     uint64
		wantApplied   uint64
	}{
		{"behind: passed over", pairAt(30, "v1"), newest, "", false, 50, 50},
		{"no key on a server behind: passed over, no re-seed", nil, newest, "", false, 50, 50},
		{"behind, and the leader is ahead of both: the leader's", pairAt(30, "v1"), pairAt(70, "v3"), "v3", false, 70, 70},
		{"the KV went back: taken", pairAt(12, "seeded"), pairAt(12, "seeded"), "seeded", false, 12, 12},
		{"the KV lost the key: re-seeded", nil, nil, "", true, 99, 0},
		{"ahead: taken without asking the leader", pairAt(60, "v3"), nil, "v3", false, 60, 60},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := &fakeKey{leader: newest}
			k := &forwardKey{what: "test", get: f.get, log: hclog.NewNullLogger()}
			var taken []string
			take := func(p *api.KVPair) { taken = append(taken, string(p.Value)) }
			missing := false
			ctx := context.Background()
			// The first read is the leader's: nothing to compare with.
			if _, changed, err := k.read(ctx, &api.QueryOptions{}, take, func() { missing = true }); err != nil || !changed {
				t.Fatalf("first read: changed %v, %v", changed, err)
			}
			if f.asked[0] != "consistent" || len(taken) != 1 || taken[0] != "v2" {
				t.Fatalf("first read: asked %v, took %v; want the leader's v2", f.asked, taken)
			}
			taken, f.asked = nil, nil
			f.stale, f.leader = tc.stale, tc.leader
			index, _, err := k.read(ctx, &api.QueryOptions{}, take, func() { missing = true })
			if err != nil {
				t.Fatal(err)
			}
			if f.asked[0] != "stale" {
				t.Errorf("the read after one applied: asked %v, want a stale read first", f.asked)
			}
			if got := strings.Join(taken, ","); got != tc.wantTaken {
				t.Errorf("taken: got %q want %q", got, tc.wantTaken)
			}
			if missing != tc.wantMissing {
				t.Errorf("re-seeded: got %v want %v", missing, tc.wantMissing)
			}
			if index != tc.wantIndex || k.applied != tc.wantApplied {
				t.Errorf("index for the loop %d, applied %d: want %d, %d", index, k.applied, tc.wantIndex, tc.wantApplied)
			}
		})
	}
}

// The leader reads consistently: it writes intents from what it plans with.
func TestScaleLeaderReadsConsistent(t *testing.T) {
	f := &fakeKey{leader: pairAt(50, "v2"), stale: pairAt(50, "v2")}
	leading := false
	k := &forwardKey{what: "test", get: f.get, leading: func() bool { return leading }, log: hclog.NewNullLogger()}
	ctx := context.Background()
	for range 2 {
		if _, _, err := k.read(ctx, &api.QueryOptions{}, func(*api.KVPair) {}, func() {}); err != nil {
			t.Fatal(err)
		}
	}
	leading = true
	if _, _, err := k.read(ctx, &api.QueryOptions{}, func(*api.KVPair) {}, func() {}); err != nil {
		t.Fatal(err)
	}
	if got, want := strings.Join(f.asked, ","), "consistent,stale,consistent"; got != want {
		t.Errorf("reads: got %s want %s", got, want)
	}
}

// kvRecorder is a reverse proxy in front of a real Consul that keeps the
// query string of every read of the watched keys, and whose Consul can be
// replaced (a cluster re-created on a fresh Consul).
type kvRecorder struct {
	target atomic.Pointer[url.URL]
	mu     sync.Mutex          // guards asked
	asked  map[string][]string // by key: every read's query
}

func newKVRecorder(t *testing.T, c *testconsul.Server) (*kvRecorder, *kvschema.Store) {
	t.Helper()
	r := &kvRecorder{asked: map[string][]string{}}
	r.point(c)
	proxy := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) { pr.SetURL(r.target.Load()) },
		// Blocking queries answer late: flush as they come.
		FlushInterval: -1,
		// A Consul stopped under a waiting query is part of a test.
		ErrorLog: log.New(io.Discard, "", 0),
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if key, ok := strings.CutPrefix(req.URL.Path, "/v1/kv/"); ok && req.Method == http.MethodGet {
			r.mu.Lock()
			r.asked[key] = append(r.asked[key], req.URL.RawQuery)
			r.mu.Unlock()
		}
		proxy.ServeHTTP(w, req)
	}))
	t.Cleanup(srv.Close)
	cfg := api.DefaultConfig()
	cfg.Address, cfg.Scheme, cfg.Token = strings.TrimPrefix(srv.URL, "http://"), "http", ""
	client, err := api.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return r, kvschema.New(client)
}

func (r *kvRecorder) point(c *testconsul.Server) {
	r.target.Store(&url.URL{Scheme: "http", Host: c.Addr})
}

// reads returns the queries of the reads of key so far.
func (r *kvRecorder) reads(key string) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.asked[key]...)
}

// blocking returns, of qs, the blocking queries (an index above 0): the
// reads that wait on a server.
func blocking(qs []string) []url.Values {
	var out []url.Values
	for _, q := range qs {
		v, _ := url.ParseQuery(q)
		if i := v.Get("index"); i != "" && i != "0" {
			out = append(out, v)
		}
	}
	return out
}

// TestScaleDescriptionAndModulesWatchesReadStale: once a node has applied
// the description and the modules, its watches wait on stale queries (any
// server answers; a consistent one is held on the Raft leader), through
// the agent's own Consul API calls to a real Consul; a node that leads
// reads them consistently.
func TestScaleDescriptionAndModulesWatchesReadStale(t *testing.T) {
	consul := startTestConsul(t)
	if err := consul.Reset(kvschema.Prefix); err != nil {
		t.Fatal(err)
	}
	rec, store := newKVRecorder(t, consul)
	m, logs := newTestMirror(t, consul)
	m.store = store
	var lead atomic.Bool
	m.leading = lead.Load
	w := &moduleWatch{path: m.path(modulesFile), store: store, parse: m.parse, log: m.log, leading: lead.Load}
	m.overlay = w.apply
	direct := kvschema.New(consul.Client)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if _, err := direct.PutPlatform(ctx, []byte(newPlatform)); err != nil {
		t.Fatal(err)
	}
	if ok, err := direct.CASModules(ctx, []byte("[]"), 0); err != nil || !ok {
		t.Fatalf("store modules: %v %v", ok, err)
	}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); m.watchPlatform(ctx) }()
	go func() { defer wg.Done(); _ = w.Run(ctx) }()
	defer func() { cancel(); wg.Wait() }()

	mod, err := rules.ParseModule("rejoin", "rejoin.json", []byte(testModule))
	if err != nil {
		t.Fatal(err)
	}
	apply := func(n int) {
		t.Helper()
		src := fmt.Sprintf("%s# apply %d\n", newPlatform, n)
		if _, err := direct.PutPlatform(ctx, []byte(src)); err != nil {
			t.Fatal(err)
		}
		cur, _, err := direct.Modules(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		mod.Name = fmt.Sprintf("rejoin-%d", n)
		if ok, err := direct.CASModules(ctx, rules.EncodeModules([]*rules.Module{mod}), cur.ModifyIndex); err != nil || !ok {
			t.Fatalf("store modules: %v %v", ok, err)
		}
		waitFor(t, 10*time.Second, fmt.Sprintf("apply %d to reach the node; log:\n%s", n, logs), func() bool {
			p := m.Platform()
			w.mu.Lock()
			defer w.mu.Unlock()
			return p != nil && strings.HasSuffix(string(p.Source), fmt.Sprintf("# apply %d\n", n)) &&
				len(w.mods) == 1 && w.mods[0].Name == mod.Name
		})
	}
	apply(1)
	apply(2)
	for _, key := range []string{kvschema.Platform, kvschema.Modules} {
		qs := rec.reads(key)
		if len(qs) == 0 {
			t.Fatalf("%s: no read went through the recorder", key)
		}
		if v, _ := url.ParseQuery(qs[0]); !v.Has("consistent") {
			t.Errorf("%s: the first read (nothing applied yet) is %q, want a consistent one", key, qs[0])
		}
		waits := blocking(qs)
		if len(waits) < 2 {
			t.Fatalf("%s: %d blocking queries (%q), want one per apply", key, len(waits), qs)
		}
		for _, v := range waits {
			if !v.Has("stale") || v.Has("consistent") {
				t.Errorf("%s: a blocking query %q: want it stale", key, v.Encode())
			}
		}
	}

	// Leading: the queries after the one waiting are consistent.
	lead.Store(true)
	apply(3)
	apply(4)
	for _, key := range []string{kvschema.Platform, kvschema.Modules} {
		waits := blocking(rec.reads(key))
		last := waits[len(waits)-1]
		if last.Has("stale") || !last.Has("consistent") {
			t.Errorf("%s: the leader's last blocking query %q: want it consistent", key, last.Encode())
		}
	}
}

// TestScaleReseededKVIsTaken: a node that applied the description at a
// high index, whose cluster is re-created on a fresh Consul (indexes from
// 1 again) and re-seeded there, takes the new KV's description: the stale
// read behind its index is confirmed by the leader, not held against it.
func TestScaleReseededKVIsTaken(t *testing.T) {
	old := startTestConsul(t)
	if err := old.Reset(kvschema.Prefix); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// The old cluster's description sits far above where a fresh
	// Consul's indexes start.
	for i := range 100 {
		if _, err := old.Client.KV().Put(&api.KVPair{Key: kvschema.Prefix + "test-filler", Value: []byte{byte(i)}}, nil); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := kvschema.New(old.Client).PutPlatform(ctx, []byte(newPlatform)); err != nil {
		t.Fatal(err)
	}
	rec, store := newKVRecorder(t, old)
	m, logs := newTestMirror(t, old)
	m.store = store
	done := make(chan struct{})
	go func() { defer close(done); m.watchPlatform(ctx) }()
	defer func() { cancel(); <-done }()
	waitFor(t, 10*time.Second, "the old cluster's description", func() bool {
		p := m.Platform()
		return p != nil && string(p.Source) == newPlatform
	})
	applied := m.platformKey().appliedIndex()
	if applied < 100 {
		t.Fatalf("applied at index %d, want above the filler's 100", applied)
	}

	fresh := startTestConsul(t)
	seeded := newPlatform + "# re-seeded\n"
	if ok, err := kvschema.New(fresh.Client).SeedPlatform(ctx, []byte(seeded), 1); err != nil || !ok {
		t.Fatalf("seed the fresh KV: %v %v", ok, err)
	}
	pair, _, err := fresh.Client.KV().Get(kvschema.Platform, nil)
	if err != nil || pair == nil || pair.ModifyIndex >= applied {
		t.Fatalf("the fresh KV's description at %v (%v), want below %d", pair, err, applied)
	}
	// The old cluster goes (its blocking query fails) and the node's
	// Consul now talks to the fresh one.
	rec.point(fresh)
	old.Stop()
	waitFor(t, 20*time.Second, "the re-seeded description to be taken; log:\n"+logs.String(), func() bool {
		p := m.Platform()
		return p != nil && string(p.Source) == seeded
	})
	if got := m.platformKey().appliedIndex(); got != pair.ModifyIndex {
		t.Errorf("applied index: got %d want the fresh KV's %d", got, pair.ModifyIndex)
	}
	if !strings.Contains(logs.String(), "went back") {
		t.Errorf("the index going back is not logged:\n%s", logs)
	}
}

// appliedIndex is applied, read under its lock while a watch runs.
func (k *forwardKey) appliedIndex() uint64 {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.applied
}
