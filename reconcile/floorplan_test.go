package reconcile

import (
	"context"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/raptiformica/raptiformica/backends"
	"github.com/raptiformica/raptiformica/internal/kvschema"
	"github.com/raptiformica/raptiformica/internal/state"
)

// TestFloorPlanDestroyForgetsEverything: a removed machine leaves no key
// behind, whichever path removes it (the leader's reap, a destroy by hand:
// both are the executor's remove): its record, its offer, its provisioning
// record, its mesh entry, its own folder of work orders and the order for
// it in its host's folder go, and its credentials are forgotten. Another
// machine's keys stay.
func TestFloorPlanDestroyForgetsEverything(t *testing.T) {
	inv := needConsul(t)
	ctx := context.Background()
	kv := consul.Client.KV()
	if _, err := kv.DeleteTree(kvschema.Work, nil); err != nil {
		t.Fatal(err)
	}
	p := platform(t, oneSecondToProvision)
	const leader = "leader-1"
	r, err := inv.Put(ctx, Record{ID: "gone", Type: "server", Backend: "local", Host: leader, State: StateJoined})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := inv.Put(ctx, Record{ID: "stay", Type: "server", Backend: "local", Host: leader, State: StateJoined}); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"gone", "stay"} {
		for _, key := range []string{
			kvschema.Offers + id, kvschema.Provisioned + id, kvschema.MeshNodes + id,
			kvschema.Work + id + "/.watch", kvschema.Work + id + "/made-by-" + id,
			kvschema.Work + leader + "/" + id,
		} {
			if _, err := kv.Put(&api.KVPair{Key: key, Value: []byte(`{}`)}, nil); err != nil {
				t.Fatal(err)
			}
		}
	}
	var mu sync.Mutex
	var forgotten []string
	ex := newExecutor(inv)
	ex.Self = leader
	ex.Forget = func(_ context.Context, id string) error {
		mu.Lock()
		defer mu.Unlock()
		forgotten = append(forgotten, id)
		return nil
	}
	fb := &fakeBackend{inv: inv}
	obs := Observed{Records: map[string]Record{"gone": r}, Self: leader}
	act := state.Action{Kind: state.KindScaleDown, MachineID: "gone", Type: "server", Backend: "local", Reason: "destroy by hand"}
	if err := ex.Execute(ctx, p, map[string]backends.Backend{"local": fb}, obs, []state.Action{act}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, ex, 30*time.Second)
	if rec := ex.Recent(); len(rec) != 1 || rec[0].Result != "success" {
		t.Fatalf("outcome of the destroy: %+v", rec)
	}
	keys := func(part string) []string {
		var out []string
		for _, prefix := range []string{kvschema.Prefix, kvschema.Work} {
			ks, _, err := kv.Keys(prefix, "", nil)
			if err != nil {
				t.Fatal(err)
			}
			for _, k := range ks {
				if strings.Contains(k, part) {
					out = append(out, k)
				}
			}
		}
		return out
	}
	if left := keys("gone"); len(left) > 0 {
		t.Errorf("keys of the destroyed machine left behind: %q", left)
	}
	if kept := keys("stay"); len(kept) != 7 {
		t.Errorf("keys of the machine that stays: %q, want its record and 6 others", kept)
	}
	mu.Lock()
	defer mu.Unlock()
	if !slices.Equal(forgotten, []string{"gone"}) {
		t.Errorf("credentials forgotten for %q, want the destroyed machine's", forgotten)
	}
}

// TestFloorPlanByHandIsPlacedAsThePassPlaces: a spawn asked for by hand
// goes where a pass would put it (a member offering the backend when the
// leader cannot run it, never a server's credentials to a client), and
// what cannot be done is refused with why: an unknown type or backend,
// nowhere to place it, the leader's own machine.
func TestFloorPlanByHandIsPlacedAsThePassPlaces(t *testing.T) {
	p := platform(t, `
backend "docker" {
  type = "docker"
}
backend "local" {
  type = "local"
}
machine "server" {
  min = 1
  consul_server = true
  backends = ["local", "docker"]
}
machine "worker" {
  min = 0
  backends = ["docker"]
}`)
	obs := Observed{
		Self:          "leader",
		Records:       map[string]Record{"leader": {ID: "leader", Type: "server", Backend: "local", State: StateJoined}, "w1": {ID: "w1", Type: "worker", Backend: "docker", Host: "host-b", State: StateJoined}},
		Members:       map[string]Member{"leader": {Name: "leader", Status: state.MemberAlive, Server: true, RaftVoter: true}, "host-b": {Name: "host-b", Status: state.MemberAlive}},
		Offers:        offers(offering("leader", "!docker", "local"), offering("host-b", "docker")),
		BackendErrors: map[string]string{"docker": "no docker engine here"},
	}
	a, err := PlaceByHand(p, obs, t0, "worker", "")
	if err != nil || a.Kind != state.KindSpawn || a.Host != "host-b" || a.Backend != "docker" || !a.Manual {
		t.Errorf("worker by hand: %+v, %v; want a manual spawn on host-b's docker", a, err)
	}
	a, err = PlaceByHand(p, obs, t0, "server", "")
	if err != nil || a.Host != "" || a.Backend != "local" {
		t.Errorf("server by hand: %+v, %v; want it on the leader's own local backend", a, err)
	}
	if _, err := PlaceByHand(p, obs, t0, "server", "docker"); err == nil {
		t.Errorf("a server on docker, offered only by a client: placed, want refused")
	}
	for _, tc := range []struct{ typ, backend, want string }{
		{"nope", "", `no machine type "nope"`},
		{"worker", "vagrant", `no backend "vagrant"`},
	} {
		if _, err := PlaceByHand(p, obs, t0, tc.typ, tc.backend); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("spawn %s on %q: %v, want %q", tc.typ, tc.backend, err, tc.want)
		}
	}
	d, err := DestroyByHand(p, obs, t0, "w1")
	if err != nil || d.Kind != state.KindScaleDown || d.Host != "host-b" {
		t.Errorf("destroy w1: %+v, %v; want a removal run by its host", d, err)
	}
	if _, err := DestroyByHand(p, obs, t0, "leader"); err == nil || !strings.Contains(err.Error(), "leader's own") {
		t.Errorf("destroy the leader's own machine: %v, want refused", err)
	}
	if _, err := DestroyByHand(p, obs, t0, "ghost"); err == nil || !strings.Contains(err.Error(), "no machine") {
		t.Errorf("destroy an unknown machine: %v", err)
	}
}
