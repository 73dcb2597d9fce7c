package kvschema

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"sync"
	"testing"

	"github.com/hashicorp/consul/api"

	"github.com/raptiformica/raptiformica/internal/testconsul"
)

var consul *testconsul.Server

func TestMain(m *testing.M) {
	flag.Parse()
	if testing.Short() {
		os.Exit(m.Run())
	}
	var err error
	if consul, err = testconsul.Start(); err != nil {
		fmt.Fprintln(os.Stderr, "start consul:", err)
		os.Exit(1)
	}
	code := m.Run()
	consul.Stop()
	os.Exit(code)
}

func newStore(t *testing.T) *Store {
	t.Helper()
	if testing.Short() {
		t.Skip("integration test: needs Consul (run without -short)")
	}
	if err := consul.Reset(Prefix); err != nil {
		t.Fatal(err)
	}
	return New(consul.Client)
}

// The layout is the contract a new leader resumes from and an older node
// reads: the keys must not move.
func TestLayout(t *testing.T) {
	s := newStore(t)
	ctx := context.Background()
	if _, err := s.PutPlatform(ctx, []byte("cluster = \"x\"\n")); err != nil {
		t.Fatal(err)
	}
	if _, err := s.CASRecord(ctx, "server-1", []byte(`{"id":"server-1"}`), 0); err != nil {
		t.Fatal(err)
	}
	for _, f := range []func() error{
		func() error { return s.InitGossipKey(ctx, "k") },
		func() error { return s.InitMeshSecret(ctx, "s") },
		func() error { return s.InitEpoch(ctx, 3) },
		func() error { return s.PutStatus(ctx, []byte("{}")) },
		func() error { _, err := s.CASModules(ctx, []byte("[]"), 0); return err },
		func() error { return s.Folder(MeshNodes).Put(ctx, "server-1", []byte("{}")) },
		func() error { _, err := s.PoolClaims("pool").CAS(ctx, "[2001:db8::1]:22", []byte("{}"), 0); return err },
		func() error {
			_, err := s.TrustedHostKeys().CAS(ctx, "10.0.0.1:22", []byte("ssh-ed25519 AAAA"), 0)
			return err
		},
	} {
		if err := f(); err != nil {
			t.Fatal(err)
		}
	}
	keys, _, err := consul.Client.KV().Keys(Prefix, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"raptiformica/epoch", "raptiformica/gossip-key", "raptiformica/hostkeys/10.0.0.1:22",
		"raptiformica/inventory/server-1", "raptiformica/mesh/nodes/server-1", "raptiformica/mesh/secret",
		"raptiformica/modules", "raptiformica/platform", "raptiformica/ssh-pool/pool/2001:db8::1:22", "raptiformica/status",
	}
	if fmt.Sprint(keys) != fmt.Sprint(want) {
		t.Errorf("keys: got %v\nwant %v", keys, want)
	}
}

// Two applies at once never share a version, and a re-seed never replaces
// an apply.
func TestPlatformVersions(t *testing.T) {
	s := newStore(t)
	ctx := context.Background()
	var wg sync.WaitGroup
	versions := make(chan uint64, 8)
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			v, err := s.PutPlatform(ctx, []byte(fmt.Sprintf("# %d\n", i)))
			if err != nil {
				t.Error(err)
			}
			versions <- v
		}()
	}
	wg.Wait()
	close(versions)
	seen := map[uint64]bool{}
	for v := range versions {
		if seen[v] {
			t.Errorf("version %d given twice", v)
		}
		seen[v] = true
	}
	if ok, err := s.SeedPlatform(ctx, []byte("# stale mirror\n"), 1); err != nil || ok {
		t.Errorf("re-seed over a stored description: got ok=%v err=%v, want refused", ok, err)
	}
	pair, _, err := s.Platform(ctx, &api.QueryOptions{RequireConsistent: true})
	if err != nil || pair == nil || pair.Flags != 8 {
		t.Fatalf("stored description: got %+v err=%v, want version 8", pair, err)
	}
}

// Set-once values keep the first writer's, and a folder's check-and-set
// loses against a concurrent writer.
func TestSetOnceAndFolders(t *testing.T) {
	s := newStore(t)
	ctx := context.Background()
	for _, k := range []string{"first", "second"} {
		if err := s.InitGossipKey(ctx, k); err != nil {
			t.Fatal(err)
		}
	}
	if k, err := s.GossipKey(ctx); err != nil || k != "first" {
		t.Errorf("gossip key: got %q, %v; want the first writer's", k, err)
	}
	f := s.PoolClaims("pool")
	if ok, err := f.CAS(ctx, "10.0.0.1:22", []byte("a"), 0); err != nil || !ok {
		t.Fatalf("claim: got %v, %v", ok, err)
	}
	if ok, err := f.CAS(ctx, "10.0.0.1:22", []byte("b"), 0); err != nil || ok {
		t.Errorf("second claim of a claimed host: got ok=%v err=%v, want refused", ok, err)
	}
	entries, err := f.List(ctx)
	if err != nil || len(entries) != 1 || string(entries["10.0.0.1:22"]) != "a" {
		t.Errorf("list: got %v, %v", entries, err)
	}
	if err := f.Delete(ctx, "10.0.0.1:22"); err != nil {
		t.Fatal(err)
	}
	if _, index, err := f.Get(ctx, "10.0.0.1:22"); err != nil || index != 0 {
		t.Errorf("after delete: got index %d, err %v; want none", index, err)
	}
	if _, err := s.CASRecord(ctx, "a/b", nil, 0); err == nil {
		t.Error("a machine ID with a slash was accepted as a record key")
	}
}

// A mesh rotation's steps are each taken only from the step before, as
// read: a second rotation, or a step taken twice, is refused; a node's
// watch reads the entries and the secrets in one list.
func TestMeshRotationSteps(t *testing.T) {
	s := newStore(t)
	ctx := context.Background()
	read := func() MeshSecrets {
		t.Helper()
		m, err := s.MeshSecrets(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	if err := s.StartMeshRotation(ctx, read(), "n"); err == nil {
		t.Error("a rotation started on a cluster without a secret")
	}
	if err := s.InitMeshSecret(ctx, "s"); err != nil {
		t.Fatal(err)
	}
	if err := s.Folder(MeshNodes).Put(ctx, "m1", []byte("{}")); err != nil {
		t.Fatal(err)
	}
	rest := read()
	if rest.Current != "s" || rest.Newest() != "s" {
		t.Fatalf("at rest: %+v", rest)
	}
	if err := s.StartMeshRotation(ctx, rest, "n"); err != nil {
		t.Fatal(err)
	}
	if err := s.StartMeshRotation(ctx, rest, "other"); !errors.Is(err, ErrMeshMoved) {
		t.Errorf("a second rotation from the same read: %v, want ErrMeshMoved", err)
	}
	step1 := read()
	if step1.Current != "s" || step1.Next != "n" || step1.Previous != "" || step1.Newest() != "n" {
		t.Fatalf("step 1: %+v", step1)
	}
	if err := s.FinishMeshRotation(ctx, step1); !errors.Is(err, ErrMeshMoved) {
		t.Errorf("finish from step 1: %v, want ErrMeshMoved", err)
	}
	if err := s.PromoteMeshSecret(ctx, step1); err != nil {
		t.Fatal(err)
	}
	if err := s.PromoteMeshSecret(ctx, step1); !errors.Is(err, ErrMeshMoved) {
		t.Errorf("promote twice: %v, want ErrMeshMoved", err)
	}
	nodes, step2, _, err := s.Mesh(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if step2.Current != "n" || step2.Next != "" || step2.Previous != "s" || len(nodes) != 1 || nodes[0].Key != MeshNodes+"m1" {
		t.Fatalf("step 2: %+v, nodes %v", step2, nodes)
	}
	if err := s.FinishMeshRotation(ctx, step2); err != nil {
		t.Fatal(err)
	}
	if done := read(); done.Current != "n" || done.Next != "" || done.Previous != "" {
		t.Fatalf("done: %+v", done)
	}
	// A re-seed puts back what a node runs with, never over what is there.
	if err := s.InitMeshSecrets(ctx, MeshSecrets{Current: "x", Previous: "y"}); err != nil {
		t.Fatal(err)
	}
	if got := read(); got.Current != "n" || got.Previous != "y" {
		t.Errorf("after a re-seed: %+v, want the stored current secret kept", got)
	}
	if err := s.PutGossipKey(ctx, "k2"); err != nil {
		t.Fatal(err)
	}
	if k, err := s.GossipKey(ctx); err != nil || k != "k2" {
		t.Errorf("gossip key after a put: %q, %v", k, err)
	}
}

// TestDeleteWorkTakesOnlyThatMachinesFolder: a removed machine's work
// orders and anchor go; a machine whose ID it prefixes keeps its own.
func TestDeleteWorkTakesOnlyThatMachinesFolder(t *testing.T) {
	s := newStore(t)
	ctx := context.Background()
	for _, host := range []string{"h1", "h10"} {
		for _, key := range []string{".watch", "worker-1"} {
			if ok, err := s.Work(host).CAS(ctx, key, []byte("x"), 0); err != nil || !ok {
				t.Fatalf("write %s/%s: %v %v", host, key, ok, err)
			}
		}
	}
	if err := s.DeleteWork(ctx, "h1"); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.Work("h1").List(ctx); len(got) != 0 {
		t.Errorf("h1's folder after its delete: %v", got)
	}
	if got, _ := s.Work("h10").List(ctx); len(got) != 2 {
		t.Errorf("h10's folder after h1's delete: %v, want its 2 keys", got)
	}
	if err := s.DeleteWork(ctx, ""); err == nil {
		t.Error("an empty machine ID deleted the whole work folder")
	}
}
