package daemon

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"math/rand/v2"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/raptiformica/raptiformica/internal/clock/clocktest"
	"github.com/raptiformica/raptiformica/internal/kvschema"
	"github.com/raptiformica/raptiformica/reconcile"
	"github.com/raptiformica/raptiformica/rules"
)

// putRecords writes records w<from>..w<to-1> of a worker type, with a
// reason.
func putRecords(t *testing.T, inv *reconcile.Inventory, from, to int, reason string) {
	t.Helper()
	ctx := context.Background()
	for i := from; i < to; i++ {
		id := fmt.Sprintf("w%03d", i)
		r, _, err := inv.Get(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		r.ID, r.Type, r.Backend, r.State, r.Address, r.Reason = id, "worker", "local", reconcile.StateJoined, fmt.Sprintf("10.1.%d.%d", i/250, i%250), reason
		if _, err := inv.Put(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
}

// runMirror runs m until the test ends.
func runMirror(t *testing.T, m *mirror) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = m.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
}

// TestScaleClientMirrorHoldsOnlyItsOwnRecord: a client follows its own
// record, not the inventory: an older agent's mirror of every record is
// replaced by its own, changes of other records never reach it, a change of
// its own does, and it keeps the Consul servers' addresses for its
// restarts instead of every member's.
func TestScaleClientMirrorHoldsOnlyItsOwnRecord(t *testing.T) {
	consul := startTestConsul(t)
	m, _ := newTestMirror(t, consul)
	m.self, m.server, m.consul = "w007", false, consul.Client
	putRecords(t, m.inventory, 0, 40, "")
	// What an agent of before kept: every record.
	all, _, err := m.inventory.List(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(all)
	if err := m.writeInventory(b, inventoryVersion{Epoch: 0, Index: 1 << 40}); err != nil {
		t.Fatal(err)
	}
	onlyOwn := func() bool {
		recs := m.records()
		return len(recs) == 1 && recs["w007"].ID == "w007"
	}
	runMirror(t, m)
	waitFor(t, 10*time.Second, "the client's mirror holds its own record alone", onlyOwn)
	if got, want := strings.Join(m.peers(), ","), consul.IP; got != want {
		t.Errorf("peers: got %q want the Consul server %q", got, want)
	}

	// Others change: nothing of it is mirrored.
	putRecords(t, m.inventory, 0, 7, "others changed")
	putRecords(t, m.inventory, 8, 40, "others changed")
	// Its own changes: mirrored, still alone.
	putRecords(t, m.inventory, 7, 8, "own changed")
	waitFor(t, 10*time.Second, "the client's own change is mirrored", func() bool {
		return m.records()["w007"].Reason == "own changed"
	})
	if !onlyOwn() {
		t.Errorf("the client's mirror holds other records: %v", slices.Sorted(maps.Keys(m.records())))
	}
	// A client never re-seeds KV from its mirror: it holds too little.
	if _, err := consul.Client.KV().DeleteTree(kvschema.Prefix, nil); err != nil {
		t.Fatal(err)
	}
	if m.reseed(context.Background()) {
		t.Error("a client reported a re-seeded KV")
	}
	if recs, _, _ := m.inventory.List(context.Background(), nil); len(recs) != 0 {
		t.Errorf("a client re-seeded the inventory: %v", slices.Sorted(maps.Keys(recs)))
	}
}

// TestScaleServerMirrorFromSnapshot: the leader writes the inventory as a
// snapshot in chunks; a server's mirror follows it and holds every record,
// and a re-seed from it carries them all; changes are snapshotted at most once per interval,
// the last one included; older versions' chunks are deleted; and a stale
// read behind the mirror is passed over without a word, unlike a KV of an
// older epoch.
func TestScaleServerMirrorFromSnapshot(t *testing.T) {
	consul := startTestConsul(t)
	m, logs := newTestMirror(t, consul)
	putRecords(t, m.inventory, 0, 300, "")
	fake := clocktest.NewFake(time.Now())
	s := &snapshotter{store: m.store, inventory: m.inventory, every: snapshotEvery, chunkSize: 1 << 10, clock: fake, log: hclog.NewNullLogger()}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = s.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	runMirror(t, m)

	head := func() snapshotHead {
		t.Helper()
		pair, _, err := m.store.InventorySnapshotHead(context.Background(), nil)
		if err != nil || pair == nil {
			t.Fatalf("snapshot head: %v %v", pair, err)
		}
		var h snapshotHead
		if err := json.Unmarshal(pair.Value, &h); err != nil {
			t.Fatal(err)
		}
		return h
	}
	waitFor(t, 10*time.Second, "the server mirrors 300 records", func() bool { return len(m.records()) == 300 })
	first := head()
	if first.Chunks < 2 || first.Records != 300 {
		t.Errorf("head: %+v, want 300 records over several chunks of 1 KiB", first)
	}
	if v := m.inventoryVersion(); v != first.version() {
		t.Errorf("mirror version %v, want the snapshot's %v", v, first.version())
	}
	kv, _, err := m.inventory.List(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	for id, r := range kv {
		r.Index = 0
		if got := m.records()[id]; got.ID != r.ID || got.Address != r.Address || !got.Updated.Equal(r.Updated) {
			t.Errorf("mirrored %s: got %+v want %+v", id, got, r)
		}
	}

	// A burst of changes waits for the interval, then lands whole.
	for fake.Waiters() == 0 {
		time.Sleep(10 * time.Millisecond)
	}
	putRecords(t, m.inventory, 300, 320, "")
	putRecords(t, m.inventory, 0, 10, "changed in the burst")
	time.Sleep(time.Second)
	if h := head(); h != first {
		t.Errorf("a snapshot was written within the interval: %+v after %+v", h, first)
	}
	fake.Advance(snapshotEvery)
	waitFor(t, 10*time.Second, "the burst is mirrored", func() bool {
		recs := m.records()
		return len(recs) == 320 && recs["w009"].Reason == "changed in the burst"
	})
	folders, _, err := consul.Client.KV().Keys(kvschema.InventorySnapshotChunks, "/", nil)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{kvschema.InventorySnapshotChunks + head().version().String() + "/"}; !slices.Equal(folders, want) {
		t.Errorf("snapshot chunk folders: got %v want only the head's %v", folders, want)
	}

	// The last one standing re-seeds a lost KV from this mirror: every
	// record comes back.
	p, err := rules.Parse("p.hcl", []byte(onePlatform), m.parse)
	if err != nil {
		t.Fatal(err)
	}
	m.setPlatform(p, 1)
	if _, err := consul.Client.KV().DeleteTree(kvschema.Prefix, nil); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, "the KV is re-seeded with every record", func() bool {
		m.reseed(context.Background())
		recs, _, err := m.inventory.List(context.Background(), nil)
		return err == nil && len(recs) == 320 && recs["w009"].Reason == "changed in the burst"
	})

	// Reads behind the mirror: same epoch, quietly kept; older epoch, said.
	mine := m.inventoryVersion()
	m.keepInventory(map[string]reconcile.Record{"w000": {ID: "w000"}}, inventoryVersion{Epoch: mine.Epoch, Index: mine.Index - 1})
	if n := testutil.ToFloat64(m.metrics.MirrorKeptNewer.WithLabelValues("inventory")); n != 0 || strings.Contains(logs.String(), "older inventory") {
		t.Errorf("a stale read was reported as an older history (kept_newer %v):\n%s", n, logs)
	}
	if err := m.writeInventory([]byte(`{}`), inventoryVersion{Epoch: mine.Epoch + 1, Index: 1}); err != nil {
		t.Fatal(err)
	}
	m.keepInventory(map[string]reconcile.Record{"w000": {ID: "w000"}}, mine)
	if n := testutil.ToFloat64(m.metrics.MirrorKeptNewer.WithLabelValues("inventory")); n != 1 {
		t.Errorf("an inventory of an older epoch: kept_newer %v, want 1", n)
	}
}

// TestScaleSnapshotChunks: a snapshot too large for one value is split,
// and what is split comes back whole; chunks of another version are
// refused by the checksum.
func TestScaleSnapshotChunks(t *testing.T) {
	// As real records go: random IDs and overlay addresses, times to the
	// nanosecond, a reason.
	rnd := rand.New(rand.NewPCG(1, 2))
	recs := map[string]reconcile.Record{}
	var last string
	for range 5000 {
		id := fmt.Sprintf("worker-%08x", rnd.Uint32())
		last = id
		at := time.Unix(1.7e9+rnd.Int64N(1e7), rnd.Int64N(1e9)).UTC()
		recs[id] = reconcile.Record{ID: id, Type: "worker", Backend: "docker", State: reconcile.StateJoined,
			Address: fmt.Sprintf("200:%x:%x:%x::%x", rnd.Uint32N(1<<16), rnd.Uint32N(1<<16), rnd.Uint32N(1<<16), rnd.Uint32N(1<<16)),
			Created: at, Updated: at.Add(time.Duration(rnd.Int64N(1e11))), Reason: "member is alive"}
	}
	head, chunks, err := encodeSnapshot(recs, inventoryVersion{Epoch: 2, Index: 99}, snapshotChunk)
	if err != nil {
		t.Fatal(err)
	}
	total := 0
	for _, c := range chunks {
		total += len(c)
		if len(c) > kvschema.MaxValueBytes {
			t.Errorf("chunk of %d bytes, over Consul's %d", len(c), kvschema.MaxValueBytes)
		}
	}
	t.Logf("5,000 records: %d bytes gzipped, %d chunks (%d bytes a record)", total, len(chunks), total/5000)
	got, err := decodeSnapshot(head, chunks)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(recs) || !reflect.DeepEqual(got[last], recs[last]) {
		t.Errorf("decoded %d records, want the 5,000 encoded", len(got))
	}
	_, small, err := encodeSnapshot(recs, inventoryVersion{Epoch: 2, Index: 99}, 4<<10)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := decodeSnapshot(head, small[:len(small)-1]); err == nil || !strings.Contains(err.Error(), "checksum") {
		t.Errorf("chunks that are not the head's: got %v, want a checksum error", err)
	}
}
