package reconcile

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"net"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"

	"github.com/raptiformica/raptiformica/backends"
	"github.com/raptiformica/raptiformica/internal/clock"
	"github.com/raptiformica/raptiformica/internal/consulclient"
	"github.com/raptiformica/raptiformica/internal/kvschema"
	"github.com/raptiformica/raptiformica/internal/state"
	"github.com/raptiformica/raptiformica/internal/telemetry"
	"github.com/raptiformica/raptiformica/internal/watch"
	"github.com/raptiformica/raptiformica/rules"
)

// backendQueryTimeout bounds a backend's Available and List together: a
// backend that has not answered by then is taken as not listed this pass
// (nothing is judged from it), not waited for.
const backendQueryTimeout = 45 * time.Second

// Observe reads what the planner needs: the inventory, Consul's LAN members
// and every backend's machines. A backend that cannot be listed is left out
// of Instances and named in BackendErrors. Only a failure to read Consul is
// an error.
//
// With lists, a backend asked less than lists.MinGap ago is not asked
// again: its last answer is reused, and ListedAt says at which inventory
// index it was taken, so that a machine recorded since is not judged gone
// for missing from it. Nil asks every backend.
func Observe(ctx context.Context, consul *api.Client, inv *Inventory, bes map[string]backends.Backend, m *telemetry.Metrics, lists *Lists) (Observed, error) {
	obs := Observed{Members: map[string]Member{}, Instances: map[string]map[string]backends.Instance{}, BackendErrors: map[string]string{}, LocalOnly: map[string]bool{}, Scopes: map[string]string{}, ListedAt: map[string]uint64{}}
	recs, bad, index, err := inv.ListAll(ctx, nil)
	if err != nil {
		return obs, err
	}
	obs.Records, obs.Bad = recs, bad
	mctx, cancel := context.WithTimeout(ctx, consulCallTimeout)
	members, err := consulclient.Members(mctx, consul)
	cancel()
	if err != nil {
		return obs, fmt.Errorf("list consul members: %w", err)
	}
	servers, err := raftServers(ctx, consul)
	if err != nil {
		return obs, err
	}
	healthy := serverHealth(ctx, consul, recs)
	for _, mb := range members {
		// A member's gossip tags are its own word: a client that holds
		// the gossip key may restart its Consul as a server and say
		// role=consul. Only Raft's configuration says who is a server.
		s, inRaft := servers.of(mb.Name, mb.Addr)
		obs.Members[mb.Name] = Member{
			Name: mb.Name, Address: mb.Addr, Status: SerfStatus(mb.Status),
			Server:    inRaft,
			RaftVoter: s.voter,
			Voter:     s.voter && healthy[s.id],
			Type:      recs[mb.Name].Type,
		}
	}
	// Backends are asked at once: one slow to answer (an exec command up to
	// its query_timeout, a pool host's KV) must not hold up the others.
	answers := make([]answer, 0, len(bes))
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, name := range sortedKeys(bes) {
		be := bes[name]
		c, at, ok, gen := lists.recent(name)
		if ok {
			answers = append(answers, c)
			obs.ListedAt[name] = at
			continue
		}
		obs.ListedAt[name] = index
		wg.Add(1)
		go func() {
			defer wg.Done()
			a := answer{name: name}
			if lv, ok := be.(backends.LocalView); ok && lv.ListsOnlyLocal() {
				a.localOnly = true
			}
			asked := time.Now()
			bctx, cancel := context.WithTimeout(ctx, backendQueryTimeout)
			defer cancel()
			a.availErr = be.Available(bctx)
			a.insts, a.listErr = be.List(bctx)
			if sc, ok := be.(backends.Scoped); ok && a.availErr == nil {
				a.scope, _ = sc.Scope(bctx)
			}
			lists.keep(name, a, index, gen, asked)
			mu.Lock()
			answers = append(answers, a)
			mu.Unlock()
		}()
	}
	wg.Wait()
	for _, a := range answers {
		if a.localOnly {
			obs.LocalOnly[a.name] = true
		}
		if a.scope != "" {
			obs.Scopes[a.name] = a.scope
		}
		up := 1.0
		if a.availErr != nil {
			obs.BackendErrors[a.name] = "unavailable: " + a.availErr.Error()
			up = 0
		}
		if a.listErr != nil {
			obs.BackendErrors[a.name] = "list failed: " + a.listErr.Error()
			up = 0
			if m != nil {
				m.BackendErrors.WithLabelValues(a.name).Inc()
			}
		} else {
			byID := make(map[string]backends.Instance, len(a.insts))
			for _, in := range a.insts {
				byID[in.MachineID] = in
			}
			obs.Instances[a.name] = byID
		}
		if m != nil {
			m.BackendUp.WithLabelValues(a.name).Set(up)
		}
	}
	// Every pass: placement chooses among them, and the machines other
	// members made are judged from the lists in their offers.
	var badOffers []state.Bad
	obs.Offers, badOffers = liveOffers(ctx, inv, members)
	obs.Bad = append(obs.Bad, badOffers...)
	return obs, nil
}

// answer is what one backend said in a pass.
type answer struct {
	name      string
	localOnly bool
	insts     []backends.Instance
	listErr   error
	availErr  error
	scope     string
}

// Lists keeps each backend's last answer for MinGap: a burst of events
// (a hundred machines joining) makes a pass every few hundred
// milliseconds, and each would otherwise list every backend, which for an
// exec backend is a command and for a cloud an API call. Safe for
// concurrent use; the zero value (or nil) keeps nothing.
type Lists struct {
	MinGap time.Duration

	mu   sync.Mutex
	p    *rules.Platform       // the description the answers were for; guarded by mu
	last map[string]cachedList // by backend name; guarded by mu
	// gen counts the Forgets, so that a list asked before one is not
	// kept after it (a stop reported while the list was in flight).
	gen uint64 // guarded by mu
}

type cachedList struct {
	at    time.Time // when, on the monotonic clock
	index uint64    // the inventory index read before it was asked
	a     answer
}

// For forgets every answer when the description changed: its backends may
// be other ones under the same names.
func (l *Lists) For(p *rules.Platform) {
	if l == nil {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.p != p {
		l.p, l.last = p, nil
	}
}

// Forget drops the last answer of the backend named, or of every backend
// when name is empty: the next pass asks again (a backend said one of its
// machines stopped; a removal waits on a confirmation).
func (l *Lists) Forget(name string) {
	if l == nil {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.gen++
	if name == "" {
		l.last = nil
		return
	}
	delete(l.last, name)
}

// recent returns the backend's answer when it was asked less than MinGap
// ago, and the generation a list asked now is kept under.
func (l *Lists) recent(name string) (a answer, index uint64, ok bool, gen uint64) {
	if l == nil || l.MinGap <= 0 {
		return answer{}, 0, false, 0
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	c, found := l.last[name]
	if !found || time.Since(c.at) >= l.MinGap {
		return answer{}, 0, false, l.gen
	}
	return c.a, c.index, true, l.gen
}

// keep remembers a backend's answer, asked at asked after the inventory
// read at index, unless a Forget came since the ask (generation gen).
func (l *Lists) keep(name string, a answer, index, gen uint64, asked time.Time) {
	if l == nil || l.MinGap <= 0 {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.gen != gen {
		return
	}
	if l.last == nil {
		l.last = map[string]cachedList{}
	}
	l.last[name] = cachedList{at: asked, index: index, a: a}
}

// liveOffers reads the alive members' offers of backends; nil when they
// cannot be read (the planner then says nothing of them). An offer that
// does not parse is left out: it is its member's to fix.
func liveOffers(ctx context.Context, inv *Inventory, members []*api.AgentMember) (map[string]state.Offer, []state.Bad) {
	folder := state.Offers(inv.Store)
	all, refused, _, err := folder.List(ctx, nil)
	if err != nil {
		return nil, nil
	}
	out := map[string]state.Offer{}
	var bad []state.Bad
	for _, m := range members {
		if SerfStatus(m.Status) != state.MemberAlive {
			continue
		}
		if o, ok := all[m.Name]; ok {
			out[m.Name] = o
		}
	}
	for _, b := range refused {
		if id, _ := state.IDOf(kvschema.Offers, b.Key); alive(members, id) {
			bad = append(bad, b)
		}
	}
	return out, bad
}

// alive reports whether the member id is alive.
func alive(members []*api.AgentMember, id string) bool {
	for _, m := range members {
		if m.Name == id {
			return SerfStatus(m.Status) == state.MemberAlive
		}
	}
	return false
}

// raftSeat is one server of the Raft configuration.
type raftSeat struct {
	id, node, host string
	voter          bool
}

// raftSeats are the Raft configuration's servers, by Raft ID.
type raftSeats map[string]raftSeat

// of is the seat of the member named name at address addr: the one of
// the ID derived from its name (consulclient.NodeID), which every agent
// gives its Consul at a machine's first start; else, for a server whose
// Consul was started fresh (a recovery's survivor) or before IDs were
// derived, the one Raft lists under its name at its address, which no
// other machine holds.
func (rs raftSeats) of(name, addr string) (raftSeat, bool) {
	if s, ok := rs[consulclient.NodeID(name)]; ok {
		return s, true
	}
	for _, s := range rs {
		if s.node == name && s.host == addr {
			return s, true
		}
	}
	return raftSeat{}, false
}

// raftServers returns the servers of the Raft configuration and whether
// each is a voter.
//
// A voter is a proven server: a server Consul's leader adds to the
// configuration (as a non-voter, whatever answers on the server's
// gossip) is made a voter by autopilot only once the leader has read its
// Raft stats over RPC, which is mutual TLS where only a certificate that
// names pki.ServerName may serve. A client that restarts its Consul as a
// server, with the gossip key it holds and its own certificate, may be
// listed, but never as a voter. A pass cannot go on without the answer:
// where a server's credentials may go, and which servers are taken out of
// Raft, depend on it.
//
// It is read stale, from the leader's own Consul (a server): the Raft
// leader's answer can stall for seconds while it removes a dead server,
// and a server the local log has not seen promoted yet only waits a pass
// longer to be counted or to host a spawn.
func raftServers(ctx context.Context, consul *api.Client) (raftSeats, error) {
	ctx, cancel := context.WithTimeout(ctx, consulCallTimeout)
	defer cancel()
	raft, err := consul.Operator().RaftGetConfiguration((&api.QueryOptions{AllowStale: true}).WithContext(ctx))
	if err != nil {
		return nil, fmt.Errorf("read the raft configuration: %w", err)
	}
	out := make(raftSeats, len(raft.Servers))
	for _, s := range raft.Servers {
		host, _, err := net.SplitHostPort(s.Address)
		if err != nil {
			host = s.Address
		}
		out[s.ID] = raftSeat{id: s.ID, node: s.Node, host: host, voter: s.Voter}
	}
	return out, nil
}

// serverHealth returns, by Raft ID, the servers autopilot finds healthy.
// A server adds to quorum once it is a voter and healthy; a failed one is
// taken out of Raft (KindUnvote). Only a machine still joining, or
// failed, needs the answer, and autopilot's report comes from the Raft
// leader, which can stall for seconds while it removes a dead server, so
// it is read only then, with a short timeout; on any error the answer is
// "not yet", which only delays a join.
func serverHealth(ctx context.Context, consul *api.Client, recs map[string]Record) map[string]bool {
	healthy := map[string]bool{}
	// Only while a server joins, or comes back after failing (a partition
	// that healed).
	joining := false
	for _, r := range recs {
		joining = joining || r.State == StateSpawning || r.State == StateJoining || r.State == StateFailed || !r.FailedSince.IsZero()
	}
	if !joining {
		return healthy
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	health, err := consul.Operator().AutopilotServerHealth((&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return healthy
	}
	for _, s := range health.Servers {
		healthy[s.ID] = s.Healthy
	}
	return healthy
}

// SerfStatus names a serf member status code, as api.AgentMember carries it.
func SerfStatus(s int) state.MemberStatus {
	switch s {
	case 1:
		return state.MemberAlive
	case 2:
		return state.MemberLeaving
	case 3:
		return state.MemberLeft
	default:
		return state.MemberFailed
	}
}

// Reconciler is the leader's control loop.
type Reconciler struct {
	Consul    *api.Client
	Inventory *Inventory
	Executor  *Executor
	// Platform returns the last valid description.
	Platform func() *rules.Platform
	// Backends returns the backends of the current description.
	Backends func() map[string]backends.Backend
	// Self is this node's machine ID.
	Self    string
	Clock   clock.Clock
	Log     hclog.Logger
	Metrics *telemetry.Metrics
	// Wake is signalled when the description changes.
	Wake <-chan struct{}
	// Publish receives the status after every pass.
	Publish func(state.Status)
	// Lists, when set, spaces each backend's Available and List calls by
	// its MinGap across passes.
	Lists *Lists
	// Signals, when set, reads the signals of the types that scale on one
	// (package signals); without it such a type holds its count.
	Signals SignalReader

	termStart time.Time // set by Run
}

// SignalReader reads the signals of a description's types: the last
// reading of each, without blocking on a read (signals.Reader).
type SignalReader interface {
	Read(ctx context.Context, p *rules.Platform) map[string]state.Reading
}

// Run re-plans whenever the description, the membership or the inventory
// changes, and every resync interval; it blocks until ctx ends (leadership is
// lost or the agent stops), waits for the actions it started, and returns nil.
// A failed pass is retried with backoff; a successful one resets it.
func (r *Reconciler) Run(ctx context.Context) error {
	poke := make(chan struct{}, 1)
	wake := func() {
		select {
		case poke <- struct{}{}:
		default:
		}
	}
	logErr := func(what string) func(error) {
		return func(err error) { r.Log.Warn("watch failed", telemetry.KeyWatch, what, telemetry.KeyError, err) }
	}
	go watch.Loop(ctx, 5*time.Minute, r.healthQuery(), wake, logErr("health"))
	go watch.Loop(ctx, 5*time.Minute, r.inventoryQuery(ctx), wake, logErr("inventory"))
	defer r.Executor.Wait()
	go watch.Loop(ctx, 5*time.Minute, r.hostListsQuery(ctx), wake, logErr("offers"))
	bw := &Watches{Clock: r.Clock, Log: r.Log, Stopped: func(backend, id string) {
		r.Lists.Forget(backend)
		r.Log.Debug("backend reports a machine stopped", telemetry.KeyBackend, backend, telemetry.KeyMachineID, id)
		wake()
	}}
	defer bw.Stop()
	r.Executor.See(nil)
	r.termStart = r.Clock.Now()

	failures := 0
	next := time.Duration(0)
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-poke:
		case <-r.Wake:
		case <-r.Clock.After(next):
		}
		// Coalesce a burst of events into one pass.
		if clock.Sleep(ctx, r.Clock, 100*time.Millisecond) != nil {
			return nil
		}
		p := r.Platform()
		bw.Follow(ctx, r.Backends())
		d, err := r.Pass(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			failures++
			next = clock.Backoff{Initial: time.Second, Max: 30 * time.Second}.Delay(failures)
			r.Log.Error("reconcile failed", telemetry.KeyError, err, telemetry.KeyAttempt, failures)
			continue
		}
		failures = 0
		next = p.Policy.ResyncInterval
		if !d.NextCheck.IsZero() {
			next = min(next, d.NextCheck.Sub(r.Clock.Now())+10*time.Millisecond)
		}
	}
}

// Pass observes, plans and starts the actions once, and returns the plan.
func (r *Reconciler) Pass(ctx context.Context) (Decision, error) {
	begin := time.Now()
	now := r.Clock.Now()
	p := r.Platform()
	bes := r.Backends()
	st := state.Status{Leader: r.Self, Cluster: p.Cluster, LastReconcile: now}
	r.Lists.For(p)
	obs, err := Observe(ctx, r.Consul, r.Inventory, bes, r.Metrics, r.Lists)
	observed := time.Since(begin)
	var d Decision
	if err == nil {
		r.Executor.Snapshot(&obs)
		obs.Self, obs.TermStart = r.Self, r.termStart
		var bad []state.Bad
		obs.Provisioned, bad = ObserveProvisioned(ctx, r.Inventory, p)
		obs.Bad = append(obs.Bad, bad...)
		if err = r.observeSignals(ctx, p, &obs); err != nil {
			err = fmt.Errorf("read the scale states: %w", err)
		}
	}
	if err == nil {
		d = Plan(p, obs, now)
		r.keepScales(ctx, obs, d)
		if d.FreshLists {
			r.Lists.Forget("")
		}
		r.Executor.See(d.Seen)
		r.record(p, d, obs, now)
		err = r.Executor.Execute(ctx, p, bes, obs, d.Actions)
	}
	st.Types, st.Planned, st.Halted, st.Waiting, st.BackendErrors = d.Types, d.Actions, d.Halted, d.Waiting, obs.BackendErrors
	st.BadRecords = obs.Bad
	if r.Metrics != nil {
		r.Metrics.BadRecords.Set(float64(len(obs.Bad)))
	}
	for b := range obs.BackendErrors {
		for _, id := range sortedKeys(obs.Offers) {
			if id != obs.Self && obs.Offers[id].Backends[b].Available {
				if st.OfferedBy == nil {
					st.OfferedBy = map[string][]string{}
				}
				st.OfferedBy[b] = append(st.OfferedBy[b], id)
			}
		}
	}
	st.InFlight = r.Executor.InFlight()
	st.Recent = r.Executor.Recent()
	st.Duration = time.Since(begin).Round(time.Microsecond).String()
	result := "success"
	if err != nil {
		result, st.LastError = "error", err.Error()
	} else {
		st.LastSuccess = now
	}
	st.LastResult = result
	if r.Metrics != nil {
		r.Metrics.ReconcileDuration.Observe(time.Since(begin).Seconds())
		r.Metrics.ReconcileTotal.WithLabelValues(result).Inc()
		if err == nil {
			r.Metrics.LastSuccess.Set(float64(now.UnixNano()) / 1e9)
		}
	}
	if len(d.Actions) > 0 {
		r.Log.Info("reconcile pass", telemetry.KeyActions, len(d.Actions), telemetry.KeyDuration, st.Duration, telemetry.KeyObserve, observed.Round(time.Microsecond))
	}
	if r.Publish != nil {
		r.Publish(st)
	}
	return d, err
}

// observeSignals reads, when a type scales on a signal, the signals' last
// readings and the scale states kept in KV.
func (r *Reconciler) observeSignals(ctx context.Context, p *rules.Platform, obs *Observed) error {
	if !slices.ContainsFunc(p.MachineNames(), func(n string) bool { return p.Machines[n].Scale != nil }) {
		return nil
	}
	if r.Signals != nil {
		obs.Signals = r.Signals.Read(ctx, p)
	}
	states, bad, _, err := state.ScaleStates(r.Inventory.Store).List(ctx, nil)
	obs.Scales = states
	obs.Bad = append(obs.Bad, bad...)
	return err
}

// keepScales writes the scale states the pass decided where they differ
// from those kept, by check-and-set on what the pass read: a write lost to
// another leader is that leader's decision, read at the next pass.
func (r *Reconciler) keepScales(ctx context.Context, obs Observed, d Decision) {
	f := state.ScaleStates(r.Inventory.Store)
	for name, next := range d.Scales {
		prev, ok := obs.Scales[name]
		if ok && sameJSON(prev, next) {
			continue
		}
		if _, err := f.Put(ctx, next, prev.Index); err != nil {
			r.Log.Warn("keep the scale state", telemetry.KeyMachineType, name, telemetry.KeyError, err)
		}
		if ok && prev.Want != next.Want {
			r.Log.Info("scaled on its signal", telemetry.KeyMachineType, name, telemetry.KeyReason, next.Decision)
		}
	}
}

// sameJSON reports whether a and b are stored alike: times as they read
// back, without the monotonic clock a fresh one carries.
func sameJSON(a, b any) bool {
	x, errA := json.Marshal(a)
	y, errB := json.Marshal(b)
	return errA == nil && errB == nil && bytes.Equal(x, y)
}

func (r *Reconciler) record(p *rules.Platform, d Decision, obs Observed, now time.Time) {
	if r.Metrics == nil {
		return
	}
	r.Metrics.BackendBackoff.Reset()
	for name := range p.Backends {
		r.Metrics.BackendBackoff.WithLabelValues(name).Set(max(0, obs.BackoffUntil[name].Sub(now).Seconds()))
		// A counter that exists from 0 lets increase() see its first error.
		r.Metrics.BackendErrors.WithLabelValues(name)
	}
	halted := 0.0
	if d.Halted != "" {
		halted = 1
		r.Log.Warn("replacement halted", telemetry.KeyReason, d.Halted)
	}
	r.Metrics.Halted.Set(halted)
	r.Metrics.MachinesDesired.Reset()
	r.Metrics.MachinesMax.Reset()
	r.Metrics.MachinesLive.Reset()
	r.Metrics.MachinesPending.Reset()
	r.Metrics.MachinesFailed.Reset()
	r.Metrics.ScaleSignal.Reset()
	r.Metrics.ScaleWant.Reset()
	r.Metrics.ScaleSignalUp.Reset()
	for name, t := range d.Types {
		if sc := t.Scale; sc != nil {
			up := 0.0
			if sc.Reading.OK() {
				up = 1
				r.Metrics.ScaleSignal.WithLabelValues(name).Set(sc.Reading.Value)
			}
			r.Metrics.ScaleSignalUp.WithLabelValues(name).Set(up)
			r.Metrics.ScaleWant.WithLabelValues(name).Set(float64(sc.Want))
		}
		r.Metrics.MachinesDesired.WithLabelValues(name).Set(float64(t.Min))
		r.Metrics.MachinesMax.WithLabelValues(name).Set(float64(t.Max))
		r.Metrics.MachinesLive.WithLabelValues(name).Set(float64(t.Live))
		r.Metrics.MachinesPending.WithLabelValues(name).Set(float64(t.Pending))
		r.Metrics.MachinesFailed.WithLabelValues(name).Set(float64(t.Failed))
	}
}

// healthQuery watches the failure detector's checks (serfHealth), the only
// ones the planner reads: a member failing or recovering changes its
// serfHealth check. A service's own check flapping (the agent's HTTP
// check, an application's) would wake a pass on every member's every flap
// and carry every check of the datacenter in each answer, which at a
// thousand machines is what the leader would spend its time on.
func (r *Reconciler) healthQuery() watch.Query {
	return MembershipQuery(r.Consul)
}

// serfHealthFilter keeps the failure detector's checks of a health query.
const serfHealthFilter = `CheckID == "serfHealth"`

// MembershipQuery is a blocking query that reports a change when a member
// fails, recovers, joins or leaves: it watches the failure detector's
// checks. Its first answer counts as a change.
func MembershipQuery(consul *api.Client) watch.Query {
	var last uint64
	return func(q *api.QueryOptions) (uint64, bool, error) {
		q.Filter = serfHealthFilter
		checks, meta, err := consul.Health().State(api.HealthAny, q)
		if err != nil {
			return 0, false, err
		}
		h := fnv.New64a()
		sort.Slice(checks, func(i, j int) bool { return checks[i].Node+checks[i].CheckID < checks[j].Node+checks[j].CheckID })
		for _, c := range checks {
			fmt.Fprintf(h, "%s/%s/%s;", c.Node, c.CheckID, c.Status)
		}
		sum := h.Sum64()
		changed := sum != last
		last = sum
		return meta.LastIndex, changed, nil
	}
}

func (r *Reconciler) inventoryQuery(ctx context.Context) watch.Query {
	var last string
	return func(q *api.QueryOptions) (uint64, bool, error) {
		recs, index, err := r.Inventory.List(ctx, q)
		if err != nil {
			return 0, false, err
		}
		b, _ := json.Marshal(recs) // map keys marshal sorted: a stable fingerprint
		changed := string(b) != last
		last = string(b)
		return index, changed, nil
	}
}

// hostListsGap is the least time between two reads of every offer by the
// leader's watch of its hosts' lists.
const hostListsGap = time.Second

// hostListsQuery watches the members' offers for a change in what their
// hosts list (a host whose machine stopped publishes at once), not in
// their free memory or the time they were checked.
func (r *Reconciler) hostListsQuery(ctx context.Context) watch.Query {
	var last uint64
	var at time.Time
	return func(q *api.QueryOptions) (uint64, bool, error) {
		// Every member rewrites its offer as its free memory moves: a
		// thousand of them would have the leader read every offer
		// many times a second. Once a second is soon enough to wake.
		if err := clock.Sleep(ctx, clock.Real{}, time.Until(at.Add(hostListsGap))); err != nil {
			return 0, false, err
		}
		at = time.Now()
		// Only a reason to look: the pass reads the offers it plans on.
		q.AllowStale = true
		all, _, index, err := state.Offers(r.Inventory.Store).List(ctx, q)
		if err != nil {
			return 0, false, err
		}
		h := fnv.New64a()
		for _, id := range sortedKeys(all) {
			o := all[id]
			h.Write([]byte(id))
			for _, b := range sortedKeys(o.Backends) {
				bo := o.Backends[b]
				if !bo.Listed {
					continue
				}
				fmt.Fprintf(h, "\x00%s", b)
				for _, in := range bo.Instances {
					fmt.Fprintf(h, "\x00%s %t", in.MachineID, in.Running)
				}
			}
		}
		sum := h.Sum64()
		changed := sum != last
		last = sum
		return index, changed, nil
	}
}
