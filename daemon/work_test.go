package daemon

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"

	"github.com/raptiformica/raptiformica/backends"
	"github.com/raptiformica/raptiformica/enrol"
	"github.com/raptiformica/raptiformica/internal/clock"
	"github.com/raptiformica/raptiformica/internal/consulclient"
	"github.com/raptiformica/raptiformica/internal/kvschema"
	"github.com/raptiformica/raptiformica/internal/nodeconfig"
	"github.com/raptiformica/raptiformica/internal/state"
	"github.com/raptiformica/raptiformica/reconcile"
	"github.com/raptiformica/raptiformica/rules"
)

// hostBackend stands in for a backend on the host that takes work orders:
// the orders' way there and back through Consul is what these tests test,
// not a backend. A spawn waits for gate when it is set.
type hostBackend struct {
	brokenBackend
	gate chan struct{}

	mu        sync.Mutex
	spawns    []string
	destroyed []string
	nodes     []nodeconfig.Config
}

func (b *hostBackend) Available(context.Context) error { return nil }

func (b *hostBackend) Spawn(ctx context.Context, spec backends.Spec) (backends.Instance, error) {
	if b.gate != nil {
		select {
		case <-b.gate:
		case <-ctx.Done():
			return backends.Instance{}, ctx.Err()
		}
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.spawns = append(b.spawns, spec.Node.MachineID)
	b.nodes = append(b.nodes, spec.Node)
	return backends.Instance{MachineID: spec.Node.MachineID, MachineType: spec.Node.MachineType, Address: "10.9.0.7", Running: true}, nil
}

func (b *hostBackend) Destroy(_ context.Context, id string) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.destroyed = append(b.destroyed, id)
	return nil
}

func (b *hostBackend) List(context.Context) ([]backends.Instance, error) { return nil, nil }

func (b *hostBackend) calls() (spawns, destroyed []string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]string{}, b.spawns...), append([]string{}, b.destroyed...)
}

// workLab is a real Consul, a worker for its one node (the host), and what
// a leader needs to give that host orders.
type workLab struct {
	inv       *reconcile.Inventory
	store     *kvschema.Store
	client    *api.Client
	host      string
	be        *hostBackend
	published chan struct{}
	p         *rules.Platform
}

func newWorkLab(t *testing.T, gate chan struct{}) *workLab {
	t.Helper()
	return newWorkLabVia(t, gate, nil)
}

// newWorkLabVia is newWorkLab with the host's requests to Consul going
// through via, when it is set.
func newWorkLabVia(t *testing.T, gate chan struct{}, via http.RoundTripper) *workLab {
	t.Helper()
	consul := startTestConsul(t)
	hostStore := kvschema.New(consul.Client)
	if via != nil {
		cfg := api.DefaultConfig()
		cfg.Address, cfg.Scheme, cfg.Token, cfg.HttpClient = consul.Addr, "http", "", &http.Client{Transport: via}
		cl, err := api.NewClient(cfg)
		if err != nil {
			t.Fatal(err)
		}
		hostStore = kvschema.New(cl)
	}
	host, err := consul.Client.Agent().NodeName()
	if err != nil {
		t.Fatal(err)
	}
	l := &workLab{
		store: kvschema.New(consul.Client), client: consul.Client, host: host, be: &hostBackend{gate: gate}, published: make(chan struct{}, 16),
		p: &rules.Platform{Cluster: "c", Policy: rules.Policy{ProvisionTimeout: 30 * time.Second, BackoffInitial: time.Second, BackoffMax: 10 * time.Second},
			Machines: map[string]rules.MachineType{"web": {Name: "web", Min: 1, Backends: []string{"engine"}}}},
	}
	l.inv = &reconcile.Inventory{Store: l.store}
	w := &worker{
		orders:   reconcile.NewOrders(hostStore, host),
		backends: func() map[string]backends.Backend { return map[string]backends.Backend{"engine": l.be} },
		env:      backends.Env{ClusterDir: "/host/cluster", ConsulBinary: "/host/consul"},
		published: func(_ context.Context, write func()) uint64 {
			write()
			select {
			case l.published <- struct{}{}:
			default:
			}
			return 1
		},
		clock: clock.Real{}, log: hclog.NewNullLogger(),
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = w.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return l
}

// executor is a leader's executor; the node configs it writes name the
// leader's own folders, which the host replaces with its own.
func (l *workLab) executor() *reconcile.Executor {
	return &reconcile.Executor{
		Inventory: l.inv, Consul: l.client, Clock: clock.Real{}, Log: hclog.NewNullLogger(),
		NodeConfig: func(_ context.Context, p *rules.Platform, id string, mt rules.MachineType, backend string) (nodeconfig.Config, error) {
			return nodeconfig.Config{MachineID: id, MachineType: mt.Name, Cluster: p.Cluster, Backend: backend, ClusterDir: "/leader/cluster", ConsulBinary: "/leader/consul"}, nil
		},
		Hooks: &reconcile.HookRunner{Log: hclog.NewNullLogger(), Clock: clock.Real{}},
	}
}

func (l *workLab) records(t *testing.T) map[string]reconcile.Record {
	t.Helper()
	recs, _, err := l.inv.List(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	return recs
}

// TestWorkOrdersRunOnTheirHost: a spawn placed on another member is
// ordered there, run there once, and recorded by the leader with the
// machine's address and the index from which the host's lists know it; its
// destroy goes to the same host; the order is gone after each.
func TestWorkOrdersRunOnTheirHost(t *testing.T) {
	l := newWorkLab(t, nil)
	e := l.executor()
	ctx := context.Background()
	spawn := state.Action{Kind: state.KindSpawn, Type: "web", Backend: "engine", Host: l.host, Reason: "1 of min 1"}
	if err := e.Execute(ctx, l.p, nil, reconcile.Observed{Self: "leader"}, []state.Action{spawn}); err != nil {
		t.Fatal(err)
	}
	e.Wait()
	recs := l.records(t)
	if len(recs) != 1 {
		t.Fatalf("records: %+v", recs)
	}
	var rec reconcile.Record
	for _, r := range recs {
		rec = r
	}
	if rec.State != reconcile.StateJoining || rec.Host != l.host || rec.Address != "10.9.0.7" || rec.HostSince == 0 {
		t.Errorf("record after the spawn: %+v, want joining on %s at 10.9.0.7 with the outcome's index", rec, l.host)
	}
	spawns, _ := l.be.calls()
	if len(spawns) != 1 || spawns[0] != rec.ID {
		t.Errorf("spawns on the host: %v, want [%s]", spawns, rec.ID)
	}
	if n := l.be.nodes[0]; n.ClusterDir != "/host/cluster" || n.ConsulBinary != "/host/consul" {
		t.Errorf("the host spawned with the leader's folders: %+v", n)
	}
	assertNoOrders(t, l)
	select {
	case <-l.published:
	case <-time.After(5 * time.Second):
		t.Error("the host did not publish its offer again after the order")
	}

	reap := state.Action{Kind: state.KindReap, MachineID: rec.ID, Type: "web", Backend: "engine", Host: l.host, Reason: "test"}
	if err := e.Execute(ctx, l.p, nil, reconcile.Observed{Self: "leader", Records: recs}, []state.Action{reap}); err != nil {
		t.Fatal(err)
	}
	e.Wait()
	if _, destroyed := l.be.calls(); len(destroyed) != 1 || destroyed[0] != rec.ID {
		t.Errorf("destroys on the host: %v, want [%s]", destroyed, rec.ID)
	}
	if recs := l.records(t); len(recs) != 0 {
		t.Errorf("records after the destroy: %+v", recs)
	}
	assertNoOrders(t, l)
}

// TestWorkOrderOutlivesItsLeader: a leader that stops while its host runs a
// spawn leaves the order; the next leader resumes it from the record, and
// the machine is made once.
func TestWorkOrderOutlivesItsLeader(t *testing.T) {
	gate := make(chan struct{})
	l := newWorkLab(t, gate)
	first := l.executor()
	lctx, lose := context.WithCancel(context.Background())
	spawn := state.Action{Kind: state.KindSpawn, Type: "web", Backend: "engine", Host: l.host}
	if err := first.Execute(lctx, l.p, nil, reconcile.Observed{Self: "leader"}, []state.Action{spawn}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the host claims the order", func() bool {
		orders, _, _, err := reconcile.NewOrders(l.store, l.host).List(context.Background(), nil)
		for _, o := range orders {
			return err == nil && o.State == state.WorkRunning
		}
		return false
	})
	// The claim took the new machine's credentials out of KV.
	orders, _, _, _ := reconcile.NewOrders(l.store, l.host).List(context.Background(), nil)
	for _, o := range orders {
		if o.Node != nil {
			t.Errorf("a claimed order still carries the node config: %+v", o.Node)
		}
	}
	lose()
	first.Wait()

	next := l.executor()
	recs := l.records(t)
	if err := next.Execute(context.Background(), l.p, nil, reconcile.Observed{Self: "leader-2", Records: recs}, nil); err != nil {
		t.Fatal(err)
	}
	if got := next.InFlight(); len(got) != 1 {
		t.Fatalf("in flight for the new leader: %+v, want the resumed spawn", got)
	}
	close(gate)
	next.Wait()
	for _, r := range l.records(t) {
		if r.State != reconcile.StateJoining || r.Address != "10.9.0.7" {
			t.Errorf("record after the resumed spawn: %+v", r)
		}
	}
	if spawns, _ := l.be.calls(); len(spawns) != 1 {
		t.Errorf("spawns: %v, want one", spawns)
	}
	assertNoOrders(t, l)
}

// answerLost sends each request on, and loses the answer of the first
// check-and-set write to a work order (not the folder's anchor) while it is
// armed: the write is
// applied, its writer hears an error, as when the Raft leader dies between
// committing a write and answering it.
type answerLost struct {
	armed atomic.Bool
	lost  atomic.Int32
	// unsent loses the request itself instead: the write is never made.
	unsent bool
}

func (a *answerLost) RoundTrip(req *http.Request) (*http.Response, error) {
	hit := req.Method == http.MethodPut && strings.HasPrefix(req.URL.Path, "/v1/kv/"+kvschema.Work) &&
		!strings.HasSuffix(req.URL.Path, "/.watch") && req.URL.Query().Has("cas")
	if hit && a.unsent && a.armed.CompareAndSwap(true, false) {
		a.lost.Add(1)
		return nil, errors.New("connection reset: the request was lost")
	}
	resp, err := http.DefaultTransport.RoundTrip(req)
	if err != nil || !hit || !a.armed.CompareAndSwap(true, false) {
		return resp, err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	a.lost.Add(1)
	return nil, errors.New("EOF: the answer was lost")
}

// TestWorkOrderClaimWhoseAnswerIsLost: the host's claim of an order is
// applied but its answer lost. The order then reads as running while
// nothing runs it, which is also how an order reads that the host's last
// agent left behind; the host knows its own claim, runs the spawn once,
// and the leader records the machine, never a failure.
func TestWorkOrderClaimWhoseAnswerIsLost(t *testing.T) {
	testClaimLost(t, &answerLost{})
}

// TestWorkOrderClaimNeverSent: the claim fails before it reaches Consul,
// so nothing changes that would wake the host's watch of its orders; the
// host reads them again at once, claims the order and runs it, well
// within the provision timeout.
func TestWorkOrderClaimNeverSent(t *testing.T) {
	testClaimLost(t, &answerLost{unsent: true})
}

func testClaimLost(t *testing.T, lossy *answerLost) {
	lossy.armed.Store(true)
	l := newWorkLabVia(t, nil, lossy)
	e := l.executor()
	spawn := state.Action{Kind: state.KindSpawn, Type: "web", Backend: "engine", Host: l.host}
	if err := e.Execute(context.Background(), l.p, nil, reconcile.Observed{Self: "leader"}, []state.Action{spawn}); err != nil {
		t.Fatal(err)
	}
	e.Wait()
	if lossy.lost.Load() != 1 {
		t.Fatalf("answers lost: %d, want the claim's", lossy.lost.Load())
	}
	recs := l.records(t)
	if len(recs) != 1 {
		t.Fatalf("records: %+v, want the one spawned", recs)
	}
	for _, r := range recs {
		if r.State != reconcile.StateJoining || r.Address != "10.9.0.7" {
			t.Errorf("record after a claim whose answer was lost: %+v, want joining at the machine's address", r)
		}
	}
	if spawns, _ := l.be.calls(); len(spawns) != 1 {
		t.Errorf("spawns: %v, want one", spawns)
	}
	assertNoOrders(t, l)
}

// TestWorkOrderForAHostThatIsGone: the leader never waits on a host that
// is not an alive member: the order it did not start is taken back, and
// its record goes (nothing was made), the outcome saying why.
func TestWorkOrderForAHostThatIsGone(t *testing.T) {
	l := newWorkLab(t, nil)
	e := l.executor()
	spawn := state.Action{Kind: state.KindSpawn, Type: "web", Backend: "engine", Host: "gone-1"}
	begin := time.Now()
	if err := e.Execute(context.Background(), l.p, nil, reconcile.Observed{Self: "leader"}, []state.Action{spawn}); err != nil {
		t.Fatal(err)
	}
	e.Wait()
	if d := time.Since(begin); d > 10*time.Second {
		t.Errorf("the leader waited %s on a host that is not a member", d)
	}
	// Nothing was made: the record goes, and the need is planned again.
	if recs := l.records(t); len(recs) != 0 {
		t.Errorf("records: %+v, want none: the order was taken back before anything was made", recs)
	}
	if o := e.Recent(); len(o) == 0 || !strings.Contains(o[0].Error, "host gone-1 is not an alive member") || !strings.Contains(o[0].Error, "taken back") {
		t.Errorf("outcome %+v, want an error saying the host is gone and the order taken back", o)
	}
	orders, _, _, err := reconcile.NewOrders(l.store, "gone-1").List(context.Background(), nil)
	if err != nil || len(orders) != 0 {
		t.Errorf("orders left for the gone host: %+v (%v)", orders, err)
	}
}

func assertNoOrders(t *testing.T, l *workLab) {
	t.Helper()
	orders, bad, _, err := reconcile.NewOrders(l.store, l.host).List(context.Background(), nil)
	if err != nil || len(orders)+len(bad) != 0 {
		t.Errorf("work orders left: %+v %v (%v)", orders, bad, err)
	}
}

// TestWorkOrdersAreTheirHostsOnly: a spawn's order carries the new
// machine's credentials, so neither another client nor a read-only token
// reads a client's orders, nor does another client write its offer; a
// client made before work orders existed is granted its own when the
// leader gives it one, and can then claim it.
func TestWorkOrdersAreTheirHostsOnly(t *testing.T) {
	a, _ := startAgent(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	stores := map[string]*kvschema.Store{}
	clientOf := func(id string) reconcile.Orders {
		t.Helper()
		tok, err := enrol.MachineToken(ctx, a.consul, id)
		if err != nil {
			t.Fatal(err)
		}
		c, err := consulclient.New(consulclient.Target{Host: a.Config.BindAddr, HTTPPort: a.Config.ConsulHTTPPort, Token: tok})
		if err != nil {
			t.Fatal(err)
		}
		stores[id] = kvschema.New(c)
		return reconcile.NewOrders(stores[id], "w1")
	}
	w1, w2 := clientOf("w1"), clientOf("w2")
	// An offer is its machine's word: another client cannot write it.
	if _, err := stores["w1"].PutOffer(ctx, "w1", []byte(`{"machine":"w1","backends":{}}`)); err != nil {
		t.Errorf("w1 writes its own offer: %v", err)
	}
	if _, err := stores["w2"].PutOffer(ctx, "w1", []byte(`{"machine":"w1","backends":{"docker":{"available":true}}}`)); err == nil {
		t.Error("w2 wrote w1's offer")
	}
	// w1 as a client made by an older version: its policy lacks orders.
	old := strings.Replace(kvschema.MachineRules("w1"), `key_prefix "`+kvschema.Work+`w1/" { policy = "write" }`, "", 1)
	if old == kvschema.MachineRules("w1") {
		t.Fatal("the machine rules no longer grant work orders as this test expects")
	}
	if _, err := enrol.EnsurePolicy(ctx, a.consul, enrol.MachinePolicy("w1"), "test", old); err != nil {
		t.Fatal(err)
	}

	leader := reconcile.NewOrders(a.store, "w1")
	order, err := leader.Put(ctx, state.WorkOrder{Kind: state.WorkSpawn, MachineID: "web-1", Backend: "engine", Timeout: time.Minute,
		Node: &nodeconfig.Config{MachineID: "web-1", ACLToken: "secret-of-web-1"}})
	if err != nil {
		t.Fatal(err)
	}
	if got, ok, _, err := w2.Get(ctx, "web-1", nil); ok || err == nil {
		t.Errorf("another client read w1's order: %+v, %v", got, err)
	}
	// Nor does a read-only token, which reads the cluster's folder.
	ro, err := enrol.EnsurePolicy(ctx, a.consul, "raptiformica-test-read-only", "test", kvschema.ReadOnlyRules)
	if err != nil {
		t.Fatal(err)
	}
	roTok, _, err := a.consul.ACL().TokenCreate(&api.ACLToken{Policies: []*api.ACLTokenPolicyLink{{ID: ro.ID}}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	roClient, err := consulclient.New(consulclient.Target{Host: a.Config.BindAddr, HTTPPort: a.Config.ConsulHTTPPort, Token: roTok.SecretID})
	if err != nil {
		t.Fatal(err)
	}
	if got, ok, _, err := reconcile.NewOrders(kvschema.New(roClient), "w1").Get(ctx, "web-1", nil); ok || err == nil {
		t.Errorf("a read-only token read w1's order: %+v, %v", got, err)
	}
	if got, _, _, _ := w1.List(ctx, nil); len(got) != 0 {
		t.Errorf("w1 read its orders before it was granted them: %+v", got)
	}

	if err := enrol.GrantWork(a.consul)(ctx, "w1"); err != nil {
		t.Fatal(err)
	}
	got, ok, _, err := w1.Get(ctx, "web-1", nil)
	if err != nil || !ok || got.Node == nil || got.Node.ACLToken != "secret-of-web-1" {
		t.Fatalf("w1 reads its order after the grant: %+v %v %v", got, ok, err)
	}
	got.State = state.WorkRunning
	if _, err := w1.Put(ctx, got); err != nil {
		t.Errorf("w1 claims its order: %v", err)
	}
	if _, ok, _, err := w2.Get(ctx, "web-1", nil); ok || err == nil {
		t.Errorf("another client reads w1's order after the grant: %v %v", ok, err)
	}
	order.State = state.WorkFailed
	if _, err := w2.Put(ctx, order); err == nil {
		t.Error("another client wrote w1's order")
	}
}
