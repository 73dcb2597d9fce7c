package reconcile

import (
	"cmp"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/raptiformica/raptiformica/backends"
	"github.com/raptiformica/raptiformica/internal/state"
	"github.com/raptiformica/raptiformica/rules"
)

// orphanAge is how long this leader must have seen an instance without a
// record before it is destroyed, so that a machine whose seed record is
// still being written is not taken for an orphan.
const orphanAge = 10 * time.Second

// confirmAfter is how soon a pass looks again at a machine that would be
// reaped on one observation alone: a reap needs two passes in a row, at
// least this far apart, to agree, the second on backend lists asked after
// the first (Decision.FreshLists), so that one list that caught a machine
// in the instant it restarted cannot condemn it twice.
const confirmAfter = time.Second

// The conditions a Sighting follows. A machine that is up has none.
const (
	condJoining = "joining" // spawned or provisioned, not yet a live member
	condDown    = "down"    // joined once, now failed or gone
	condOrphan  = "orphan"  // an instance with no inventory record
)

// Plan decides what to do now. It is a pure function of the description, the
// observed state and the time: it does no I/O, so that every decision the
// control loop makes can be tested from a table. It is level-triggered: given
// the same inputs it gives the same actions, whatever happened before.
func Plan(p *rules.Platform, obs Observed, now time.Time) Decision {
	ps := newPass(p, obs, now)
	ps.tallyAll()
	ps.halt()
	ps.scale()
	ps.gaveWay()
	ps.removeStray()
	return ps.decide()
}

// Sighting is what one leader has seen of one machine's condition: since
// when, on its own clock, and in how many passes in a row. Ages that lead to
// a removal are measured from First, never from times in a record: those
// were written by whichever leader's wall clock, and a clock step would
// make every failure look old at once.
type Sighting struct {
	Cond   string    `json:"cond"`
	First  time.Time `json:"first"`
	Passes int       `json:"passes"`
	// Evidence is the index of the host's offer that first showed the
	// machine gone, when only that list said so.
	Evidence uint64 `json:"evidence,omitempty"`
}

// sight returns id's sighting of cond for this pass: the previous one
// carried on when the condition held, a new one from now when it changed.
func (ps *pass) sight(id, cond string) Sighting {
	s, ok := ps.obs.Seen[id]
	if ok && s.Cond == cond {
		s.Passes++
	} else {
		s = Sighting{Cond: cond, First: ps.now, Passes: 1}
	}
	ps.d.Seen[id] = s
	return s
}

// ripe reports whether a condition seen in s has lasted limit on this
// leader's clock and been seen in two passes in a row at least
// confirmAfter apart, and asks for the pass that would make it so, on
// fresh lists.
func (ps *pass) ripe(s Sighting, limit time.Duration) bool {
	age := ps.now.Sub(s.First)
	if age < limit {
		ps.wakeAt(s.First.Add(limit))
		// The pass that decides lists afresh when it comes within a
		// list's reuse (at most confirmAfter); a limit further off is
		// no reason to ask every backend again on each pass between.
		if limit-age <= confirmAfter {
			ps.d.FreshLists = true
		}
		return false
	}
	if s.Passes < 2 || age < confirmAfter {
		ps.wakeAt(s.First.Add(confirmAfter))
		ps.d.FreshLists = true
		return false
	}
	return true
}

// pass is one run of Plan. Its steps run in the order Plan calls them; each
// reads the inputs and what the steps before it left, and adds its own part,
// so that each can be read and checked on its own.
type pass struct {
	p   *rules.Platform
	pol rules.Policy
	obs Observed
	now time.Time

	// Left by tallyAll.
	tallies map[string]*tally
	// spares count each type's standby machines (Record.Spare) apart.
	spares               map[string]*tally
	marks, reaps, strays []state.Action
	failed               int
	failedServers        int
	// pendingTotal counts machines being spawned or provisioned, of every
	// type; spawn adds what it spawns, so that max_concurrent_spawns holds
	// across types.
	pendingTotal int
	// settled is true when nothing was pending or failed before this pass
	// spawned anything: only then are healthy machines removed.
	settled bool

	// destroying counts the removals announced and not finished: the
	// room they free is not taken from anyone else (see preempt).
	destroying int

	// Left by scale and removeStray.
	spawns, downs []state.Action
	// preempted counts the machines this pass removes for a type of
	// higher priority: at most max_unhealthy.
	preempted int
	// noRoom are the types this pass could not place all it needs of.
	noRoom map[string]bool

	// hosts is what placement on other members chooses among, made on
	// the first spawn that needs it and added to by each.
	hosts *Hosts
	// notHost are the recorded machines that may not host a spawn: not up
	// (a machine its backend reports gone is still an alive member until
	// Consul notices), or being removed.
	notHost map[string]bool

	// d is the decision being built; every step may add to its NextCheck.
	d Decision
}

// tally counts the records of one machine type.
type tally struct {
	live, pending int
	// unready are up but not provisioned (ready_after_provision).
	unready int
	// failedIn are failed within their grace period: they may come back,
	// so they still count toward min. failedOut are being reaped.
	failedIn, failedOut int
	// liveRecs are the machines scale-down may pick from.
	liveRecs []Record
}

func (t *tally) addLive(r Record) {
	t.live++
	t.liveRecs = append(t.liveRecs, r)
}

func newPass(p *rules.Platform, obs Observed, now time.Time) pass {
	ps := pass{p: p, pol: p.Policy, obs: obs, now: now, tallies: map[string]*tally{}, spares: map[string]*tally{}, notHost: map[string]bool{}, noRoom: map[string]bool{}, d: Decision{Types: map[string]state.TypeStatus{}, Seen: map[string]Sighting{}}}
	for _, name := range p.MachineNames() {
		ps.tallies[name], ps.spares[name] = &tally{}, &tally{}
	}
	return ps
}

// wakeAt asks for another pass at t, when the same observation would give
// another plan, unless an earlier time is already asked for.
func (ps *pass) wakeAt(t time.Time) {
	if t.After(ps.now) && (ps.d.NextCheck.IsZero() || t.Before(ps.d.NextCheck)) {
		ps.d.NextCheck = t
	}
}

func (ps *pass) addPending(t *tally) {
	t.pending++
	ps.pendingTotal++
}

// tallyAll walks the records in ID order, so that the actions come out in
// the same order from the same inputs.
func (ps *pass) tallyAll() {
	for _, id := range sortedKeys(ps.obs.Records) {
		ps.tallyRecord(id, ps.obs.Records[id])
	}
	ps.tallyUnrecorded()
	ps.settled = ps.pendingTotal == 0 && ps.failed == 0
}

// tallyUnrecorded counts the alive members that have an instance but no
// record, and writes their records again from what the backend knows of
// them. Such a member, a Consul server perhaps, is never destroyed or
// replaced for a missing record: the record is what was lost (a KV
// re-seeded from an older mirror), not the machine. Destroying them once
// lost quorum; replacing them would spawn machines that already run.
func (ps *pass) tallyUnrecorded() {
	for _, b := range sortedKeys(ps.obs.Instances) {
		insts := ps.obs.Instances[b]
		for _, id := range sortedKeys(insts) {
			in := insts[id]
			m, member := ps.obs.Members[id]
			if _, ok := ps.obs.Records[id]; ok || ps.obs.InFlight[id] || !member || m.Status != state.MemberAlive {
				continue
			}
			r := Record{ID: id, Type: in.MachineType, Backend: b, State: StateJoined}
			ps.tallyOf(r).addLive(r)
			ps.marks = append(ps.marks, actOn(state.KindRestoreRecord, id, r, "alive member without an inventory record: re-created from backend "+b))
		}
	}
	for _, hd := range ps.hostedElsewhere() {
		id := hd.in.MachineID
		m, member := ps.obs.Members[id]
		if _, ok := ps.obs.Records[id]; ok || ps.obs.InFlight[id] || !member || m.Status != state.MemberAlive {
			continue
		}
		// Another member's list is its word. A client's could name any
		// gossiping name as a machine of any type, created long ago: a
		// "server" that puts a type over its max, so that a real one is
		// scaled down. Only a proven server's list restores a record as
		// counted; a client's restores it on top of the description
		// (manual: it neither counts nor displaces), never a server's.
		mt, known := ps.p.Machines[hd.in.MachineType]
		_, declared := ps.p.Backends[hd.backend]
		proven := hd.host == ps.obs.Self || ps.obs.Members[hd.host].RaftVoter
		if !known || !declared || !proven && mt.ConsulServer {
			continue
		}
		r := Record{ID: id, Type: hd.in.MachineType, Backend: hd.backend, Host: hd.host, Scope: ps.obs.Offers[hd.host].Backends[hd.backend].Scope, State: StateJoined, Manual: !proven}
		ps.tallyOf(r).addLive(r)
		a := actOn(state.KindRestoreRecord, id, r, fmt.Sprintf("alive member without an inventory record: re-created from backend %s on %s", hd.backend, hd.host))
		a.Manual = r.Manual
		ps.marks = append(ps.marks, a)
	}
}

// tallyRecord counts one machine and collects the mark, reap or stray
// removal its state asks for.
func (ps *pass) tallyRecord(id string, r Record) {
	t := ps.tallyOf(r)
	if r.State == StateDestroying {
		ps.notHost[id] = true
		ps.destroying++
	}
	if ps.obs.InFlight[id] {
		// An action is running on it; count it as what it will be.
		switch r.State {
		case StateSpawning, StateJoining:
			ps.addPending(t)
		case StateJoined:
			t.live++
		}
		return
	}
	if _, known := ps.p.Machines[r.Type]; !known && r.State != StateDestroying {
		ps.strays = append(ps.strays, actOn(state.KindScaleDown, id, r, fmt.Sprintf("machine type %q is not in the description", r.Type)))
	}
	h := ps.healthOf(id, r)
	if !h.up {
		ps.notHost[id] = true
	}
	switch r.State {
	case StateDestroying:
		ps.reaps = append(ps.reaps, actOn(state.KindReap, id, r, "finish removal: "+r.Reason))
	case StateSpawning, StateJoining:
		ps.tallyJoining(id, r, t, h)
	case StateJoined, StateFailed:
		ps.tallyJoined(id, r, t, h)
	}
}

// tallyOf is the tally a record counts toward: a throwaway one for a
// machine of a type no longer described, or spawned by hand.
func (ps *pass) tallyOf(r Record) *tally {
	t := ps.tallies[r.Type]
	if t == nil {
		return &tally{}
	}
	if r.Manual {
		// A machine spawned by hand is outside the rules: it neither
		// counts toward its type nor is scaled down, but it is
		// still reaped when it dies (and not replaced).
		return &tally{}
	}
	if r.Spare {
		return ps.spares[r.Type]
	}
	return t
}

// health is what Consul and the backend say of one recorded machine.
type health struct {
	member   Member
	isMember bool
	// instGone is true when the machine's backend lists it stopped, or
	// does not list it in a list that covers every node.
	instGone bool
	// up is true when its member is alive and its instance not gone.
	up bool
	// offerIndex is the index of the host's offer instGone was read
	// from; 0 when it came from the leader's own list.
	offerIndex uint64
}

func (ps *pass) healthOf(id string, r Record) health {
	m, isMember := ps.obs.Members[id]
	h := health{member: m, isMember: isMember}
	// The backend's view only adds speed (a dead process shows there
	// before Consul notices); the leader itself is evidently running,
	// whatever its backend lists.
	if insts, localOnly, listed, from := ps.listOf(r); listed && id != ps.obs.Self {
		in, exists := insts[id]
		h.instGone = exists && !in.Running || !exists && !localOnly && !ps.recordedSinceListed(r)
		h.offerIndex = from
	}
	h.up = isMember && m.Status == state.MemberAlive && !h.instGone
	return h
}

// listOf is the list a recorded machine is judged by: the leader's own of
// its backend, or, for a machine another member made, that member's as its
// offer carries it, and only when the offer was written after the host
// reported the machine made (a list from before says nothing of it). A
// host that is not an alive member lists nothing: its machines are
// unknown, not gone, unless the leader's own list has them.
//
// from is the index of the offer the list came from, 0 for the leader's
// own: a host's list is asked again only when the host publishes.
func (ps *pass) listOf(r Record) (insts map[string]backends.Instance, localOnly, listed bool, from uint64) {
	if ps.runsHere(r) {
		insts, listed = ps.obs.Instances[r.Backend]
		return insts, ps.obs.LocalOnly[r.Backend], listed, 0
	}
	o, ok := ps.obs.Offers[r.Host]
	bo := o.Backends[r.Backend]
	if !ok || o.Index <= r.HostSince || !bo.Listed {
		// The leader's own list may still have seen the machine (one
		// engine, one box): a machine it lists, stopped or running, is
		// as good as the host's word. Its absence there says nothing.
		if in, seen := ps.obs.Instances[r.Backend][r.ID]; seen {
			return map[string]backends.Instance{r.ID: in}, true, true, 0
		}
		return nil, false, false, 0
	}
	insts = make(map[string]backends.Instance, len(bo.Instances))
	for _, in := range bo.Instances {
		insts[in.MachineID] = in
	}
	return insts, bo.LocalOnly, true, o.Index
}

// recordedSinceListed reports whether r changed after the leader's list of
// its backend was taken: the list says nothing of its absence.
func (ps *pass) recordedSinceListed(r Record) bool {
	at, ok := ps.obs.ListedAt[r.Backend]
	return ok && ps.runsHere(r) && r.Index > at
}

// runsHere reports whether the leader's own backend holds the machine of r:
// the leader made it, or made it before hosts were recorded, or its host's
// backend manages the same thing as the leader's (one engine, one box).
// The leader then lists it and destroys it itself, its host alive or not.
func (ps *pass) runsHere(r Record) bool {
	return r.Host == "" || r.Host == ps.obs.Self || r.Scope != "" && r.Scope == ps.obs.Scopes[r.Backend]
}

// hosted is a machine another member lists on a backend the leader cannot
// list itself: what restores its record, or destroys it as an orphan, on
// that member.
type hosted struct {
	host, backend string
	in            backends.Instance
}

// hostedElsewhere lists, in a stable order, the machines the other alive
// members list on the backends the leader cannot list: where the leader's
// own list covers a backend, it alone decides. A machine two members list
// in one scope (one engine both reach) goes to the first by ID; one that
// members of different scopes both claim is left alone, since one of them
// lies or is confused, and acting on either could take a machine from its
// real host.
func (ps *pass) hostedElsewhere() []hosted {
	var out []hosted
	first := map[string]int{} // machine ID -> its index in out
	contested := map[string]bool{}
	for _, h := range sortedKeys(ps.obs.Offers) {
		if h == ps.obs.Self {
			continue
		}
		o := ps.obs.Offers[h]
		for _, b := range sortedKeys(o.Backends) {
			bo := o.Backends[b]
			if _, own := ps.obs.Instances[b]; own || !bo.Listed {
				continue
			}
			for _, in := range bo.Instances {
				if in.MachineID == "" {
					continue
				}
				if i, seen := first[in.MachineID]; seen {
					if prev := out[i]; prev.backend != b || bo.Scope == "" || ps.obs.Offers[prev.host].Backends[prev.backend].Scope != bo.Scope {
						contested[in.MachineID] = true
					}
					continue
				}
				first[in.MachineID] = len(out)
				out = append(out, hosted{host: h, backend: b, in: in})
			}
		}
	}
	kept := out[:0]
	for _, hd := range out {
		if !contested[hd.in.MachineID] {
			kept = append(kept, hd)
		}
	}
	return kept
}

// failure says why a machine that is not up counts as failed.
func (h health) failure(backend string) string {
	switch {
	case h.instGone:
		return "instance is gone from backend " + backend
	case !h.isMember:
		return "not a Consul member"
	}
	return "member is " + string(h.member.Status)
}

// voterRecheck is how soon a pass looks again at a server that is an alive
// member but not yet a Raft voter: autopilot's promotion is no event the
// leader watches, and the heal waits on it.
const voterRecheck = time.Second

// tallyJoining counts a machine being spawned or provisioned.
//
// A machine of a server type counts as joined only once it is a healthy
// Raft voter: an alive member adds nothing to quorum before, and its
// gossip may say it is a server before it is one, or when it is none.
func (ps *pass) tallyJoining(id string, r Record, t *tally, h health) {
	server := ps.p.Machines[r.Type].ConsulServer
	if h.up && server && !h.member.Voter {
		ps.wakeAt(ps.now.Add(voterRecheck))
	}
	switch {
	case h.up && (!server || h.member.Voter):
		ps.marks = append(ps.marks, actOn(state.KindMarkJoined, id, r, "member is alive"))
		ps.addUp(id, r, t)
	case ps.ripe(ps.sight(id, condJoining), ps.pol.ProvisionTimeout):
		ps.reaps = append(ps.reaps, actOn(state.KindReap, id, r, fmt.Sprintf("did not join within the provision timeout (%s)", ps.pol.ProvisionTimeout)))
	default:
		ps.addPending(t)
	}
}

// tallyJoined counts a machine that joined once, whether it is up or failed.
func (ps *pass) tallyJoined(id string, r Record, t *tally, h health) {
	back := r.State == StateFailed || !r.FailedSince.IsZero()
	if h.up && back && ps.p.Machines[r.Type].ConsulServer && !h.member.Voter {
		// A server back from a partition may have been dropped
		// from Raft; until autopilot makes it a voter again it
		// adds nothing to quorum, so it is not yet live.
		ps.addPending(t)
		return
	}
	if h.up {
		if back {
			ps.marks = append(ps.marks, actOn(state.KindMarkJoined, id, r, "member is alive again"))
		}
		ps.addUp(id, r, t)
		return
	}
	ps.failed++
	if ps.p.Machines[r.Type].ConsulServer {
		ps.failedServers++
	}
	ps.tallyFailed(id, r, t, h)
}

// addUp counts a machine that is up: live, unless its type is
// ready_after_provision and its provisioning has not succeeded for the
// description in force, when it is unready and Waiting says why.
func (ps *pass) addUp(id string, r Record, t *tally) {
	mt := ps.p.Machines[r.Type]
	if !mt.ReadyAfterProvision || r.Manual {
		t.addLive(r)
		return
	}
	sum := mt.ProvisionChecksum()
	rec, ok := ps.obs.Provisioned[id]
	switch {
	case ok && rec.ReadyFor(sum):
		t.addLive(r)
		return
	case ok && rec.State == state.ProvisionFailed && rec.Checksum == sum:
		ps.waitf("provisioning failed on %s: %s", id, rec.LastLine())
	default:
		ps.waitf("waiting for provisioning on %s", id)
	}
	t.unready++
}

// tallyFailed counts a failed machine: marked when first seen failed, left
// alone for the grace period, then reaped. The grace period is measured on
// this leader's clock from when it first saw the failure, whatever the
// record's FailedSince says.
func (ps *pass) tallyFailed(id string, r Record, t *tally, h health) {
	grace := ps.pol.GracePeriod
	if h.instGone {
		// The grace period waits out a member that may come back
		// (a network blip); a machine its backend reports gone
		// will not, and a machine cut off behind it (the middle of
		// a chain) needs its replacement before its own grace ends.
		grace = 0
	}
	s := ps.sight(id, condDown)
	if r.FailedSince.IsZero() {
		ps.marks = append(ps.marks, actOn(state.KindMarkFailed, id, r, h.failure(r.Backend)))
	}
	if h.instGone && h.offerIndex != 0 && h.isMember && h.member.Status == state.MemberAlive {
		// The host's list is the only word that it is gone (Consul
		// has it alive), and the leader cannot ask that list again:
		// the confirmation waits for a list the host published
		// after the first, as a restarted container shows running.
		if s.Evidence == 0 {
			s.Evidence = h.offerIndex
			ps.d.Seen[id] = s
		}
		if h.offerIndex <= s.Evidence {
			t.failedIn++
			return
		}
	}
	if !ps.ripe(s, grace) {
		t.failedIn++
		return
	}
	why := fmt.Sprintf("failed for %s, longer than the grace period (%s)", ps.now.Sub(s.First).Round(time.Second), grace)
	if h.instGone {
		why = "instance is gone from backend " + r.Backend + ": no grace period to wait out"
	}
	ps.reaps = append(ps.reaps, actOn(state.KindReap, id, r, why))
	t.failedOut++
}

// halt suspends replacements while more members are failed than
// max_unhealthy allows, rather than thrash.
func (ps *pass) halt() {
	if ps.failed > ps.pol.MaxUnhealthy {
		ps.d.Halted = fmt.Sprintf("%d members are failed, more than max_unhealthy (%d): not replacing or reaping until fewer are", ps.failed, ps.pol.MaxUnhealthy)
	}
}

// scale reports each machine type's counts and brings it toward its min, or
// down toward its max, in priority order (rules.Platform.ByPriority): the
// spawn slots and the room on the hosts go to the types served first.
func (ps *pass) scale() {
	for _, name := range ps.p.ByPriority() {
		mt, t := ps.p.Machines[name], ps.tallies[name]
		ps.d.Types[name] = state.TypeStatus{Min: mt.Min, Max: mt.Max, Live: t.live, Pending: t.pending, Failed: t.failedIn + t.failedOut, Unready: t.unready, Priority: mt.Priority}
		have := t.live + t.pending + t.failedIn + t.unready
		if mt.PerHost > 0 {
			ps.scalePerHost(name, mt, t)
			continue
		}
		// A type that scales on a signal asks for what its signal
		// decides, between its min and its max: it is placed as a
		// min, and removed one at a time above it.
		bounds := mt
		if mt.Scale != nil {
			want := ps.signalWant(name, mt, t)
			bounds.Min, bounds.Max = want, want
		}
		if mt.Spares > 0 {
			have += ps.promote(name, mt, t)
		}
		switch {
		case bounds.Min-have > 0 && ps.d.Halted == "":
			// Only what the type's own min asks may take room from
			// others or reserve it: a signal's demand above it is
			// served as room allows, as a fill is.
			ps.spawn(name, bounds, have, bounds.Min-have, max(0, mt.Min-have))
		case t.live-bounds.Max > 0 && ps.settled && mt.Scale != nil:
			for _, a := range pickScaleDown(t.liveRecs, 1, ps.obs.Self, mt) {
				a.Reason = "scaled in on its signal: " + ps.d.Scales[name].Decision
				ps.downs = append(ps.downs, a)
			}
		case t.live-bounds.Max > 0 && ps.settled:
			ps.scaleDown(t, mt, t.live-mt.Max)
		}
	}
	// Spares come after every type's min: a standby machine is worth
	// less than a live one.
	for _, name := range ps.p.ByPriority() {
		if mt := ps.p.Machines[name]; mt.Spares > 0 || ps.spares[name].live > 0 {
			ps.keepSpares(name, mt)
		}
	}
	// What room is left after every type's min, the types that fill it
	// take, in the same order.
	for _, name := range ps.p.ByPriority() {
		if mt := ps.p.Machines[name]; mt.Fill && ps.d.Halted == "" {
			ps.fill(name, mt, ps.tallies[name])
		}
	}
}

// spawn spawns up to need machines of a type as far as the cooldown,
// max_concurrent_spawns and the backends allow, and says in Waiting what
// holds back the rest.
//
// Of need, takeable may reserve the room it waits for and take the room of
// lower priorities (reserve, preempt); the rest only takes what is free.
func (ps *pass) spawn(name string, mt rules.MachineType, have, need, takeable int) {
	pol := ps.pol
	if last, ok := ps.obs.LastSpawn[name]; ok && ps.now.Sub(last) < pol.Cooldown {
		ps.wakeAt(last.Add(pol.Cooldown))
		ps.waitf("machine %q: %d to spawn after the cooldown (%s)", name, need, (pol.Cooldown - ps.now.Sub(last)).Round(time.Millisecond))
		ps.reserve(mt, takeable)
		return
	}
	budget := pol.MaxConcurrentSpawns - ps.pendingTotal
	if budget <= 0 {
		ps.waitf("machine %q: %d to spawn once fewer than max_concurrent_spawns (%d) are in flight", name, need, pol.MaxConcurrentSpawns)
		ps.reserve(mt, takeable)
		return
	}
	n := min(need, budget)
	// The type's backends in its order: the first one that the leader or
	// another member can run takes the spawns, spread over them.
	for _, b := range mt.Backends {
		why, here := ps.usableHere(b)
		placed, whyNot := ps.place(mt, b, n)
		for i, pl := range placed {
			why := fmt.Sprintf("%d of min %d", have+i, mt.Min)
			if mt.Scale != nil {
				why = fmt.Sprintf("%d of %d its signal asks for", have+i, mt.Min)
			}
			ps.spawnAt(name, pl, why)
		}
		if len(placed) > 0 {
			switch {
			case len(placed) < n:
				ps.waitf("machine %q: %d more to spawn once there is room: %s", name, need-len(placed), whyNot)
				ps.noRoom[name] = true
				ps.preempt(name, mt, min(n, takeable)-len(placed))
			case len(placed) < need:
				ps.waitf("machine %q: %d more to spawn once fewer than max_concurrent_spawns (%d) are in flight", name, need-len(placed), pol.MaxConcurrentSpawns)
				ps.reserve(mt, takeable-len(placed))
			}
			return
		}
		switch {
		case here:
			why = whyNot
		case whyNot != "":
			why += "; " + whyNot
		}
		ps.waitf("backend %q skipped: %s", b, why)
	}
	ps.waitf("machine %q: %d to spawn, but no backend is usable", name, need)
	ps.noRoom[name] = true
	ps.preempt(name, mt, min(n, takeable))
}

// spawnAt spawns a machine of type name where placement put it, for
// reason.
func (ps *pass) spawnAt(name string, pl Placement, reason string) {
	a := state.Action{Kind: state.KindSpawn, Type: name, Backend: pl.Backend, Scope: ps.obs.Scopes[pl.Backend], Reason: reason}
	if pl.Host != ps.obs.Self {
		a.Host, a.Reason = pl.Host, a.Reason+", on "+pl.Host
		a.Scope = ps.obs.Offers[pl.Host].Backends[pl.Backend].Scope
	}
	ps.spawns = append(ps.spawns, a)
	ps.pendingTotal++
}

// usableHere says whether the leader can run backend b itself now, and if
// not, why not.
func (ps *pass) usableHere(b string) (string, bool) {
	if why, bad := ps.obs.BackendErrors[b]; bad {
		return why, false
	}
	if until, ok := ps.obs.BackoffUntil[b]; ok && ps.now.Before(until) {
		ps.wakeAt(until)
		why := ""
		if last := ps.obs.BackendFailures[b]; last != "" {
			why = " (last: " + last + ")"
		}
		return fmt.Sprintf("backing off for %s after failures%s", until.Sub(ps.now).Round(time.Millisecond), why), false
	}
	return "", true
}

// place places up to n machines of type mt on backend b, on the leader
// and the other members that can run it, spread by Place; whyNot says what
// held the rest back. Without the members' offers (they could not be
// read) the leader places on itself alone, as it can.
func (ps *pass) place(mt rules.MachineType, b string, n int) (placed []Placement, whyNot string) {
	if ps.obs.Offers == nil {
		if _, here := ps.usableHere(b); here {
			for range n {
				placed = append(placed, Placement{Backend: b, Host: ps.obs.Self})
			}
		}
		return placed, ""
	}
	one := mt
	one.Backends = []string{b}
	hs := ps.hostsFor(mt)
	for range n {
		pl, why, ok := Place(one, hs, ps.now)
		if !ok {
			return placed, strings.Join(why, "; ")
		}
		ps.hosts.Add(pl, mt)
		hs.Load = ps.hosts.Load
		placed = append(placed, pl)
	}
	return placed, ""
}

// hostsFor is what placement of a machine of type mt chooses among:
// every host, or only the members of the types it names as its hosts (by
// their records: a member's own claim of its type is not believed), and
// for a Consul server only the members that may run its spawn. A server's node config carries the cluster's token and the CA
// key: only a member that holds them already may run its spawn, whatever
// a client's offer or gossip says: a proven server, a voter of Raft (see
// Member.RaftVoter). The load is shared with the pass's.
func (ps *pass) hostsFor(mt rules.MachineType) Hosts {
	if ps.hosts == nil {
		hs := ps.allHosts()
		ps.hosts = &hs
	}
	hs := *ps.hosts
	if mt.ConsulServer || len(mt.Hosts) > 0 || mt.Expands() {
		hs.Offers = map[string]state.Offer{}
		for id, o := range ps.hosts.Offers {
			typ := ps.obs.Records[id].Type
			switch {
			case mt.ConsulServer && id != ps.obs.Self && !ps.obs.Members[id].RaftVoter:
			case len(mt.Hosts) > 0 && !slices.Contains(mt.Hosts, typ):
			case len(mt.Hosts) == 0 && mt.Expands() && typ == mt.Name:
				// Its own machines may offer its backend: they host
				// none of it, or it would feed on itself.
			default:
				hs.Offers[id] = o
			}
		}
	}
	return hs
}

// allHosts is what placement chooses among: the alive members, the leader
// with the backends it can run now (fresher than its published offer),
// what each already holds (the records that name it as their host), and
// the backends backing off on each.
func (ps *pass) allHosts() Hosts {
	hs := Hosts{Offers: map[string]state.Offer{}, BackoffUntil: ps.obs.HostBackoffUntil, MaxPerHost: map[string]int{}, MinFree: map[string]uint64{}, Prefer: ps.obs.Self}
	for name, be := range ps.p.Backends {
		if be.MaxPerHost > 0 {
			hs.MaxPerHost[name] = be.MaxPerHost
		}
		if be.MinFreeMemoryMB > 0 {
			hs.MinFree[name] = uint64(be.MinFreeMemoryMB) << 20
		}
	}
	for id, o := range ps.obs.Offers {
		if id != ps.obs.Self && !ps.notHost[id] {
			hs.Offers[id] = o
		}
	}
	self := state.Offer{Machine: ps.obs.Self, Backends: map[string]state.BackendOffer{}}
	for _, name := range sortedKeys(ps.p.Backends) {
		if _, here := ps.usableHere(name); here {
			// Its free memory as it last published it.
			self.Backends[name] = state.BackendOffer{Available: true, FreeMemory: ps.obs.Offers[ps.obs.Self].Backends[name].FreeMemory}
		}
	}
	hs.Offers[ps.obs.Self] = self
	for _, id := range sortedKeys(ps.obs.Records) {
		r := ps.obs.Records[id]
		if r.State == StateDestroying || r.Host == "" && (r.Seed || id == ps.obs.Self) {
			continue
		}
		// A machine that names no host is the leader's to judge: made
		// in its scope, it holds room there (the seed and the leader
		// itself were placed by no leader).
		hs.Add(Placement{Backend: r.Backend, Host: cmp.Or(r.Host, ps.obs.Self)}, ps.p.Machines[r.Type])
	}
	for h, bs := range ps.obs.HostBackoffUntil {
		for _, until := range bs {
			if ps.now.Before(until) && ps.obs.Offers[h].Machine != "" {
				ps.wakeAt(until)
			}
		}
	}
	return hs
}

func (ps *pass) waitf(format string, args ...any) {
	ps.d.Waiting = append(ps.d.Waiting, fmt.Sprintf(format, args...))
}

// scaleDown removes the machines of a type above its max.
func (ps *pass) scaleDown(t *tally, mt rules.MachineType, excess int) {
	// Removing servers changes the Raft quorum: one at a time,
	// and only while none is failed.
	if mt.ConsulServer {
		if ps.failedServers > 0 {
			return
		}
		excess = 1
	}
	ps.downs = append(ps.downs, pickScaleDown(t.liveRecs, excess, ps.obs.Self, mt)...)
}

// removeStray removes a machine of a type no longer described.
func (ps *pass) removeStray() {
	if !ps.settled || len(ps.spawns) > 0 {
		return
	}
	// Machines of a removed type go one per pass, after the types that
	// remain are at strength, so that a server type renamed in the
	// description never drops the cluster below quorum.
	for _, a := range ps.strays {
		if a.MachineID != ps.obs.Self {
			ps.downs = append(ps.downs, a)
			return
		}
	}
}

// decide puts the actions in the order the executor is to run them, each
// removal where it runs.
func (ps *pass) decide() Decision {
	for _, as := range [][]state.Action{ps.reaps, ps.downs, ps.strays} {
		for i, a := range as {
			if r, ok := ps.obs.Records[a.MachineID]; ok && ps.runsHere(r) {
				as[i].Host = ""
			}
		}
	}
	ps.d.Actions = append(ps.d.Actions, ps.marks...)
	// Replacements go before removals: spawn first, then reap.
	ps.d.Actions = append(ps.d.Actions, ps.spawns...)
	reaps := ps.allowedReaps()
	ps.d.Actions = append(ps.d.Actions, reaps...)
	ps.d.Actions = append(ps.d.Actions, ps.unvotes(reaps)...)
	ps.d.Actions = append(ps.d.Actions, ps.downs...)
	ps.d.Actions = append(ps.d.Actions, ps.orphans()...)
	return ps.d
}

// allowedReaps are the reaps to run. Removals already announced always
// go on. Of the machines that may still hold a quorum (joined, failed, or
// joining), at most max_unhealthy go in one pass, so that no single
// observation, however wrong, takes out more than the cluster can lose; and
// while replacements are halted only machines that never joined go.
func (ps *pass) allowedReaps() []state.Action {
	var out []state.Action
	budget := ps.pol.MaxUnhealthy
	for _, a := range ps.reaps {
		s := ps.obs.Records[a.MachineID].State
		switch {
		case s == StateDestroying:
		case ps.d.Halted != "" && (s == StateJoined || s == StateFailed):
			continue
		case budget <= 0:
			ps.waitf("machine %s: reap waits for the next pass (at most max_unhealthy, %d, per pass)", a.MachineID, ps.pol.MaxUnhealthy)
			ps.wakeAt(ps.now.Add(confirmAfter))
			continue
		default:
			budget--
		}
		out = append(out, a)
	}
	return out
}

// unvotes takes out of the Raft configuration the servers Consul has had
// failed for longer than the grace period whose reap does not go ahead in
// this pass: while replacements are halted, or when the reap waits for the
// next pass. Until it is out, a dead server counts toward quorum, and one
// more death could lose it; autopilot's cleanup, which took it out, is off
// (it took out servers cut off for seconds too). The machine and its
// record stay for the reap, and a server that comes back is let into Raft
// again by Consul. As with autopilot's cleanup, at most a minority of the
// voters go, counting the failed ones this pass reaps, all at once or none.
// The grace period is waited out even for a server its backend reports
// gone, which a reap would not wait for: replacements are halted because
// the leader's view is in doubt.
func (ps *pass) unvotes(reaping []state.Action) []state.Action {
	going := map[string]bool{}
	for _, a := range reaping {
		going[a.MachineID] = true
	}
	voters, reaped := 0, 0
	var out []state.Action
	for _, id := range sortedKeys(ps.obs.Members) {
		m := ps.obs.Members[id]
		if !m.RaftVoter {
			continue
		}
		voters++
		if going[id] && m.Status == state.MemberFailed {
			reaped++ // its reap takes it out of Raft too
		}
		r, recorded := ps.obs.Records[id]
		s, seen := ps.d.Seen[id]
		if !recorded || going[id] || m.Status != state.MemberFailed || !seen || s.Cond != condDown || !ps.ripe(s, ps.pol.GracePeriod) {
			continue
		}
		a := actOn(state.KindUnvote, id, r, fmt.Sprintf("failed for %s, longer than the grace period (%s), and not reaped now", ps.now.Sub(s.First).Round(time.Second), ps.pol.GracePeriod))
		a.Host = "" // Raft is the leader's to change, wherever the machine runs
		out = append(out, a)
	}
	if len(out) > 0 && len(out)+reaped > (voters-1)/2 {
		ps.waitf("%d of %d Raft voters are failed and given up, more than a minority: left in Raft", len(out)+reaped, voters)
		return nil
	}
	return out
}

// orphans destroys the backend instances that have no record.
func (ps *pass) orphans() []state.Action {
	var out []state.Action
	for _, b := range sortedKeys(ps.obs.Instances) {
		insts := ps.obs.Instances[b]
		for _, id := range sortedKeys(insts) {
			in := insts[id]
			if _, ok := ps.obs.Records[id]; ok || ps.obs.InFlight[id] || id == ps.obs.Self {
				// The leader evidently runs: whatever its record's fate
				// (a KV being re-seeded), it never destroys itself.
				continue
			}
			if m, ok := ps.obs.Members[id]; ok && m.Status == state.MemberAlive {
				continue // tallyUnrecorded re-creates its record
			}
			// Seen on this leader's clock, not the backend's: an instance
			// whose record is still being written is not an orphan yet.
			if !ps.ripe(ps.sight(id, condOrphan), ps.orphanAge()) {
				continue
			}
			out = append(out, state.Action{Kind: state.KindDestroyOrphan, MachineID: id, Type: in.MachineType, Backend: b, Reason: "instance has no inventory record"})
		}
	}
	for _, hd := range ps.hostedElsewhere() {
		id := hd.in.MachineID
		if _, ok := ps.obs.Records[id]; ok || ps.obs.InFlight[id] || id == ps.obs.Self {
			continue
		}
		if m, ok := ps.obs.Members[id]; ok && m.Status == state.MemberAlive {
			continue
		}
		if !ps.ripe(ps.sight(id, condOrphan), ps.orphanAge()) {
			continue
		}
		out = append(out, state.Action{Kind: state.KindDestroyOrphan, MachineID: id, Type: hd.in.MachineType, Backend: hd.backend, Host: hd.host, Reason: "instance on " + hd.host + " has no inventory record"})
	}
	return out
}

// orphanAge is how long an instance must be seen without a record or a
// membership before it is destroyed. Early in a leadership term it is the
// provision timeout: a term often starts with a re-seeded KV (a recovery on
// a fresh Consul), whose mirror may be older than the machines, and those
// rejoin over the next retry intervals; until they had the time a spawn
// has to join, the inventory is not rebuilt and no missing record means
// anything.
func (ps *pass) orphanAge() time.Duration {
	if !ps.obs.TermStart.IsZero() && ps.now.Sub(ps.obs.TermStart) < ps.pol.ProvisionTimeout {
		return max(orphanAge, ps.pol.ProvisionTimeout)
	}
	return orphanAge
}

// actOn is an action on a recorded machine.
func actOn(kind state.Kind, id string, r Record, reason string) state.Action {
	return state.Action{Kind: kind, MachineID: id, Type: r.Type, Backend: r.Backend, Host: r.Host, Reason: reason}
}

// pickScaleDown picks the newest machines that are neither the leader, nor
// spawned by hand.
func pickScaleDown(live []Record, n int, self string, mt rules.MachineType) []state.Action {
	cands := make([]Record, 0, len(live))
	for _, r := range live {
		if r.ID != self && !r.Manual {
			cands = append(cands, r)
		}
	}
	sort.Slice(cands, func(i, j int) bool {
		if !cands[i].Created.Equal(cands[j].Created) {
			return cands[i].Created.After(cands[j].Created)
		}
		return cands[i].ID > cands[j].ID
	})
	var out []state.Action
	for _, r := range cands[:min(n, len(cands))] {
		out = append(out, state.Action{Kind: state.KindScaleDown, MachineID: r.ID, Type: r.Type, Backend: r.Backend, Reason: fmt.Sprintf("more than max %d", mt.Max)})
	}
	return out
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// PlaceByHand places one machine of type typ asked for by hand (`spawn`)
// the way a pass places one: on backend (any of the description's; empty:
// the first of the type's backends that a member can take), on the host
// that spreads the type best, the leader preferred on a tie. The action
// is the spawn to execute; an error says why nothing can take it now.
func PlaceByHand(p *rules.Platform, obs Observed, now time.Time, typ, backend string) (state.Action, error) {
	mt, ok := p.Machines[typ]
	if !ok {
		return state.Action{}, fmt.Errorf("no machine type %q: the description has %s", typ, strings.Join(p.MachineNames(), ", "))
	}
	bs := mt.Backends
	if backend != "" {
		if _, ok := p.Backends[backend]; !ok {
			return state.Action{}, fmt.Errorf("no backend %q: the description has %s", backend, strings.Join(sortedKeys(p.Backends), ", "))
		}
		bs = []string{backend}
	}
	ps := newPass(p, obs, now)
	ps.tallyAll()
	var why []string
	for _, b := range bs {
		placed, whyNot := ps.place(mt, b, 1)
		if len(placed) == 0 {
			if whyNot == "" {
				whyNot, _ = ps.usableHere(b)
			}
			why = append(why, fmt.Sprintf("backend %q: %s", b, cmp.Or(whyNot, "no member can run it now")))
			continue
		}
		a := state.Action{Kind: state.KindSpawn, Type: typ, Backend: b, Scope: obs.Scopes[b], Reason: "spawned by hand", Manual: true}
		if pl := placed[0]; pl.Host != obs.Self {
			a.Host, a.Reason = pl.Host, a.Reason+", on "+pl.Host
			a.Scope = obs.Offers[pl.Host].Backends[b].Scope
		}
		return a, nil
	}
	return state.Action{}, fmt.Errorf("nowhere to spawn a %s now: %s", typ, strings.Join(why, "; "))
}

// DestroyByHand is the removal of machine id asked for by hand
// (`destroy`), run where a pass would run it: by its host when another
// member holds it. The leader's own machine is refused: its removal would
// end the term that runs it, halfway.
func DestroyByHand(p *rules.Platform, obs Observed, now time.Time, id string) (state.Action, error) {
	r, ok := obs.Records[id]
	if !ok {
		return state.Action{}, fmt.Errorf("no machine %q in the inventory", id)
	}
	if id == obs.Self {
		return state.Action{}, fmt.Errorf("machine %s is the leader's own: stop its agent (the next leader replaces it), or destroy it once another member leads", id)
	}
	a := actOn(state.KindScaleDown, id, r, "destroyed by hand")
	if ps := newPass(p, obs, now); ps.runsHere(r) {
		a.Host = ""
	}
	return a, nil
}
