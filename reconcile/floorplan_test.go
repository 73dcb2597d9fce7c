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
