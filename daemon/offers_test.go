package daemon

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/raptiformica/raptiformica/backends"
	"github.com/raptiformica/raptiformica/internal/clock"
	"github.com/raptiformica/raptiformica/internal/kvschema"
	"github.com/raptiformica/raptiformica/internal/state"
	"github.com/raptiformica/raptiformica/rules"
)

// answerBackend is a stand-in whose availability the test sets: the
// backends are not what these tests test, the offer is.
type answerBackend struct {
	brokenBackend
	avail error
}

func (b answerBackend) Available(context.Context) error { return b.avail }

func readOffer(t *testing.T, store *kvschema.Store, id string) (state.Offer, bool) {
	t.Helper()
	all, _, err := store.Offers(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	e, ok := all[id]
	b := e.Value
	if !ok {
		return state.Offer{}, false
	}
	o, err := state.ParseOffer(id, b)
	if err != nil {
		t.Fatal(err)
	}
	return o, true
}

// TestOffersSayWhatThisMachineCanRun: each agent publishes, for every
// backend of the description, whether it runs here and why not, never
// offers the backend that made it when that backend's commands cannot run
// on its machines, and writes again only when the answer changes.
func TestOffersSayWhatThisMachineCanRun(t *testing.T) {
	consul := startTestConsul(t)
	store := kvschema.New(consul.Client)
	bes := map[string]backends.Backend{
		"docker": answerBackend{avail: errors.New("no Docker socket at /var/run/docker.sock")},
		"local":  answerBackend{},
		"vms":    answerBackend{},
	}
	p := &rules.Platform{Cluster: "c"}
	o := &offerer{
		self: "worker-1", notHere: "vms", backends: func() map[string]backends.Backend { return bes },
		platform: func() *rules.Platform { return p }, store: store,
		clock: clock.Real{}, log: hclog.NewNullLogger(), wake: make(chan struct{}, 1),
	}
	ctx := context.Background()
	o.check(ctx, false)
	got, ok := readOffer(t, store, "worker-1")
	if !ok {
		t.Fatal("no offer published")
	}
	if off := got.Offered(); len(off) != 1 || off[0] != "local" {
		t.Errorf("offered: got %v want [local]", off)
	}
	if r := got.Backends["docker"].Reason; !strings.Contains(r, "no Docker socket") {
		t.Errorf("docker's reason: got %q", r)
	}
	if r := got.Backends["vms"].Reason; !strings.Contains(r, "lead = false") {
		t.Errorf("the backend that made this machine, whose commands cannot run here: got %+v", got.Backends["vms"])
	}
	first := got.Checked

	// The same answer is not written again (until it grows old).
	time.Sleep(10 * time.Millisecond)
	o.check(ctx, false)
	if got, _ := readOffer(t, store, "worker-1"); !got.Checked.Equal(first) {
		t.Errorf("an unchanged offer was written again at %v (first %v)", got.Checked, first)
	}

	// A backend that becomes usable is offered at the next check.
	bes["docker"] = answerBackend{}
	o.check(ctx, false)
	if got, _ := readOffer(t, store, "worker-1"); strings.Join(got.Offered(), ",") != "docker,local" {
		t.Errorf("after docker became usable: offered %v", got.Offered())
	}
}

// TestAgentPublishesItsOffer: a real agent publishes its offer of the
// description's backends once it runs.
func TestAgentPublishesItsOffer(t *testing.T) {
	a, _ := startAgent(t)
	waitFor(t, 30*time.Second, "the agent's offer is in KV", func() bool {
		all, _, err := a.store.Offers(context.Background(), nil)
		if err != nil {
			return false
		}
		o, err := state.ParseOffer(a.Config.MachineID, all[a.Config.MachineID].Value)
		_, hasLocal := o.Backends["local"]
		return err == nil && hasLocal && !o.Checked.IsZero()
	})
}

// listingBackend lists the machines the test gives it.
type listingBackend struct {
	brokenBackend
	insts []backends.Instance
}

func (b listingBackend) List(context.Context) ([]backends.Instance, error) { return b.insts, nil }

// TestOfferListsOnlyWhatThisMachineHosts: the offer lists the machines of
// the backends this machine ran work orders on, and of no other: a backend
// every member can list (the local machines of one box) would otherwise
// have every member publish the same list on every change.
func TestOfferListsOnlyWhatThisMachineHosts(t *testing.T) {
	consul := startTestConsul(t)
	store := kvschema.New(consul.Client)
	web := []backends.Instance{{MachineID: "web-1", MachineType: "web", Address: "10.0.0.5", Running: true}}
	bes := map[string]backends.Backend{"engine": listingBackend{insts: web}, "local": listingBackend{insts: web}}
	w := &worker{served: filepath.Join(t.TempDir(), "hosted-backends.json"), log: hclog.NewNullLogger()}
	o := &offerer{
		self: "worker-1", backends: func() map[string]backends.Backend { return bes }, hosting: w.hosting,
		platform: func() *rules.Platform { return &rules.Platform{Cluster: "c"} }, store: store,
		clock: clock.Real{}, log: hclog.NewNullLogger(), wake: make(chan struct{}, 1),
	}
	o.check(context.Background(), false)
	got, _ := readOffer(t, store, "worker-1")
	for name, bo := range got.Backends {
		if !bo.Available || bo.Listed || len(bo.Instances) != 0 {
			t.Errorf("before any order, %s: %+v, want offered and not listed", name, bo)
		}
	}
	w.serve("engine")
	o.publish(context.Background())
	got, _ = readOffer(t, store, "worker-1")
	if bo := got.Backends["engine"]; !bo.Listed || len(bo.Instances) != 1 || bo.Instances[0].MachineID != "web-1" {
		t.Errorf("engine after an order ran on it: %+v, want web-1 listed", bo)
	}
	if bo := got.Backends["local"]; bo.Listed {
		t.Errorf("local, which ran no order here, is listed: %+v", bo)
	}
	// Kept across restarts: the machines outlive the agent.
	again := &worker{served: w.served, log: hclog.NewNullLogger()}
	if !again.hosting()["engine"] {
		t.Error("a restarted agent forgot that it hosts machines on engine")
	}
}

// TestScaleAHostPublishesAStoppedMachineAtOnce: a machine this host holds
// that its backend reports stopped is in the host's published list within
// moments, not at the next minute's check: the leader judges the machine by
// that list.
func TestScaleAHostPublishesAStoppedMachineAtOnce(t *testing.T) {
	consul := startTestConsul(t)
	store := kvschema.New(consul.Client)
	be := &holderBackend{id: "web-1", running: true, events: make(chan struct{})}
	w := &worker{served: filepath.Join(t.TempDir(), "hosted-backends.json"), log: hclog.NewNullLogger()}
	w.serve("engine")
	o := &offerer{
		self: "worker-1", backends: func() map[string]backends.Backend { return map[string]backends.Backend{"engine": be} }, hosting: w.hosting,
		platform: func() *rules.Platform { return &rules.Platform{Cluster: "c"} }, store: store,
		clock: clock.Real{}, log: hclog.NewNullLogger(), wake: make(chan struct{}, 1),
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = o.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	listed := func(running bool) func() bool {
		return func() bool {
			all, _, err := store.Offers(context.Background(), nil)
			if err != nil || all["worker-1"].Value == nil {
				return false
			}
			got, err := state.ParseOffer("worker-1", all["worker-1"].Value)
			bo := got.Backends["engine"]
			return err == nil && bo.Listed && len(bo.Instances) == 1 && bo.Instances[0].Running == running
		}
	}
	waitFor(t, 10*time.Second, "web-1 listed running", listed(true))
	be.mu.Lock()
	be.running = false
	be.mu.Unlock()
	t0 := time.Now()
	select {
	case be.events <- struct{}{}:
	case <-time.After(10 * time.Second):
		t.Fatal("nothing watches the backend this host holds machines of")
	}
	waitFor(t, 5*time.Second, "web-1 listed stopped", listed(false))
	t.Logf("published %s after the backend's report", time.Since(t0).Round(time.Millisecond))
	// A second list follows, unchanged or not: the leader removes a
	// machine only on two lists of its host.
	all, _, err := store.Offers(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	first := all["worker-1"].Index
	waitFor(t, 5*time.Second, "a second list published after the stop", func() bool {
		all, _, err := store.Offers(context.Background(), nil)
		return err == nil && all["worker-1"].Index > first && listed(false)()
	})
}

// TestScaleAHostReactsOnlyToStopsOfMachinesItMade: members that share a
// backend's scope (one box's local machines, one Docker engine) each see
// every stop there. Only the member whose lists name the machine (its
// maker) publishes at once; were every member to, one death at a hundred
// members was five hundred offers written in twelve seconds, and the Raft
// leader starved.
func TestScaleAHostReactsOnlyToStopsOfMachinesItMade(t *testing.T) {
	consul := startTestConsul(t)
	store := kvschema.New(consul.Client)
	be := &holderBackend{id: "web-1", madeBy: "worker-2", running: true, events: make(chan struct{})}
	w := &worker{served: filepath.Join(t.TempDir(), "hosted-backends.json"), log: hclog.NewNullLogger()}
	w.serve("engine")
	o := &offerer{
		self: "worker-1", backends: func() map[string]backends.Backend { return map[string]backends.Backend{"engine": be} },
		hosting: w.hosting, platform: func() *rules.Platform { return &rules.Platform{Cluster: "c"} }, store: store,
		clock: clock.Real{}, log: hclog.NewNullLogger(), wake: make(chan struct{}, 1),
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = o.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	offer := func() (uint64, []backends.Instance) {
		all, _, err := store.Offers(context.Background(), nil)
		if err != nil || all["worker-1"].Value == nil {
			return 0, nil
		}
		got, err := state.ParseOffer("worker-1", all["worker-1"].Value)
		if err != nil {
			t.Fatal(err)
		}
		return all["worker-1"].Index, got.Backends["engine"].Instances
	}
	stop := func() {
		t.Helper()
		be.mu.Lock()
		be.running = false
		be.mu.Unlock()
		select {
		case be.events <- struct{}{}:
		case <-time.After(10 * time.Second):
			t.Fatal("nothing watches the backend this host holds machines of")
		}
	}
	waitFor(t, 10*time.Second, "an offer published", func() bool { i, _ := offer(); return i > 0 })
	before, insts := offer()
	if len(insts) != 0 {
		t.Fatalf("worker-1 lists %v, made by worker-2", insts)
	}
	stop()
	// It watches only what its lists may name: a hundred members on one
	// box each watched every machine of it.
	if got, want := be.watched(), "bystander=false unmade=true web-1=false"; got != want {
		t.Errorf("the host's watch keeps %s, want %s", got, want)
	}
	time.Sleep(2 * time.Second)
	if after, _ := offer(); after != before {
		t.Fatal("a host published at once the stop of a machine another member made")
	}
	be.mu.Lock()
	be.madeBy, be.running = "worker-1", true
	be.mu.Unlock()
	o.publish(context.Background())
	stop()
	waitFor(t, 5*time.Second, "web-1, made here, listed stopped", func() bool {
		_, insts := offer()
		return len(insts) == 1 && !insts[0].Running
	})
}

// memoryBackend reports the free memory the test sets.
type memoryBackend struct {
	answerBackend
	mu   sync.Mutex
	free uint64
}

func (b *memoryBackend) FreeMemory(context.Context) (uint64, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.free, nil
}

// TestScaleOfferIgnoresSmallMovesOfFreeMemory: free memory moves a little
// every second; an offer is written again only when it moved by a tenth
// (and 64 MiB) or more. Were every move a change, every member would
// write its offer at every minute's check, and each write wakes the
// leader to read every member's offer: seen at 103 machines at rest.
func TestScaleOfferIgnoresSmallMovesOfFreeMemory(t *testing.T) {
	consul := startTestConsul(t)
	store := kvschema.New(consul.Client)
	be := &memoryBackend{free: 4 << 30}
	o := &offerer{
		self: "worker-1", backends: func() map[string]backends.Backend { return map[string]backends.Backend{"local": be} },
		platform: func() *rules.Platform { return &rules.Platform{Cluster: "c"} }, store: store,
		clock: clock.Real{}, log: hclog.NewNullLogger(), wake: make(chan struct{}, 1),
	}
	index := func() (uint64, uint64) {
		all, _, err := store.Offers(context.Background(), nil)
		if err != nil {
			t.Fatal(err)
		}
		got, err := state.ParseOffer("worker-1", all["worker-1"].Value)
		if err != nil {
			t.Fatal(err)
		}
		return all["worker-1"].Index, got.Backends["local"].FreeMemory
	}
	set := func(free uint64) {
		be.mu.Lock()
		be.free = free
		be.mu.Unlock()
		o.check(context.Background(), false)
	}
	set(4 << 30)
	first, free := index()
	if free != 4<<30 {
		t.Fatalf("first offer: free memory %d, want %d", free, uint64(4<<30))
	}
	for _, small := range []uint64{4<<30 + 5<<20, 4<<30 - 100<<20, 4<<30 + 300<<20} {
		set(small)
		if i, free := index(); i != first || free != 4<<30 {
			t.Errorf("free memory moved to %d MiB: offer at index %d with %d MiB, want unchanged at %d with 4096 MiB", small>>20, i, free>>20, first)
		}
	}
	set(5 << 30)
	second, free := index()
	if second == first || free != 5<<30 {
		t.Errorf("free memory up a quarter: offer at index %d with %d MiB, want a new one with 5120 MiB", second, free>>20)
	}
	// A move too small to be news is news when it crosses the backend's
	// floor: placement compares the floor with the published figure.
	platform := &rules.Platform{Cluster: "c", Backends: map[string]rules.Backend{"local": {Name: "local", MinFreeMemoryMB: 5100}}}
	o.platform = func() *rules.Platform { return platform }
	set(5<<30 - 30<<20)
	if i, free := index(); i == second || free != 5<<30-30<<20 {
		t.Errorf("free memory moved 30 MiB across its floor of 5100 MiB: offer at index %d with %d MiB, want a new one with 5090 MiB", i, free>>20)
	}
}

// TestScaleOfferListsOnlyMachinesItMade: a host lists, of a backend's
// machines, those it made and those whose maker the backend cannot tell
// (made before machines knew), not those another member made in the same
// scope: a hundred hosts on one box each listing all hundred machines
// was 1.8 MB of offers, read by the leader on every change.
func TestScaleOfferListsOnlyMachinesItMade(t *testing.T) {
	consul := startTestConsul(t)
	store := kvschema.New(consul.Client)
	insts := []backends.Instance{
		{MachineID: "web-1", MachineType: "web", Running: true, MadeBy: "worker-1"},
		{MachineID: "web-2", MachineType: "web", Running: true, MadeBy: "worker-2"},
		{MachineID: "web-3", MachineType: "web", Running: true},
	}
	w := &worker{served: filepath.Join(t.TempDir(), "hosted-backends.json"), log: hclog.NewNullLogger()}
	w.serve("local")
	o := &offerer{
		self: "worker-1", backends: func() map[string]backends.Backend {
			return map[string]backends.Backend{"local": listingBackend{insts: insts}}
		},
		hosting:  w.hosting,
		platform: func() *rules.Platform { return &rules.Platform{Cluster: "c"} }, store: store,
		clock: clock.Real{}, log: hclog.NewNullLogger(), wake: make(chan struct{}, 1),
	}
	o.publish(context.Background())
	got, _ := readOffer(t, store, "worker-1")
	var ids []string
	for _, in := range got.Backends["local"].Instances {
		ids = append(ids, in.MachineID)
	}
	if strings.Join(ids, ",") != "web-1,web-3" {
		t.Errorf("worker-1 lists %v, want web-1 (made here) and web-3 (maker unknown), not web-2 (made by worker-2)", ids)
	}
}

// hungBackend's Available answers only when released or its context ends.
type hungBackend struct {
	brokenBackend
	asked   chan struct{}
	release chan struct{}
}

func (b hungBackend) Available(ctx context.Context) error {
	b.asked <- struct{}{}
	select {
	case <-b.release:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// TestAStopReportDoesNotWaitForAHungBackend: while a check waits on a
// backend that does not answer (up to offerCheckTimeout, 30 s), a stop's
// report still learns at once whether this host's lists name the machine.
// It took the check's lock, and waited the check out.
func TestAStopReportDoesNotWaitForAHungBackend(t *testing.T) {
	consul := startTestConsul(t)
	be := hungBackend{asked: make(chan struct{}, 1), release: make(chan struct{})}
	o := &offerer{
		self: "worker-1", backends: func() map[string]backends.Backend { return map[string]backends.Backend{"engine": be} },
		platform: func() *rules.Platform { return &rules.Platform{Cluster: "c"} }, store: kvschema.New(consul.Client),
		clock: clock.Real{}, log: hclog.NewNullLogger(), wake: make(chan struct{}, 1),
	}
	o.listed = map[string]bool{"web-1": true}
	ctx, cancel := context.WithCancel(context.Background())
	checked := make(chan struct{})
	go func() { defer close(checked); o.check(ctx, false) }()
	t.Cleanup(func() { cancel(); <-checked })
	<-be.asked
	answered := make(chan bool, 1)
	go func() { answered <- o.lists("web-1") }()
	select {
	case named := <-answered:
		if !named {
			t.Error("the lists no longer name web-1")
		}
	case <-time.After(2 * time.Second):
		t.Fatal("a stop's report waited on a check that waits on a hung backend")
	}
}
