package local

import (
	"context"
	"encoding/json"
	"errors"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/raptiformica/raptiformica/backends"
	"github.com/raptiformica/raptiformica/internal/fsutil"
	"github.com/raptiformica/raptiformica/internal/nodeconfig"
)

// TestWatchReportsAnAgentThatEnds: a machine whose agent is killed is
// reported at once, by its ID, whether it ran before Watch started or was
// spawned after; a machine still running is not; Watch ends with its
// context.
func TestWatchReportsAnAgentThatEnds(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	b, dir := newBackend(t)
	// No rescan within the test: a machine spawned after Watch started is
	// taken because this process started it.
	b.rescan = time.Hour
	t.Cleanup(func() { KillAll(context.Background(), dir) })
	ctx := context.Background()
	spawn := func(id string) {
		t.Helper()
		if _, err := b.Spawn(ctx, backends.Spec{Node: nodeconfig.Config{MachineID: id, MachineType: "worker"}}); err != nil {
			t.Fatalf("spawn %s: %v", id, err)
		}
	}
	kill := func(id string) { t.Helper(); killMachine(t, dir, id) }
	spawn("m-1")
	spawn("m-2")

	took := make(chan string, 10)
	watchTook = func(id string) { took <- id }
	t.Cleanup(func() { watchTook = nil })
	wctx, cancel := context.WithCancel(ctx)
	stopped := make(chan string, 10)
	done := make(chan error, 1)
	go func() { done <- b.Watch(wctx, func(id string) { stopped <- id }) }()
	waitTook := func(want ...string) {
		t.Helper()
		for range want {
			select {
			case <-took:
			case <-time.After(10 * time.Second):
				t.Fatalf("Watch did not take %v in 10 s", want)
			}
		}
	}
	waitStopped := func(want string) {
		t.Helper()
		select {
		case id := <-stopped:
			if id != want {
				t.Fatalf("reported %s stopped, want %s", id, want)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("%s killed, not reported in 5 s", want)
		}
	}
	waitTook("m-1", "m-2")

	t0 := time.Now()
	kill("m-1")
	waitStopped("m-1")
	t.Logf("a killed agent reported in %s", time.Since(t0).Round(time.Millisecond))

	spawn("m-3")
	waitTook("m-3")
	kill("m-3")
	waitStopped("m-3")

	select {
	case id := <-stopped:
		t.Fatalf("%s reported stopped, and it runs", id)
	case <-time.After(500 * time.Millisecond):
	}
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("Watch ended with %v, want its context's error", err)
		}
	case <-time.After(5 * time.Second):
		t.Error("Watch did not end with its context")
	}
}

// TestScaleAHostWatchesOnlyTheMachinesItMade: WatchOnly holds a pidfd of
// the machines want keeps, asks want once per machine however many
// rescans pass, and reports the stop of a kept machine, never of another.
// A hundred agents on one box each held a pidfd of every machine of it.
func TestScaleAHostWatchesOnlyTheMachinesItMade(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	b, dir := newBackend(t)
	b.rescan = 100 * time.Millisecond // many rescans in the test's time
	t.Cleanup(func() { KillAll(context.Background(), dir) })
	ctx := context.Background()
	for id, maker := range map[string]string{"m-mine": "host-a", "m-theirs": "host-b"} {
		if _, err := b.Spawn(ctx, backends.Spec{Node: nodeconfig.Config{MachineID: id, MachineType: "worker", MadeBy: maker}}); err != nil {
			t.Fatalf("spawn %s: %v", id, err)
		}
	}
	took := make(chan string, 10)
	watchTook = func(id string) { took <- id }
	t.Cleanup(func() { watchTook = nil })
	var mu sync.Mutex
	asked := map[string]int{}
	want := func(in backends.Instance) bool {
		mu.Lock()
		defer mu.Unlock()
		asked[in.MachineID]++
		return in.MadeBy == "host-a"
	}
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stopped := make(chan string, 10)
	go func() { _ = b.WatchOnly(wctx, want, func(id string) { stopped <- id }) }()
	select {
	case id := <-took:
		if id != "m-mine" {
			t.Fatalf("watches %s, made by another host", id)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("m-mine was not watched in 10 s")
	}
	time.Sleep(10 * b.rescan)
	select {
	case id := <-took:
		t.Fatalf("watches %s too", id)
	default:
	}
	mu.Lock()
	if asked["m-mine"] != 1 || asked["m-theirs"] != 1 {
		t.Errorf("want asked %v over several rescans, want once per machine", asked)
	}
	mu.Unlock()
	kill := func(id string) { t.Helper(); killMachine(t, dir, id) }
	kill("m-theirs")
	kill("m-mine")
	select {
	case id := <-stopped:
		if id != "m-mine" {
			t.Fatalf("reported %s stopped, made by another host", id)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("m-mine killed, not reported in 5 s")
	}
	select {
	case id := <-stopped:
		t.Fatalf("reported %s stopped too", id)
	case <-time.After(10 * b.rescan):
	}
}

// killMachine SIGKILLs the process group of the running machine id in the
// cluster folder dir.
func killMachine(t *testing.T, dir, id string) {
	t.Helper()
	ms, _ := Machines(dir)
	for _, m := range ms {
		if m.Config.MachineID == id && m.Running {
			if err := syscall.Kill(-m.PID, syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			return
		}
	}
	t.Fatalf("%s is not running", id)
}

// TestScaleAHostListsOnlyTheMachinesItMade: ListMadeBy keeps a host's own
// machines and those without a maker, alive or not, and follows a config
// rewritten since the last list (the parsed configs are kept between
// lists).
func TestScaleAHostListsOnlyTheMachinesItMade(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	b, dir := newBackend(t)
	t.Cleanup(func() { KillAll(context.Background(), dir) })
	ctx := context.Background()
	for id, maker := range map[string]string{"m-mine": "host-a", "m-theirs": "host-b", "m-old": ""} {
		if _, err := b.Spawn(ctx, backends.Spec{Node: nodeconfig.Config{MachineID: id, MachineType: "worker", MadeBy: maker}}); err != nil {
			t.Fatalf("spawn %s: %v", id, err)
		}
	}
	listed := func() map[string]bool {
		t.Helper()
		insts, err := b.ListMadeBy(ctx, "host-a")
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]bool{}
		for _, in := range insts {
			out[in.MachineID] = in.Running
		}
		return out
	}
	if got := listed(); len(got) != 2 || !got["m-mine"] || !got["m-old"] {
		t.Fatalf("host-a lists %v, want m-mine and m-old, running", got)
	}
	killMachine(t, dir, "m-mine")
	deadline := time.Now().Add(5 * time.Second)
	for got := listed(); got["m-mine"]; got = listed() {
		if time.Now().After(deadline) {
			t.Fatalf("host-a lists %v 5 s after m-mine was killed, want it there, stopped", got)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if got := listed(); len(got) != 2 {
		t.Errorf("host-a lists %v after m-mine was killed, want m-mine and m-old", got)
	}
	// m-theirs handed over to host-a: its config is written anew.
	mdir := machineDir(dir, "m-theirs")
	node, err := readNode(mdir)
	if err != nil {
		t.Fatal(err)
	}
	node.MadeBy = "host-a"
	raw, _ := json.Marshal(node)
	if err := fsutil.WriteFileAtomic(filepath.Join(mdir, "agent.json"), raw, 0o600); err != nil {
		t.Fatal(err)
	}
	if got := listed(); len(got) != 3 || !got["m-theirs"] {
		t.Errorf("host-a lists %v after m-theirs became its own, want it there, running", got)
	}
}
