package daemon

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"

	"github.com/raptiformica/raptiformica/backends"
	"github.com/raptiformica/raptiformica/internal/clock"
	"github.com/raptiformica/raptiformica/internal/kvschema"
	"github.com/raptiformica/raptiformica/internal/telemetry"
	"github.com/raptiformica/raptiformica/reconcile"
	"github.com/raptiformica/raptiformica/rules"
)

// holderBackend lists one machine, running or not as the test says, and
// reports it stopped whenever the test asks.
type holderBackend struct {
	id      string
	madeBy  string
	mu      sync.Mutex
	running bool
	events  chan struct{}
	// wants is what WatchOnly's want said of the backend's machine, of a
	// bystander made by another member and of a machine of no known maker.
	wants map[string]bool
}

func (b *holderBackend) Available(context.Context) error { return nil }
func (b *holderBackend) Spawn(context.Context, backends.Spec) (backends.Instance, error) {
	return backends.Instance{}, nil
}
func (b *holderBackend) Destroy(context.Context, string) error { return nil }
func (b *holderBackend) List(context.Context) ([]backends.Instance, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return []backends.Instance{{MachineID: b.id, MachineType: "server", Running: b.running, MadeBy: b.madeBy}}, nil
}
func (b *holderBackend) Watch(ctx context.Context, stopped func(string)) error {
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-b.events:
			stopped(b.id)
		}
	}
}

// WatchOnly is Watch reporting a stop only when want keeps the machine. It
// notes what want says of three machines, for the tests to check.
func (b *holderBackend) WatchOnly(ctx context.Context, want func(backends.Instance) bool, stopped func(string)) error {
	b.mu.Lock()
	b.wants = map[string]bool{
		b.id:        want(backends.Instance{MachineID: b.id, MadeBy: b.madeBy}),
		"bystander": want(backends.Instance{MachineID: "bystander", MadeBy: "someone-else"}),
		"unmade":    want(backends.Instance{MachineID: "unmade"}),
	}
	b.mu.Unlock()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-b.events:
			b.mu.Lock()
			in := backends.Instance{MachineID: b.id, MadeBy: b.madeBy}
			b.mu.Unlock()
			if want(in) {
				stopped(b.id)
			}
		}
	}
}

// watched returns what WatchOnly's want said, as "id=bool" sorted.
func (b *holderBackend) watched() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []string
	for id, w := range b.wants {
		out = append(out, fmt.Sprintf("%s=%t", id, w))
	}
	slices.Sort(out)
	return strings.Join(out, " ")
}

// TestScaleAStoppedLeadersLockMovesAtOnce: a server waiting for the lock
// ends the holder's session the moment its own backend lists the holder's
// machine stopped, so that the lock moves within the lock delay rather than
// after Consul's failure detector. A report the backend's list does not
// bear out (the holder runs) ends nothing.
func TestScaleAStoppedLeadersLockMovesAtOnce(t *testing.T) {
	consul := startTestConsul(t)
	ctx := context.Background()
	// The holder is the test's Consul node: its session is that node's.
	holder, err := consul.Client.Agent().NodeName()
	if err != nil {
		t.Fatal(err)
	}
	inv := &reconcile.Inventory{Store: kvschema.New(consul.Client)}
	if _, err := inv.Put(ctx, reconcile.Record{ID: holder, Type: "server", Backend: "local", State: reconcile.StateJoined}); err != nil {
		t.Fatal(err)
	}
	// No TTL: only an end by someone frees this lock.
	sid, _, err := consul.Client.Session().Create(&api.SessionEntry{Name: "old leader", LockDelay: 10 * time.Millisecond, Behavior: api.SessionBehaviorRelease}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if ok, _, err := consul.Client.KV().Acquire(&api.KVPair{Key: kvschema.Leader, Value: []byte(holder), Session: sid, Flags: api.LockFlagValue}, nil); err != nil || !ok {
		t.Fatalf("the holder takes the lock: %v %v", ok, err)
	}
	be := &holderBackend{id: holder, running: true, events: make(chan struct{})}
	p := &rules.Platform{}
	e := &elector{
		self: "server-b", consul: consul.Client, store: kvschema.New(consul.Client), inventory: inv,
		platform: func() *rules.Platform { return p },
		backends: func() map[string]backends.Backend { return map[string]backends.Backend{"local": be} },
		reseed:   func(context.Context) bool { return false },
		clock:    clock.Real{}, log: hclog.NewNullLogger(), metrics: telemetry.New(), wake: make(chan struct{}, 1),
	}
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); _ = e.Run(rctx) }()
	t.Cleanup(func() { cancel(); <-done })

	store := kvschema.New(consul.Client)
	leader := func() string {
		lctx, lcancel := context.WithTimeout(ctx, 5*time.Second)
		defer lcancel()
		return store.Leader(lctx)
	}
	report := func() {
		t.Helper()
		select {
		case be.events <- struct{}{}:
		case <-time.After(30 * time.Second):
			t.Fatal("nobody watches the holder's machine")
		}
	}
	// A report the list contradicts: the holder keeps its lock.
	report()
	// The holder's machine alone is watched, not every machine of its
	// backend's scope.
	if got, want := be.watched(), "bystander=false "+holder+"=true unmade=false"; got != want {
		t.Errorf("the holder watch keeps %s, want %s", got, want)
	}
	time.Sleep(2 * time.Second)
	if got := leader(); got != holder {
		t.Fatalf("the lock moved to %q on a report its list did not bear out", got)
	}
	be.mu.Lock()
	be.running = false
	be.mu.Unlock()
	t0 := time.Now()
	report()
	waitFor(t, 10*time.Second, "server-b holds the lock", func() bool { return leader() == "server-b" })
	t.Logf("the lock moved %s after the backend's report", time.Since(t0).Round(time.Millisecond))
}
