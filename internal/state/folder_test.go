package state_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/raptiformica/raptiformica/internal/kvschema"
	"github.com/raptiformica/raptiformica/internal/nodeconfig"
	"github.com/raptiformica/raptiformica/internal/state"
	"github.com/raptiformica/raptiformica/internal/testconsul"
)

// TestFloorPlanTypedFolder: a typed folder writes only by check-and-set,
// returns what it wrote with its new index, and reads through the codec:
// a record too large, not JSON, naming another machine or breaking its
// type's own rules is refused by key, never returned, and never stops the
// rest of the folder being read; an anchor (a dot name) is no record.
func TestFloorPlanTypedFolder(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test: needs Consul (run without -short)")
	}
	srv, err := testconsul.Start()
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Stop()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	store := kvschema.New(srv.Client)
	orders := state.WorkOrders(store, "host-a")

	w := state.WorkOrder{Kind: state.WorkSpawn, MachineID: "m1", Backend: "local", Node: &nodeconfig.Config{MachineID: "m1"}, Timeout: time.Minute}
	got, err := orders.Put(ctx, w, 0)
	if err != nil {
		t.Fatal(err)
	}
	if got.Index == 0 || got.MachineID != "m1" {
		t.Fatalf("Put returned %+v, want the order with its index", got)
	}
	if _, err := orders.Put(ctx, w, 0); !errors.Is(err, state.ErrConflict) {
		t.Errorf("a second create: %v, want ErrConflict", err)
	}
	w.State = state.WorkRunning
	if _, err := orders.Put(ctx, w, got.Index-1); !errors.Is(err, state.ErrConflict) {
		t.Errorf("a write at a stale index: %v, want ErrConflict", err)
	}
	running, err := orders.Put(ctx, w, got.Index)
	if err != nil || running.State != state.WorkRunning || running.Index <= got.Index {
		t.Fatalf("a write at the read index: %+v, %v", running, err)
	}

	kv := srv.Client.KV()
	for key, value := range map[string]string{
		"m2":     `{"kind": "spawn", "machine_id": "m1", "backend": "local", "timeout": 1}`,
		"m3":     `not json`,
		"m4":     `{"kind": "reboot", "machine_id": "m4", "backend": "local", "timeout": 1}`,
		"m5":     `{"kind": "destroy", "machine_id": "m5", "backend": "local", "timeout": 1, "error": "` + strings.Repeat("x", 70<<10) + `"}`,
		".watch": `anchor`,
	} {
		if _, err := kv.Put(&api.KVPair{Key: orders.Key(key), Value: []byte(value)}, nil); err != nil {
			t.Fatal(err)
		}
	}
	all, bad, index, err := orders.List(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != 1 || all["m1"].State != state.WorkRunning || all["m1"].Index != running.Index || index < running.Index {
		t.Errorf("listed %+v at %d, want m1 alone, running, at its index", all, index)
	}
	var refused []string
	for _, b := range bad {
		refused = append(refused, strings.TrimPrefix(b.Key, orders.Key("")))
	}
	if want := "m2 m3 m4 m5"; strings.Join(refused, " ") != want {
		t.Errorf("refused %q, want %s (%v)", refused, want, bad)
	}
	if _, ok, _, err := orders.Get(ctx, "m4", nil); ok || err == nil || !strings.Contains(err.Error(), "unknown kind") {
		t.Errorf("Get of an order of an unknown kind: ok=%v err=%v", ok, err)
	}
	if err := orders.Delete(ctx, "m1", got.Index); !errors.Is(err, state.ErrConflict) {
		t.Errorf("a delete at a stale index: %v, want ErrConflict", err)
	}
	if err := orders.Delete(ctx, "m1", running.Index); err != nil {
		t.Fatal(err)
	}
	if _, ok, _, err := orders.Get(ctx, "m1", nil); ok || err != nil {
		t.Errorf("m1 after its delete: ok=%v err=%v", ok, err)
	}
}
