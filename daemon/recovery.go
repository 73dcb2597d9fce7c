package daemon

import (
	"fmt"
	"strings"
	"time"

	"github.com/raptiformica/raptiformica/daemon/agentapi"
	"github.com/raptiformica/raptiformica/internal/state"
	"github.com/raptiformica/raptiformica/reconcile"
	"github.com/raptiformica/raptiformica/rules"
)

// lostMajorityAfter is how long a node waits without a leader before it
// takes a majority of the servers failed in its gossip pool for lost
// quorum, without waiting out quorum_lost_after: Raft cannot elect a
// leader without that majority, so waiting longer only delays the heal.
// The margin is for a view of the pool that is still settling.
const lostMajorityAfter = 2 * time.Second

// evidenceEvery is how often a survivor asks the backends again whether the
// lost servers are gone, while what it sees of them does not change: asking
// every backend each second is cheap for containers, not for a cloud CLI.
const evidenceEvery = 5 * time.Second

// recoveryFacts is everything the recovery decision reads: one look of the
// quorum watch at a Consul without a leader, and the evidence gathered so
// far in that look.
type recoveryFacts struct {
	// Self is this node's machine ID.
	Self string
	// ConsulServer is set when this node's Consul is a server: only a
	// server can recover.
	ConsulServer bool
	// Policy is the description's, nil while this node has none.
	Policy *rules.Policy
	// Now is the time of the look; LeaderlessSince, when this node last
	// saw a Consul leader (or started looking).
	Now, LeaderlessSince time.Time
	// Recovering is set once this node has started to recover: there is
	// nothing left to decide.
	Recovering bool
	// Last is the previous look's decision, reused while the servers seen
	// stay the same, for evidenceEvery.
	Last recoveryDecision
	// Servers are the Consul servers in this node's gossip pool, by name.
	Servers []agentapi.ServerSeen
	// RaftLastIndex is the last Raft index this node's Consul holds.
	RaftLastIndex uint64
	// Records is this node's mirrored inventory: it says which backend
	// holds each lost server. Nil: not read yet (an empty map: none).
	Records map[string]reconcile.Record
	// Backends is what each backend says of its machines, by backend
	// name; a backend missing here was not asked yet.
	Backends map[string]backendEvidence
	// Survivors is what each other live server says of the lost quorum,
	// by machine ID; one missing here was not asked yet.
	Survivors map[string]survivorEvidence
}

// backendEvidence is a backend's word on the machines it holds.
type backendEvidence struct {
	// Unknown: this node's description has no such backend.
	Unknown bool
	// LocalOnly: its list shows only the machines made from this node, so
	// a machine missing from it may run elsewhere.
	LocalOnly bool
	// Err is why it could not be listed.
	Err error
	// Running says, by machine ID, whether each listed machine runs.
	Running map[string]bool
}

// survivorEvidence is another live server's answer about the lost quorum.
type survivorEvidence struct {
	Quorum *agentapi.QuorumStatus
	// Err is why it could not be asked.
	Err error
}

// recoveryDecision is the outcome of one look.
type recoveryDecision struct {
	// Lost is set once the leader has been missing for the policy's
	// quorum_lost_after.
	Lost bool
	// Reason says what was decided about recovering and why; empty when
	// nothing was (quorum not lost, or already recovering).
	Reason string
	// Recover is set when this node is the survivor that recovers.
	Recover bool
	// AskRecords, AskBackend or AskSurvivor names what the decision needs
	// first: the caller reads or asks, adds the answer to the facts and
	// decides again.
	AskRecords              bool
	AskBackend, AskSurvivor string
	// At and On are when the decision was taken and on what view of the
	// servers (serversKey): they say when it is stale.
	At time.Time
	On string
}

// decideRecovery decides, from evidence, whether this node recovers the
// cluster alone: who recovers, and when. It does no I/O: evidence it lacks
// it asks for (AskRecords, AskBackend, AskSurvivor), in the order it needs it, so that
// a look asks no more than its answer requires.
//
// A partition must never make two platforms, so a node recovers only when
// quorum is lost (no leader for quorum_lost_after, or for lostMajorityAfter
// with a majority of the servers failed in the gossip pool or gone by their
// backends' word: healing at the floor when the failure is plain),
// recover_on_evidence is on, the backend that owns every server the gossip
// pool no longer sees alive (or that its backend says is gone) confirms
// that server's machine is gone or stopped, and it is the
// one survivor every survivor would choose: the most up-to-date Raft log,
// then the lowest machine ID. A survivor that cannot be asked stops the
// choice, rather than risk two recoveries.
func decideRecovery(f recoveryFacts) recoveryDecision {
	after := rules.DefaultPolicy.QuorumLostAfter
	if f.Policy != nil {
		after = f.Policy.QuorumLostAfter
	}
	leaderless := f.Now.Sub(f.LeaderlessSince)
	early := leaderless >= min(lostMajorityAfter, after)
	d := recoveryDecision{Lost: leaderless >= after || early && majorityFailed(f.Servers, nil)}
	if f.Recovering {
		d.Lost = d.Lost || f.Last.Lost
		return d
	}
	on := serversKey(f.Servers)
	last := f.Last
	fresh := last.On == on && !last.At.IsZero() && f.Now.Sub(last.At) < evidenceEvery
	// gone are the servers the gossip pool still sees alive whose backend
	// says their machine is gone: Consul's failure detector takes up to
	// some 11 s to call a server failed when no other member confirms it
	// (two of three dead), the backend answers at once.
	var gone map[string]bool
	if !d.Lost {
		if !early || f.Policy == nil || !f.ConsulServer || !f.Policy.RecoverOnEvidence {
			return d
		}
		if fresh && !last.Lost {
			return last
		}
		var ask recoveryDecision
		if gone, ask = goneByBackend(f); gone == nil {
			return ask
		}
		if !majorityFailed(f.Servers, gone) {
			// Not lost, as far as the backends know: looked at again
			// after evidenceEvery, or when the servers seen change.
			return recoveryDecision{At: f.Now, On: on}
		}
		d.Lost = true
	}
	if fresh && last.Lost {
		return last
	}
	d.At, d.On = f.Now, on
	decide := func(recover bool, format string, args ...any) recoveryDecision {
		d.Recover, d.Reason = recover, fmt.Sprintf(format, args...)
		return d
	}
	if f.Policy == nil || !f.ConsulServer {
		return decide(false, "not a Consul server: waiting for a server to recover")
	}
	if !f.Policy.RecoverOnEvidence {
		return decide(false, "recover_on_evidence is off: waiting for `raptiformica recover`")
	}
	var survivors []agentapi.ServerSeen
	for _, s := range f.Servers {
		if s.Status == state.MemberAlive && !gone[s.Name] {
			survivors = append(survivors, s)
			continue
		}
		if f.Records == nil {
			return recoveryDecision{Lost: true, AskRecords: true}
		}
		r, ok := f.Records[s.Name]
		if !ok {
			return decide(false, "no mirrored record of lost server %s: cannot ask its backend; run `raptiformica recover` if it is gone", s.Name)
		}
		ev, asked := f.Backends[r.Backend]
		switch {
		case !asked:
			return recoveryDecision{Lost: true, AskBackend: r.Backend}
		case ev.Unknown:
			return decide(false, "lost server %s is on backend %q, unknown here", s.Name, r.Backend)
		case ev.LocalOnly:
			return decide(false, "backend %q cannot confirm that %s is gone (it lists only this node's machines)", r.Backend, s.Name)
		case ev.Err != nil:
			return decide(false, "backend %q cannot be asked about %s: %v", r.Backend, s.Name, ev.Err)
		case ev.Running[s.Name]:
			return decide(false, "lost server %s still runs on backend %q: a partition, not a death; waiting", s.Name, r.Backend)
		}
	}
	if len(survivors) == 0 {
		return decide(false, "this node does not see itself alive in the gossip pool yet")
	}
	// One survivor restarts Raft alone, and the others join it. Should
	// the others be a majority of the voters without it, they could elect
	// a leader of the old configuration while it leads the new one: two
	// clusters, each committing writes the other will drop. Survivors that
	// many are a Raft starved of CPU or cut apart, not a lost quorum, and
	// are waited for, however long it takes.
	if voters := votersNotLeft(f.Servers); 2*(len(survivors)-1) > voters {
		return decide(false, "%d of %d servers are alive: the others could elect a leader without this node, so it does not restart Raft alone (a starved or cut Raft, not lost quorum); waiting, or `raptiformica recover`", len(survivors), voters)
	}
	// Every survivor computes the same choice from the same facts.
	best, bestIndex := "", uint64(0)
	for _, s := range survivors {
		idx := f.RaftLastIndex
		if s.Name != f.Self {
			ev, asked := f.Survivors[s.Name]
			switch {
			case !asked:
				return recoveryDecision{Lost: true, AskSurvivor: s.Name}
			case ev.Err != nil || ev.Quorum == nil:
				return decide(false, "survivor %s cannot be asked for its Raft index (%v): waiting", s.Name, ev.Err)
			case ev.Quorum.Recovering:
				return decide(false, "survivor %s is recovering; this node joins it", s.Name)
			}
			idx = ev.Quorum.RaftLastIndex
		}
		if best == "" || idx > bestIndex || idx == bestIndex && s.Name < best {
			best, bestIndex = s.Name, idx
		}
	}
	if best != f.Self {
		return decide(false, "every lost server is gone by its backend's word; %s (Raft index %d) recovers, this node joins it", best, bestIndex)
	}
	return decide(true, "every lost server is gone by its backend's word; this node has the most up-to-date Raft log (index %d) of %d survivors", bestIndex, len(survivors))
}

// majorityFailed says whether the servers failed in this node's gossip pool,
// or gone by their backend's word, are at least half of those not gone by
// leaving: the ones alive cannot elect a Raft leader alone. A server that
// left gracefully was taken out of Raft, so it counts on neither side.
func majorityFailed(ss []agentapi.ServerSeen, gone map[string]bool) bool {
	total, failed := 0, 0
	for _, s := range ss {
		switch {
		case s.Status == state.MemberLeft:
		case s.Status == state.MemberFailed || gone[s.Name]:
			total++
			failed++
		default:
			total++
		}
	}
	return failed > 0 && 2*failed >= total
}

// votersNotLeft counts the servers that have not left gracefully: those
// Raft still counts for a majority.
func votersNotLeft(ss []agentapi.ServerSeen) int {
	n := 0
	for _, s := range ss {
		if s.Status != state.MemberLeft {
			n++
		}
	}
	return n
}

// goneByBackend finds, among the servers other than this node that have
// not left, those whose backend confirms their machine is gone or stopped.
// While it lacks evidence it returns nil and what to ask first (the
// decision to return). A server without a mirrored record, or on a backend
// that cannot confirm (unknown here, listing only this node's machines,
// failing), is not taken for gone.
func goneByBackend(f recoveryFacts) (map[string]bool, recoveryDecision) {
	if f.Records == nil {
		return nil, recoveryDecision{AskRecords: true}
	}
	gone := map[string]bool{}
	for _, s := range f.Servers {
		if s.Name == f.Self || s.Status == state.MemberLeft {
			continue
		}
		r, ok := f.Records[s.Name]
		if !ok {
			continue
		}
		ev, asked := f.Backends[r.Backend]
		switch {
		case !asked:
			return nil, recoveryDecision{AskBackend: r.Backend}
		case ev.Unknown || ev.LocalOnly || ev.Err != nil || ev.Running[s.Name]:
		default:
			gone[s.Name] = true
		}
	}
	return gone, recoveryDecision{}
}

// serversKey is what a survivor sees of the servers, to notice a change.
func serversKey(ss []agentapi.ServerSeen) string {
	var b strings.Builder
	for _, s := range ss {
		b.WriteString(s.Name + "=" + string(s.Status) + ";")
	}
	return b.String()
}
