package reconcile

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/raptiformica/raptiformica/backends"
	"github.com/raptiformica/raptiformica/internal/clock"
	"github.com/raptiformica/raptiformica/internal/clock/clocktest"
	"github.com/raptiformica/raptiformica/internal/kvschema"
	"github.com/raptiformica/raptiformica/internal/nodeconfig"
	"github.com/raptiformica/raptiformica/internal/state"
	"github.com/raptiformica/raptiformica/internal/telemetry"
	"github.com/raptiformica/raptiformica/internal/testconsul"
	"github.com/raptiformica/raptiformica/rules"
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

func needConsul(t *testing.T) *Inventory {
	t.Helper()
	if testing.Short() {
		t.Skip("integration test: needs Consul (run without -short)")
	}
	if err := consul.Reset(kvschema.Prefix); err != nil {
		t.Fatal(err)
	}
	return &Inventory{Store: kvschema.New(consul.Client)}
}

func TestInventoryCheckAndSet(t *testing.T) {
	inv := needConsul(t)
	ctx := context.Background()
	r, err := inv.Put(ctx, Record{ID: "m1", Type: "server", State: StateSpawning})
	if err != nil {
		t.Fatalf("create: %v", err)
	}
	if r.Index == 0 {
		t.Fatalf("create returned no index")
	}
	if _, err := inv.Put(ctx, Record{ID: "m1", Type: "server", State: StateSpawning}); !errors.Is(err, state.ErrConflict) {
		t.Errorf("second create: got %v want state.ErrConflict", err)
	}
	stale := r
	r.State = StateJoining
	if r, err = inv.Put(ctx, r); err != nil {
		t.Fatalf("update: %v", err)
	}
	stale.State = StateDestroying
	if _, err := inv.Put(ctx, stale); !errors.Is(err, state.ErrConflict) {
		t.Errorf("update from a stale index: got %v want state.ErrConflict", err)
	}
	if err := inv.Delete(ctx, stale); !errors.Is(err, state.ErrConflict) {
		t.Errorf("delete from a stale index: got %v want state.ErrConflict", err)
	}
	recs, _, err := inv.List(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := recs["m1"].State; got != StateJoining {
		t.Errorf("state after the lost writes: got %q want %q", got, StateJoining)
	}
	if err := inv.Delete(ctx, r); err != nil {
		t.Errorf("delete: %v", err)
	}
}

// fakeBackend records calls. It is a stand-in for the backend, which is not
// what these tests test; at Spawn it reads KV, to prove the intent is there.
type fakeBackend struct {
	mu       sync.Mutex
	inv      *Inventory
	spawnErr error
	// hang makes Spawn and Destroy answer only when their context ends, as
	// a hung engine or provider API does.
	hang      bool
	spawned   []string
	destroyed []string
	// sawIntent records, per spawn, the record state in KV at that moment.
	sawIntent []State
}

func (f *fakeBackend) Available(context.Context) error { return nil }
func (f *fakeBackend) Spawn(ctx context.Context, spec backends.Spec) (backends.Instance, error) {
	r, found, _ := f.inv.Get(ctx, spec.Node.MachineID)
	f.mu.Lock()
	defer f.mu.Unlock()
	state := State("")
	if found {
		state = r.State
	}
	f.sawIntent = append(f.sawIntent, state)
	if f.hang {
		f.mu.Unlock()
		<-ctx.Done()
		f.mu.Lock()
		return backends.Instance{}, ctx.Err()
	}
	if f.spawnErr != nil {
		return backends.Instance{}, f.spawnErr
	}
	f.spawned = append(f.spawned, spec.Node.MachineID)
	return backends.Instance{MachineID: spec.Node.MachineID, Address: "127.0.0.9", Running: true}, nil
}
func (f *fakeBackend) Destroy(ctx context.Context, id string) error {
	if f.hang {
		<-ctx.Done()
		return ctx.Err()
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.destroyed = append(f.destroyed, id)
	return nil
}
func (f *fakeBackend) List(context.Context) ([]backends.Instance, error) { return nil, nil }

func newExecutor(inv *Inventory) *Executor {
	return &Executor{
		Inventory: inv, Consul: consul.Client, Clock: clock.Real{}, Log: hclog.NewNullLogger(), Metrics: telemetry.New(),
		NodeConfig: func(ctx context.Context, p *rules.Platform, id string, mt rules.MachineType, backend string) (nodeconfig.Config, error) {
			return nodeconfig.Config{MachineID: id, MachineType: mt.Name}, nil
		},
	}
}

func TestExecutorWritesIntentBeforeSpawning(t *testing.T) {
	inv := needConsul(t)
	ctx := context.Background()
	p := platform(t, threeServers)
	fb := &fakeBackend{inv: inv}
	ex := newExecutor(inv)
	acts := []state.Action{{Kind: state.KindSpawn, Type: "server", Backend: "local"}, {Kind: state.KindSpawn, Type: "server", Backend: "local"}}
	if err := ex.Execute(ctx, p, map[string]backends.Backend{"local": fb}, Observed{}, acts); err != nil {
		t.Fatal(err)
	}
	ex.Wait()
	if len(fb.spawned) != 2 {
		t.Fatalf("spawned %d, want 2", len(fb.spawned))
	}
	for i, s := range fb.sawIntent {
		if s != StateSpawning {
			t.Errorf("spawn %d: record in KV during the backend call was %q, want %q", i, s, StateSpawning)
		}
	}
	recs, _, _ := inv.List(ctx, nil)
	for _, id := range fb.spawned {
		if r := recs[id]; r.State != StateJoining || r.Address != "127.0.0.9" {
			t.Errorf("record %s after spawn: got state %q address %q, want joining at 127.0.0.9", id, r.State, r.Address)
		}
	}
	if got := testutil.ToFloat64(ex.Metrics.Actions.WithLabelValues("spawn", "success")); got != 2 {
		t.Errorf("actions_total{spawn,success}: got %v want 2", got)
	}
	if rec := ex.Recent(); len(rec) != 2 || rec[0].Result != "success" || rec[1].Result != "success" || rec[0].MachineID == rec[1].MachineID {
		t.Errorf("recent outcomes after two spawns: got %+v", rec)
	}
}

func TestExecutorFailedSpawnIsRecordedAndBacksOff(t *testing.T) {
	inv := needConsul(t)
	ctx := context.Background()
	p := platform(t, threeServers)
	fb := &fakeBackend{inv: inv, spawnErr: errors.New("engine refused: no such image")}
	ex := newExecutor(inv)
	if err := ex.Execute(ctx, p, map[string]backends.Backend{"local": fb}, Observed{}, []state.Action{{Kind: state.KindSpawn, Type: "server", Backend: "local"}}); err != nil {
		t.Fatal(err)
	}
	ex.Wait()
	recs, _, _ := inv.List(ctx, nil)
	if len(recs) != 1 {
		t.Fatalf("got %d records, want the one failed spawn", len(recs))
	}
	for _, r := range recs {
		if r.State != StateDestroying || r.Reason != "spawn failed: engine refused: no such image" {
			t.Errorf("failed spawn record: got state %q reason %q", r.State, r.Reason)
		}
	}
	var obs Observed
	ex.Snapshot(&obs)
	if until := obs.BackoffUntil["local"]; !until.After(time.Now()) {
		t.Errorf("backend not backing off after a failure: until %v", until)
	}
	if got := obs.BackendFailures["local"]; got != "engine refused: no such image" {
		t.Errorf("backend's last failure: got %q", got)
	}
	if rec := ex.Recent(); len(rec) != 1 || rec[0].Kind != state.KindSpawn || rec[0].Result != "error" || !strings.Contains(rec[0].Error, "no such image") || rec[0].MachineID == "" {
		t.Errorf("recent outcomes after a failed spawn: got %+v", rec)
	}
	// The planner finishes the removal: no half-made machine stays recorded.
	obs.Records = recs
	d := Plan(p, obs, time.Now())
	if len(d.Actions) != 1 || d.Actions[0].Kind != state.KindReap {
		t.Fatalf("plan after a failed spawn: got %+v want one reap", d.Actions)
	}
	if err := ex.Execute(ctx, p, map[string]backends.Backend{"local": fb}, obs, d.Actions); err != nil {
		t.Fatal(err)
	}
	ex.Wait()
	if recs, _, _ = inv.List(ctx, nil); len(recs) != 0 {
		t.Errorf("records left after reaping the failed spawn: %v", recs)
	}
}

func TestExecutorStopsWhenLeadershipIsLost(t *testing.T) {
	inv := needConsul(t)
	p := platform(t, threeServers)
	fb := &fakeBackend{inv: inv}
	ex := newExecutor(inv)
	r, err := inv.Put(context.Background(), Record{ID: "dead", Type: "server", Backend: "local", State: StateFailed})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // the lock is already lost
	obs := Observed{Records: map[string]Record{"dead": r}}
	_ = ex.Execute(ctx, p, map[string]backends.Backend{"local": fb}, obs, []state.Action{{Kind: state.KindReap, MachineID: "dead", Type: "server", Backend: "local"}})
	ex.Wait()
	if len(fb.destroyed) != 0 {
		t.Errorf("destroyed %v after losing leadership", fb.destroyed)
	}
}

// handshakeBackend lists only once its partner has been asked too: if
// Observe asked backends one after another, the first would wait out its
// context.
type handshakeBackend struct {
	mine, partner chan struct{}
	inst          backends.Instance
}

func (b *handshakeBackend) Available(context.Context) error { return nil }
func (b *handshakeBackend) Spawn(context.Context, backends.Spec) (backends.Instance, error) {
	return backends.Instance{}, errors.New("not here")
}
func (b *handshakeBackend) Destroy(context.Context, string) error { return nil }
func (b *handshakeBackend) List(ctx context.Context) ([]backends.Instance, error) {
	close(b.mine)
	select {
	case <-b.partner:
		return []backends.Instance{b.inst}, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func TestObserveAsksBackendsAtOnce(t *testing.T) {
	needConsul(t)
	a, b := make(chan struct{}), make(chan struct{})
	bes := map[string]backends.Backend{
		"one": &handshakeBackend{mine: a, partner: b, inst: backends.Instance{MachineID: "m1", Running: true}},
		"two": &handshakeBackend{mine: b, partner: a, inst: backends.Instance{MachineID: "m2", Running: true}},
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	obs, err := Observe(ctx, consul.Client, &Inventory{Store: kvschema.New(consul.Client)}, bes, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(obs.BackendErrors) != 0 || obs.Instances["one"]["m1"].MachineID != "m1" || obs.Instances["two"]["m2"].MachineID != "m2" {
		t.Errorf("backends asked one after another, or answers lost: errors %v, instances %v", obs.BackendErrors, obs.Instances)
	}
}

// oneSecondToProvision is a description whose backend calls get a second.
const oneSecondToProvision = `
policy {
  provision_timeout = "1s"
}
machine "server" {
  min = 1
  consul_server = true
}`

// waitFor fails the test if the executor's actions have not all returned
// within d: an action with no deadline would hold its slot forever.
func waitFor(t *testing.T, ex *Executor, d time.Duration) {
	t.Helper()
	done := make(chan struct{})
	go func() { ex.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(d):
		t.Fatalf("actions still in flight after %s: %+v", d, ex.InFlight())
	}
}

// TestExecutorSpawnEndsAtTheProvisionTimeout is issue 15's hung backend: a
// spawn whose backend call never returns gives up its slot at the
// provision timeout, and leaves its record to be reaped, not running
// unrecorded or pinned in flight.
func TestExecutorSpawnEndsAtTheProvisionTimeout(t *testing.T) {
	inv := needConsul(t)
	ctx := context.Background()
	p := platform(t, oneSecondToProvision)
	fb := &fakeBackend{inv: inv, hang: true}
	ex := newExecutor(inv)
	if err := ex.Execute(ctx, p, map[string]backends.Backend{"local": fb}, Observed{}, []state.Action{{Kind: state.KindSpawn, Type: "server", Backend: "local"}}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, ex, 20*time.Second)
	recs, _, _ := inv.List(ctx, nil)
	if len(recs) != 1 {
		t.Fatalf("got %d records, want the one hung spawn", len(recs))
	}
	for _, r := range recs {
		if r.State != StateDestroying || !strings.Contains(r.Reason, "provision timeout") {
			t.Errorf("hung spawn's record: got state %q reason %q, want destroying for the provision timeout", r.State, r.Reason)
		}
	}
}

// TestExecutorDestroyHasADeadline: a destroy that hangs ends, fails, and
// leaves the record announcing the removal for the next pass to retry.
func TestExecutorDestroyHasADeadline(t *testing.T) {
	inv := needConsul(t)
	p := platform(t, oneSecondToProvision)
	r, err := inv.Put(context.Background(), Record{ID: "dead", Type: "server", Backend: "local", State: StateFailed})
	if err != nil {
		t.Fatal(err)
	}
	fb := &fakeBackend{inv: inv, hang: true}
	ex := newExecutor(inv)
	obs := Observed{Records: map[string]Record{"dead": r}}
	if err := ex.Execute(context.Background(), p, map[string]backends.Backend{"local": fb}, obs, []state.Action{{Kind: state.KindReap, MachineID: "dead", Type: "server", Backend: "local"}}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, ex, 20*time.Second)
	got, ok, err := inv.Get(context.Background(), "dead")
	if err != nil || !ok || got.State != StateDestroying {
		t.Errorf("record after a hung destroy: %+v ok=%v err=%v, want it kept as destroying", got, ok, err)
	}
	if rec := ex.Recent(); len(rec) != 1 || rec[0].Result != "error" {
		t.Errorf("outcome of a hung destroy: %+v", rec)
	}
}

// TestMemberTargetReadsThePublishedPort: the leader asks a member to leave
// on the HTTPS port that member publishes, not on the default.
func TestMemberTargetReadsThePublishedPort(t *testing.T) {
	needConsul(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	reg := &api.CatalogRegistration{Node: "odd-port", Address: "192.0.2.7", NodeMeta: map[string]string{nodeconfig.MetaHTTPSPort: "18501"}}
	if _, err := consul.Client.Catalog().Register(reg, nil); err != nil {
		t.Fatal(err)
	}
	defer consul.Client.Catalog().Deregister(&api.CatalogDeregistration{Node: "odd-port"}, nil)
	tg, err := memberTarget(ctx, consul.Client, "odd-port", "192.0.2.7")
	if err != nil {
		t.Fatal(err)
	}
	if tg.Host != "192.0.2.7" || tg.HTTPSPort != 18501 {
		t.Errorf("target: got %+v want 192.0.2.7 on 18501", tg)
	}
	reg.Node, reg.NodeMeta = "bad-port", map[string]string{nodeconfig.MetaHTTPSPort: "99999"}
	if _, err := consul.Client.Catalog().Register(reg, nil); err != nil {
		t.Fatal(err)
	}
	defer consul.Client.Catalog().Deregister(&api.CatalogDeregistration{Node: "bad-port"}, nil)
	if _, err := memberTarget(ctx, consul.Client, "bad-port", "192.0.2.7"); err == nil || !strings.Contains(err.Error(), "bad-port") {
		t.Errorf("a member publishing port 99999: got %v, want an error naming it", err)
	}
}

// TestExecutorRestoresALostRecord: an alive member whose record was lost
// gets one again from what its backend lists, and a record written
// meanwhile (by a re-seed, another leader) is left as it is.
func TestExecutorRestoresALostRecord(t *testing.T) {
	inv := needConsul(t)
	ctx := context.Background()
	p := platform(t, threeServers)
	ex := newExecutor(inv)
	created := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	obs := Observed{
		Records:   map[string]Record{},
		Members:   map[string]Member{"b": {Name: "b", Address: "127.0.0.3", Status: state.MemberAlive}},
		Instances: map[string]map[string]backends.Instance{"local": {"b": {MachineID: "b", MachineType: "server", Address: "127.0.0.3", Running: true, Created: created}}},
	}
	d := Plan(p, with(obs, func(o *Observed) {
		o.Records["a"] = Record{ID: "a", Type: "server", Backend: "local", State: StateJoined}
		o.Records["c"] = Record{ID: "c", Type: "server", Backend: "local", State: StateJoined}
		o.Members["a"] = Member{Name: "a", Status: state.MemberAlive}
		o.Members["c"] = Member{Name: "c", Status: state.MemberAlive}
		o.Instances["local"]["a"] = backends.Instance{MachineID: "a", Running: true}
		o.Instances["local"]["c"] = backends.Instance{MachineID: "c", Running: true}
	}), time.Now())
	if len(d.Actions) != 1 || d.Actions[0].Kind != state.KindRestoreRecord {
		t.Fatalf("plan: got %+v, want one restore_record", d.Actions)
	}
	if err := ex.Execute(ctx, p, nil, obs, d.Actions); err != nil {
		t.Fatal(err)
	}
	r, ok, err := inv.Get(ctx, "b")
	if err != nil || !ok {
		t.Fatalf("restored record: ok=%v err=%v", ok, err)
	}
	if r.Type != "server" || r.Backend != "local" || r.State != StateJoined || r.Address != "127.0.0.3" || !r.Created.Equal(created) {
		t.Errorf("restored record: %+v", r)
	}
	// A second restore (a pass that planned on an older view) changes
	// nothing and is no error.
	r.Reason = "written meanwhile"
	if _, err := inv.Put(ctx, r); err != nil {
		t.Fatal(err)
	}
	if err := ex.Execute(ctx, p, nil, obs, d.Actions); err != nil {
		t.Fatalf("restore over an existing record: %v", err)
	}
	if r, _, _ := inv.Get(ctx, "b"); r.Reason != "written meanwhile" {
		t.Errorf("restore overwrote a record written meanwhile: %+v", r)
	}
}

// TestScaleHealthWatchIsTheFailureDetectors: the leader's health watch
// wakes for a member's serfHealth check, not for a service check flapping,
// and carries only the failure detector's checks.
func TestScaleHealthWatchIsTheFailureDetectors(t *testing.T) {
	needConsul(t)
	c := consul.Client
	register := func(check, status string) {
		t.Helper()
		reg := &api.CatalogRegistration{Node: "scale-node", Address: "192.0.2.9",
			Check: &api.AgentCheck{Node: "scale-node", CheckID: check, Name: check, Status: status}}
		if check != "serfHealth" {
			reg.Service = &api.AgentService{ID: "app", Service: "app"}
			reg.Check.ServiceID = "app"
		}
		if _, err := c.Catalog().Register(reg, nil); err != nil {
			t.Fatal(err)
		}
	}
	defer c.Catalog().Deregister(&api.CatalogDeregistration{Node: "scale-node"}, nil)
	register("serfHealth", api.HealthPassing)
	register("app-check", api.HealthPassing)
	q := MembershipQuery(c)
	ask := func() bool {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, changed, err := q((&api.QueryOptions{}).WithContext(ctx))
		if err != nil {
			t.Fatal(err)
		}
		return changed
	}
	ask() // the first answer is the baseline
	register("app-check", api.HealthCritical)
	if ask() {
		t.Errorf("a service check turning critical woke the planner")
	}
	register("serfHealth", api.HealthCritical)
	if !ask() {
		t.Errorf("the member's serfHealth turning critical did not wake the planner")
	}
}

// TestScaleMarksAreOneTransaction: a pass's marks are one Raft write (every
// record gets the same ModifyIndex), and a record changed meanwhile costs
// only its own mark.
func TestScaleMarksAreOneTransaction(t *testing.T) {
	inv := needConsul(t)
	ctx := context.Background()
	p := platform(t, threeServers)
	ex := newExecutor(inv)
	obs := Observed{Records: map[string]Record{}}
	var acts []state.Action
	for i := 0; i < 10; i++ {
		id := fmt.Sprintf("w%d", i)
		r, err := inv.Put(ctx, Record{ID: id, Type: "server", Backend: "local", State: StateJoining})
		if err != nil {
			t.Fatal(err)
		}
		obs.Records[id] = r
		acts = append(acts, state.Action{Kind: state.KindMarkJoined, MachineID: id, Type: "server", Reason: "member is alive"})
	}
	if err := ex.Execute(ctx, p, nil, obs, acts); err != nil {
		t.Fatal(err)
	}
	recs, _, err := inv.List(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	indexes := map[uint64]bool{}
	for _, r := range recs {
		if r.State != StateJoined {
			t.Errorf("%s: state %q, want joined", r.ID, r.State)
		}
		indexes[r.Index] = true
	}
	if len(indexes) != 1 {
		t.Errorf("the marks of one pass landed at %d Raft indexes, want 1", len(indexes))
	}

	// w3 changes under the pass: the others are still marked failed.
	for id, r := range recs {
		obs.Records[id] = r
	}
	busy := recs["w3"]
	busy.Reason = "changed by someone else"
	if _, err := inv.Put(ctx, busy); err != nil {
		t.Fatal(err)
	}
	for i := range acts {
		acts[i].Kind = state.KindMarkFailed
	}
	if err := ex.Execute(ctx, p, nil, obs, acts); err == nil {
		t.Error("a mark over a record changed meanwhile reported no error")
	}
	recs, _, _ = inv.List(ctx, nil)
	for id, r := range recs {
		if want := StateFailed; id != "w3" && r.State != want {
			t.Errorf("%s: state %q, want %q", id, r.State, want)
		}
	}
	if recs["w3"].State != StateJoined || recs["w3"].Reason != "changed by someone else" {
		t.Errorf("w3, changed meanwhile, was overwritten: %+v", recs["w3"])
	}
}

// countingBackend counts its List calls and lists what the test gives it.
type countingBackend struct {
	fakeBackend
	mu    sync.Mutex
	lists int
	insts []backends.Instance
}

func (b *countingBackend) List(context.Context) ([]backends.Instance, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.lists++
	return append([]backends.Instance(nil), b.insts...), nil
}

// TestScaleListsAreSpacedAcrossPasses: passes that come closer than the
// gap reuse a backend's last list, saying at which inventory index it was
// taken; a new description asks afresh.
func TestScaleListsAreSpacedAcrossPasses(t *testing.T) {
	inv := needConsul(t)
	ctx := context.Background()
	be := &countingBackend{insts: []backends.Instance{{MachineID: "m1", Running: true}}}
	bes := map[string]backends.Backend{"local": be}
	lists := &Lists{MinGap: time.Hour}
	p1 := &rules.Platform{}
	lists.For(p1)
	first, err := Observe(ctx, consul.Client, inv, bes, nil, lists)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := inv.Put(ctx, Record{ID: "m2", Type: "server", State: StateJoining}); err != nil {
		t.Fatal(err)
	}
	second, err := Observe(ctx, consul.Client, inv, bes, nil, lists)
	if err != nil {
		t.Fatal(err)
	}
	if be.lists != 1 {
		t.Errorf("lists: %d, want 1 (the second pass within the gap reuses the first)", be.lists)
	}
	if second.ListedAt["local"] != first.ListedAt["local"] || second.Records["m2"].Index <= second.ListedAt["local"] {
		t.Errorf("listed at %d then %d, m2 recorded at %d: the reused list must say it predates m2", first.ListedAt["local"], second.ListedAt["local"], second.Records["m2"].Index)
	}
	lists.For(&rules.Platform{})
	if _, err := Observe(ctx, consul.Client, inv, bes, nil, lists); err != nil {
		t.Fatal(err)
	}
	if be.lists != 2 {
		t.Errorf("lists after a new description: %d, want 2", be.lists)
	}
}

// TestScaleWorkWatchWakesOnlyForItsOrders: Consul answers a blocking read
// of an empty prefix with the whole store's index, so a host watching an
// empty folder of orders would wake on every write in the cluster. The
// anchor key keeps the folder from being empty: an unrelated write leaves
// the watch asleep, an order wakes it.
func TestScaleWorkWatchWakesOnlyForItsOrders(t *testing.T) {
	inv := needConsul(t)
	ctx := context.Background()
	wakes := func(o Orders, write func()) time.Duration {
		t.Helper()
		_, _, index, err := o.List(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		done := make(chan time.Duration, 1)
		begin := time.Now()
		go func() {
			_, _, _, _ = o.List(ctx, &api.QueryOptions{WaitIndex: index, WaitTime: 3 * time.Second})
			done <- time.Since(begin)
		}()
		time.Sleep(200 * time.Millisecond)
		write()
		return <-done
	}
	unrelated := func() {
		if err := inv.Store.PutStatus(ctx, []byte(`{"leader":"x"}`)); err != nil {
			t.Fatal(err)
		}
	}
	bare := NewOrders(inv.Store, "bare-host")
	if d := wakes(bare, unrelated); d > 2*time.Second {
		t.Logf("an empty folder's watch slept through an unrelated write (%s): Consul changed, the anchor may no longer be needed", d)
	}
	anchored := NewOrders(inv.Store, "anchored-host")
	if err := anchored.Anchor(ctx); err != nil {
		t.Fatal(err)
	}
	if err := anchored.Anchor(ctx); err != nil {
		t.Fatalf("anchoring twice: %v", err)
	}
	if d := wakes(anchored, unrelated); d < 2*time.Second {
		t.Errorf("the anchored folder's watch woke after %s on a write elsewhere", d)
	}
	if d := wakes(anchored, func() {
		if _, err := anchored.Put(ctx, state.WorkOrder{Kind: state.WorkDestroy, MachineID: "m1", Backend: "b", Timeout: time.Minute}); err != nil {
			t.Fatal(err)
		}
	}); d > 2*time.Second {
		t.Errorf("the anchored folder's watch slept through an order (%s)", d)
	}
	orders, bad, _, err := anchored.List(ctx, nil)
	if err != nil || len(bad) != 0 || len(orders) != 1 {
		t.Errorf("orders %v, bad %v, %v: the anchor is no order", orders, bad, err)
	}
}

// flipBackend lists the machine x stopped the first time it is asked and
// running after that: a machine caught in the instant it restarted.
type flipBackend struct {
	countingBackend
}

func (b *flipBackend) List(context.Context) ([]backends.Instance, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.lists++
	return []backends.Instance{{MachineID: "x", MachineType: "worker", Running: b.lists > 1}}, nil
}

// TestScaleAReusedListNeverConfirmsARemoval: the leader spaces its lists
// of a backend, but the pass that confirms a removal lists afresh. One list
// caught x stopped in the instant it restarted; reused by the next pass,
// that one list would have made two passes agree and reaped a machine that
// was back. (TestSecureRotateGossip saw it: a restarted member reaped.)
func TestScaleAReusedListNeverConfirmsARemoval(t *testing.T) {
	inv := needConsul(t)
	ctx := context.Background()
	p := platform(t, `
policy {
  grace_period = "1h"
}
machine "server" {
  min           = 1
  consul_server = true
}
machine "worker" {
  min = 1
}
`)
	// The leader is the test's Consul: a live server member.
	self, err := consul.Client.Agent().NodeName()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := inv.Put(ctx, Record{ID: self, Type: "server", Backend: "local", State: StateJoined}); err != nil {
		t.Fatal(err)
	}
	if _, err := inv.Put(ctx, Record{ID: "x", Type: "worker", Backend: "local", State: StateJoined}); err != nil {
		t.Fatal(err)
	}
	be := &flipBackend{}
	be.inv = inv
	fake := clocktest.NewFake(time.Now())
	ex := newExecutor(inv)
	ex.Clock = fake
	r := &Reconciler{
		Consul: consul.Client, Inventory: inv, Executor: ex,
		Platform: func() *rules.Platform { return p },
		Backends: func() map[string]backends.Backend { return map[string]backends.Backend{"local": be} },
		Self:     self, Clock: fake, Log: hclog.NewNullLogger(),
		Lists: &Lists{MinGap: time.Hour},
	}
	d, err := r.Pass(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !d.FreshLists {
		t.Fatalf("the pass that first saw x stopped asks for no fresh lists: %+v", d)
	}
	fake.Advance(confirmAfter)
	if d, err = r.Pass(ctx); err != nil {
		t.Fatal(err)
	}
	ex.Wait()
	for _, a := range d.Actions {
		if a.Kind == state.KindReap {
			t.Fatalf("x reaped on one list, read twice: %+v", d.Actions)
		}
	}
	if be.lists != 2 {
		t.Errorf("lists: %d, want 2 (the confirming pass asks again)", be.lists)
	}
}

// watchingBackend is a backend whose Watch reports x stopped whenever the
// test says so.
type watchingBackend struct {
	countingBackend
	stop chan struct{}
}

func (b *watchingBackend) Watch(ctx context.Context, stopped func(string)) error {
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-b.stop:
			stopped("x")
		}
	}
}

// TestScaleABackendsStopWakesAPass: a machine its backend reports stopped
// wakes the leader at once, and that pass asks the backend afresh however
// recently it listed, rather than waiting for the failure detector or the
// resync an hour away.
func TestScaleABackendsStopWakesAPass(t *testing.T) {
	inv := needConsul(t)
	self, p := quietLeader(t, inv)
	be := &watchingBackend{stop: make(chan struct{})}
	passes := make(chan time.Time, 100)
	r := &Reconciler{
		Consul: consul.Client, Inventory: inv, Executor: newExecutor(inv),
		Platform: func() *rules.Platform { return p },
		Backends: func() map[string]backends.Backend { return map[string]backends.Backend{"local": be} },
		Self:     self, Clock: clock.Real{}, Log: hclog.NewNullLogger(),
		Publish: func(state.Status) { passes <- time.Now() },
		Lists:   &Lists{MinGap: time.Hour},
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	defer func() {
		cancel()
		<-done
	}()
	// The passes of the start (the watches' first answers) settle.
	quiet := time.NewTimer(0)
	for settled := false; !settled; {
		quiet.Reset(2 * time.Second)
		select {
		case <-passes:
		case <-quiet.C:
			settled = true
		}
	}
	be.mu.Lock()
	before := be.lists
	be.mu.Unlock()
	t0 := time.Now()
	be.stop <- struct{}{}
	select {
	case at := <-passes:
		t.Logf("a pass %s after the backend's report", at.Sub(t0).Round(time.Millisecond))
	case <-time.After(5 * time.Second):
		t.Fatal("no pass within 5 s of a backend's report")
	}
	be.mu.Lock()
	defer be.mu.Unlock()
	if be.lists != before+1 {
		t.Errorf("lists: %d before the report, %d after; want one more (asked afresh within the gap)", before, be.lists)
	}
}

// TestScaleAHostsListWakesTheLeader: a host that publishes a changed list
// of its machines (one stopped) wakes the leader at once; an offer that
// changed only in its free memory and time does not make a pass.
func TestScaleAHostsListWakesTheLeader(t *testing.T) {
	inv := needConsul(t)
	ctx := context.Background()
	self, p := quietLeader(t, inv)
	offer := func(running bool, free uint64) {
		t.Helper()
		o := state.Offer{Machine: "h1", Checked: time.Now(), Backends: map[string]state.BackendOffer{"engine": {
			Available: true, Listed: true, FreeMemory: free,
			Instances: []backends.Instance{{MachineID: "web-1", MachineType: "web", Running: running}},
		}}}
		b, _ := json.Marshal(o)
		if _, err := inv.Store.PutOffer(ctx, "h1", b); err != nil {
			t.Fatal(err)
		}
	}
	offer(true, 1<<30)
	passes := make(chan time.Time, 100)
	r := &Reconciler{
		Consul: consul.Client, Inventory: inv, Executor: newExecutor(inv),
		Platform: func() *rules.Platform { return p },
		Backends: func() map[string]backends.Backend { return map[string]backends.Backend{"local": &countingBackend{}} },
		Self:     self, Clock: clock.Real{}, Log: hclog.NewNullLogger(),
		Publish: func(state.Status) { passes <- time.Now() },
	}
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- r.Run(rctx) }()
	defer func() {
		cancel()
		<-done
	}()
	settle := func() {
		for {
			select {
			case <-passes:
			case <-time.After(2 * time.Second):
				return
			}
		}
	}
	settle()
	offer(true, 2<<30)
	select {
	case <-passes:
		t.Fatal("a pass for an offer whose list did not change")
	case <-time.After(1500 * time.Millisecond):
	}
	t0 := time.Now()
	offer(false, 2<<30)
	select {
	case at := <-passes:
		t.Logf("a pass %s after the host's list changed", at.Sub(t0).Round(time.Millisecond))
	case <-time.After(5 * time.Second):
		t.Fatal("no pass within 5 s of a host's changed list")
	}
}

// quietLeader is a one-server cluster led by the test's Consul node, with a
// resync an hour away: any pass within a test's time is one an event woke.
// It returns the leader's ID and the description.
func quietLeader(t *testing.T, inv *Inventory) (string, *rules.Platform) {
	t.Helper()
	self, err := consul.Client.Agent().NodeName()
	if err != nil {
		t.Fatal(err)
	}
	p := platform(t, `
policy {
  resync_interval = "1h"
}
machine "server" {
  min           = 1
  consul_server = true
}
`)
	if _, err := inv.Put(context.Background(), Record{ID: self, Type: "server", Backend: "local", State: StateJoined}); err != nil {
		t.Fatal(err)
	}
	return self, p
}

// TestScaleModulesWatchWakesOnlyForModules: a cluster that never added a
// module has no modules key, and Consul ends a blocking read of a missing
// key on any write in the KV: every member's modules watch woke on each of
// the leader's status writes. With the leader's anchor beside it, the
// watch sleeps through writes elsewhere and wakes for the modules, and an
// anchored KV still reads as holding no modules.
func TestScaleModulesWatchWakesOnlyForModules(t *testing.T) {
	inv := needConsul(t)
	ctx := context.Background()
	store := inv.Store
	wakes := func(write func()) time.Duration {
		t.Helper()
		_, meta, err := store.Modules(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		done := make(chan time.Duration, 1)
		begin := time.Now()
		go func() {
			_, _, _ = store.Modules(ctx, &api.QueryOptions{WaitIndex: meta.LastIndex, WaitTime: 3 * time.Second})
			done <- time.Since(begin)
		}()
		time.Sleep(200 * time.Millisecond)
		write()
		return <-done
	}
	unrelated := func() {
		if err := store.PutStatus(ctx, []byte(`{"leader":"x"}`)); err != nil {
			t.Fatal(err)
		}
	}
	if d := wakes(unrelated); d > 2*time.Second {
		t.Logf("the missing key's watch slept through an unrelated write (%s): Consul changed, the anchor may no longer be needed", d)
	}
	for range 2 {
		if err := store.AnchorModules(ctx); err != nil {
			t.Fatalf("anchor: %v", err)
		}
	}
	if pair, _, err := store.Modules(ctx, nil); err != nil || pair != nil {
		t.Fatalf("anchored, no module added: got %v, %v; want no modules", pair, err)
	}
	if d := wakes(unrelated); d < 2*time.Second {
		t.Errorf("the anchored modules' watch woke after %s on a write elsewhere", d)
	}
	if d := wakes(func() {
		if _, err := store.CASModules(ctx, []byte(`[]`), 0); err != nil {
			t.Fatal(err)
		}
	}); d > 2*time.Second {
		t.Errorf("the anchored modules' watch slept through a module change (%s)", d)
	}
	if pair, _, err := store.Modules(ctx, nil); err != nil || pair == nil || string(pair.Value) != "[]" {
		t.Errorf("modules after a write: got %v, %v; want []", pair, err)
	}
}
