package daemon

import (
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/hashicorp/go-hclog"

	"github.com/raptiformica/raptiformica/internal/clock/clocktest"
	"github.com/raptiformica/raptiformica/internal/endpoint"
	"github.com/raptiformica/raptiformica/internal/kvschema"
	"github.com/raptiformica/raptiformica/internal/state"
	"github.com/raptiformica/raptiformica/mesh"
	"github.com/raptiformica/raptiformica/mesh/peering"
	"github.com/raptiformica/raptiformica/reconcile"
	"github.com/raptiformica/raptiformica/rules"
)

// meshEntries are n mesh entries, the first servers of them servers, each
// listening on one endpoint 10.0.x.y:9651.
func meshEntries(n, servers int) map[string]state.MeshEntry {
	out := map[string]state.MeshEntry{}
	for i := range n {
		id := fmt.Sprintf("m%03d", i)
		key, addr := meshKey(id)
		out[id] = state.MeshEntry{MachineID: id, Key: key, Address: addr, Server: i < servers,
			Endpoints: []string{fmt.Sprintf("10.0.%d.%d:9651", i/250, i%250+1)}}
	}
	return out
}

// meshKey is a public key made from seed, in hex, and the overlay address
// it gives: an entry whose address is not its key's is refused.
func meshKey(seed string) (key, addr string) {
	s := sha256.Sum256([]byte(seed))
	pub := ed25519.NewKeyFromSeed(s[:]).Public().(ed25519.PublicKey)
	key = hex.EncodeToString(pub)
	a, err := mesh.AddressOf(key)
	if err != nil {
		panic(err)
	}
	return key, a.String()
}

func putMeshEntries(t *testing.T, store *kvschema.Store, nodes map[string]state.MeshEntry) {
	t.Helper()
	for _, n := range nodes {
		if err := state.MeshEntries(store).Set(context.Background(), n); err != nil {
			t.Fatal(err)
		}
	}
}

// A node dials the endpoints of the members the rule chooses, no others.
func TestScaleChosenEndpoints(t *testing.T) {
	nodes := meshEntries(40, 3)
	self := peering.Member{ID: "m017", Listens: true}
	got := chosenEndpoints(self, nodes, 8)
	var want []string
	for _, id := range peering.Choose(self, mesh.Members(nodes), 8) {
		want = append(want, nodes[id].Endpoints...)
	}
	want = endpoint.HostPorts(want)
	if !slices.Equal(got, want) || len(got) == 0 || len(got) > 8 {
		t.Errorf("got %v, want %v (at most 8)", got, want)
	}
	// Every member's choice, as `members` shows it, is the rule's.
	links := mesh.Links(nodes, 8)
	if len(links) != 40 || !slices.Equal(links["m017"], peering.Choose(self, mesh.Members(nodes), 8)) {
		t.Errorf("MeshLinks disagrees with the rule for m017: %v", links["m017"])
	}
}

// TestScaleMeshReadsHaveAGap: the mesh's folder is read when it changes,
// at most once per meshReadGap: a burst of writes costs one more read,
// which sees them all.
func TestScaleMeshReadsHaveAGap(t *testing.T) {
	consul := startTestConsul(t)
	store := kvschema.New(consul.Client)
	putMeshEntries(t, store, meshEntries(1, 1))
	fake := clocktest.NewFake(time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC))
	s := &meshSync{store: store, clock: fake, log: hclog.NewNullLogger()}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	reads := make(chan meshRead, 1)
	done := make(chan struct{})
	go func() { defer close(done); s.watch(ctx, reads) }()
	defer func() { cancel(); <-done }()

	take := func(what string) meshRead {
		t.Helper()
		select {
		case r := <-reads:
			return r
		case <-time.After(10 * time.Second):
			t.Fatalf("no read %s", what)
		}
		return meshRead{}
	}
	if r := take("at start"); len(r.nodes) != 1 {
		t.Fatalf("first read: %d entries, want 1", len(r.nodes))
	}
	waitFor(t, 10*time.Second, "the watch to wait out its gap", func() bool { return fake.Waiters() == 1 })
	putMeshEntries(t, store, meshEntries(5, 1))
	select {
	case r := <-reads:
		t.Fatalf("a read within the gap after the last (%d entries)", len(r.nodes))
	case <-time.After(500 * time.Millisecond):
	}
	fake.Advance(meshReadGap)
	if r := take("after the gap"); len(r.nodes) != 5 {
		t.Fatalf("read after the gap: %d entries, want the burst's 5", len(r.nodes))
	}
	// Without a change, the next read blocks in Consul: nothing comes.
	waitFor(t, 10*time.Second, "the watch to wait out its gap", func() bool { return fake.Waiters() == 1 })
	fake.Advance(meshReadGap)
	select {
	case r := <-reads:
		t.Fatalf("a read without a change (%d entries)", len(r.nodes))
	case <-time.After(500 * time.Millisecond):
	}
}

// The leader's first entry for a machine is written once, and never over
// the entry the machine wrote itself.
func TestScaleFirstEntryNeverReplacesOwn(t *testing.T) {
	consul := startTestConsul(t)
	store := kvschema.New(consul.Client)
	ctx := context.Background()
	key, addr := meshKey("m1")
	own := state.MeshEntry{MachineID: "m1", Key: key, Address: addr, Endpoints: []string{"10.0.0.1:9651"}}
	putMeshEntries(t, store, map[string]state.MeshEntry{"m1": own})
	p := &rules.Platform{Machines: map[string]rules.MachineType{"s": {Name: "s", ConsulServer: true}}}
	s := &meshSync{store: store, platform: func() *rules.Platform { return p }, log: hclog.NewNullLogger()}
	recs := map[string]reconcile.Record{
		"m1": {ID: "m1", Type: "w", State: reconcile.StateJoined, Address: "10.0.0.1"},
		"m2": {ID: "m2", Type: "s", State: reconcile.StateJoining, Address: "10.0.0.2"},
	}
	// As a stale read that has not seen m1's entry yet would.
	s.firstEntries(ctx, map[string]state.MeshEntry{}, recs, 9651)
	got, err := mesh.ReadEntries(ctx, store)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]state.MeshEntry{"m1": own, "m2": {MachineID: "m2", Endpoints: []string{"10.0.0.2:9651"}, Server: true}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("entries (-want +got):\n%s", diff)
	}
}
