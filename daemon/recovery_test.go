package daemon

import (
	"errors"
	"maps"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/raptiformica/raptiformica/daemon/agentapi"
	"github.com/raptiformica/raptiformica/internal/state"
	"github.com/raptiformica/raptiformica/reconcile"
	"github.com/raptiformica/raptiformica/rules"
)

var leaderlessSince = time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)

// lostAfter is the policy's quorum_lost_after in these tests.
const lostAfter = 30 * time.Second

func policy(recoverOnEvidence bool) *rules.Policy {
	p := rules.DefaultPolicy
	p.QuorumLostAfter, p.RecoverOnEvidence = lostAfter, recoverOnEvidence
	return &p
}

func server(name string, st state.MemberStatus) agentapi.ServerSeen {
	return agentapi.ServerSeen{Name: name, Address: "10.0.0." + name, Status: st}
}

func onBackend(backend string, ids ...string) map[string]reconcile.Record {
	recs := map[string]reconcile.Record{}
	for _, id := range ids {
		recs[id] = reconcile.Record{ID: id, Type: "server", Backend: backend, State: reconcile.StateJoined}
	}
	return recs
}

// threeLostOne is server a's view after c died: a and b alive, a's Raft
// log the most up to date, c's machine gone from its backend, b asked.
func threeLostOne() recoveryFacts {
	return recoveryFacts{
		Self: "a", ConsulServer: true, Policy: policy(true),
		Now: leaderlessSince.Add(lostAfter), LeaderlessSince: leaderlessSince,
		Servers:       []agentapi.ServerSeen{server("a", state.MemberAlive), server("b", state.MemberAlive), server("c", state.MemberFailed)},
		RaftLastIndex: 120,
		Records:       onBackend("local", "a", "b", "c"),
		Backends:      map[string]backendEvidence{"local": {Running: map[string]bool{"a": true, "b": true}}},
		Survivors:     map[string]survivorEvidence{"b": {Quorum: &agentapi.QuorumStatus{Lost: true, RaftLastIndex: 100}}},
	}
}

func facts(f func(*recoveryFacts)) recoveryFacts {
	r := threeLostOne()
	f(&r)
	return r
}

func TestDecideRecovery(t *testing.T) {
	now := leaderlessSince.Add(lostAfter)
	taken := func(reason string, recover bool) recoveryDecision {
		return recoveryDecision{Lost: true, Reason: reason, Recover: recover, At: now, On: "a=alive;b=alive;c=failed;"}
	}
	for _, tc := range []struct {
		name  string
		facts recoveryFacts
		want  recoveryDecision
	}{
		{
			name:  "a leader missing for less than quorum_lost_after is not lost quorum: one server of three gone, by the backend's word too",
			facts: facts(func(f *recoveryFacts) { f.Now = leaderlessSince.Add(lostAfter - time.Second) }),
			want:  recoveryDecision{At: leaderlessSince.Add(lostAfter - time.Second), On: "a=alive;b=alive;c=failed;"},
		},
		{
			name: "without a description the default quorum_lost_after applies, and only a server with one recovers",
			facts: facts(func(f *recoveryFacts) {
				f.Policy = nil
				f.Now = leaderlessSince.Add(rules.DefaultPolicy.QuorumLostAfter)
			}),
			want: recoveryDecision{Lost: true, Reason: "not a Consul server: waiting for a server to recover",
				At: leaderlessSince.Add(rules.DefaultPolicy.QuorumLostAfter), On: "a=alive;b=alive;c=failed;"},
		},
		{
			name:  "a client waits for a server",
			facts: facts(func(f *recoveryFacts) { f.ConsulServer = false }),
			want:  taken("not a Consul server: waiting for a server to recover", false),
		},
		{
			name:  "recover_on_evidence off waits for the operator",
			facts: facts(func(f *recoveryFacts) { f.Policy = policy(false) }),
			want:  taken("recover_on_evidence is off: waiting for `raptiformica recover`", false),
		},
		{
			name:  "a node already recovering decides nothing",
			facts: facts(func(f *recoveryFacts) { f.Recovering = true }),
			want:  recoveryDecision{Lost: true},
		},
		{
			name: "a majority of the servers failed is lost quorum after lostMajorityAfter: the gone ones' survivor recovers at once",
			facts: facts(func(f *recoveryFacts) {
				f.Now = leaderlessSince.Add(lostMajorityAfter)
				f.Servers = []agentapi.ServerSeen{server("a", state.MemberAlive), server("b", state.MemberFailed), server("c", state.MemberFailed)}
				f.Backends["local"] = backendEvidence{Running: map[string]bool{"a": true}}
			}),
			want: recoveryDecision{Lost: true, Recover: true, At: leaderlessSince.Add(lostMajorityAfter), On: "a=alive;b=failed;c=failed;",
				Reason: "every lost server is gone by its backend's word; this node has the most up-to-date Raft log (index 120) of 1 survivors"},
		},
		{
			name: "every server alive and no leader past quorum_lost_after is a starved Raft: nobody restarts it alone, or the other two could elect a second leader",
			facts: facts(func(f *recoveryFacts) {
				f.Servers = []agentapi.ServerSeen{server("a", state.MemberAlive), server("b", state.MemberAlive), server("c", state.MemberAlive)}
				f.Backends["local"] = backendEvidence{Running: map[string]bool{"a": true, "b": true, "c": true}}
				f.Survivors["c"] = survivorEvidence{Quorum: &agentapi.QuorumStatus{Lost: true, RaftLastIndex: 90}}
			}),
			want: recoveryDecision{Lost: true, At: now, On: "a=alive;b=alive;c=alive;",
				Reason: "3 of 3 servers are alive: the others could elect a leader without this node, so it does not restart Raft alone (a starved or cut Raft, not lost quorum); waiting, or `raptiformica recover`"},
		},
		{
			name: "of five servers one lost: the four survivors are a majority and wait for an election",
			facts: facts(func(f *recoveryFacts) {
				f.Servers = append(f.Servers, server("d", state.MemberAlive), server("e", state.MemberAlive))
				f.Records = onBackend("local", "a", "b", "c", "d", "e")
				f.Backends["local"] = backendEvidence{Running: map[string]bool{"a": true, "b": true, "d": true, "e": true}}
			}),
			want: recoveryDecision{Lost: true, At: now, On: "a=alive;b=alive;c=failed;d=alive;e=alive;",
				Reason: "4 of 5 servers are alive: the others could elect a leader without this node, so it does not restart Raft alone (a starved or cut Raft, not lost quorum); waiting, or `raptiformica recover`"},
		},
		{
			name: "a majority failed but still running is a partition, even early",
			facts: facts(func(f *recoveryFacts) {
				f.Now = leaderlessSince.Add(lostMajorityAfter)
				f.Servers = []agentapi.ServerSeen{server("a", state.MemberAlive), server("b", state.MemberFailed), server("c", state.MemberFailed)}
				f.Backends["local"] = backendEvidence{Running: map[string]bool{"a": true, "b": true}}
			}),
			want: recoveryDecision{Lost: true, At: leaderlessSince.Add(lostMajorityAfter), On: "a=alive;b=failed;c=failed;",
				Reason: `lost server b still runs on backend "local": a partition, not a death; waiting`},
		},
		{
			name: "a majority failed for less than lostMajorityAfter is not lost quorum yet",
			facts: facts(func(f *recoveryFacts) {
				f.Now = leaderlessSince.Add(lostMajorityAfter - time.Millisecond)
				f.Servers = []agentapi.ServerSeen{server("a", state.MemberAlive), server("b", state.MemberFailed), server("c", state.MemberFailed)}
			}),
			want: recoveryDecision{},
		},
		{
			name:  "a minority failed waits out quorum_lost_after: the others may elect a leader",
			facts: facts(func(f *recoveryFacts) { f.Now = leaderlessSince.Add(lostMajorityAfter) }),
			want:  recoveryDecision{At: leaderlessSince.Add(lostMajorityAfter), On: "a=alive;b=alive;c=failed;"},
		},
		{
			name: "servers the gossip pool still sees alive but their backend says gone count: a majority gone is lost quorum at once",
			facts: facts(func(f *recoveryFacts) {
				f.Now = leaderlessSince.Add(lostMajorityAfter)
				f.Servers = []agentapi.ServerSeen{server("a", state.MemberAlive), server("b", state.MemberAlive), server("c", state.MemberAlive)}
				f.Backends["local"] = backendEvidence{Running: map[string]bool{"a": true}}
				f.Survivors = map[string]survivorEvidence{}
			}),
			want: recoveryDecision{Lost: true, Recover: true, At: leaderlessSince.Add(lostMajorityAfter), On: "a=alive;b=alive;c=alive;",
				Reason: "every lost server is gone by its backend's word; this node has the most up-to-date Raft log (index 120) of 1 survivors"},
		},
		{
			name: "before quorum_lost_after the mirrored records are read to ask the backends",
			facts: facts(func(f *recoveryFacts) {
				f.Now = leaderlessSince.Add(lostMajorityAfter)
				f.Records = nil
			}),
			want: recoveryDecision{AskRecords: true},
		},
		{
			name: "before quorum_lost_after the backends are asked about the servers still seen alive",
			facts: facts(func(f *recoveryFacts) {
				f.Now = leaderlessSince.Add(lostMajorityAfter)
				f.Backends = map[string]backendEvidence{}
			}),
			want: recoveryDecision{AskBackend: "local"},
		},
		{
			name: "a backend that cannot confirm makes nobody gone before quorum_lost_after",
			facts: facts(func(f *recoveryFacts) {
				f.Now = leaderlessSince.Add(lostMajorityAfter)
				f.Servers = []agentapi.ServerSeen{server("a", state.MemberAlive), server("b", state.MemberAlive), server("c", state.MemberAlive)}
				f.Backends["local"] = backendEvidence{LocalOnly: true}
			}),
			want: recoveryDecision{At: leaderlessSince.Add(lostMajorityAfter), On: "a=alive;b=alive;c=alive;"},
		},
		{
			name: "recover_on_evidence off: nothing is asked before quorum_lost_after",
			facts: facts(func(f *recoveryFacts) {
				f.Now = leaderlessSince.Add(lostMajorityAfter)
				f.Policy = policy(false)
				f.Backends = map[string]backendEvidence{}
			}),
			want: recoveryDecision{},
		},
		{
			name: "the backends' word that a majority runs is reused for evidenceEvery",
			facts: facts(func(f *recoveryFacts) {
				f.Now = leaderlessSince.Add(lostMajorityAfter + time.Second)
				f.Last = recoveryDecision{At: leaderlessSince.Add(lostMajorityAfter), On: "a=alive;b=alive;c=failed;"}
				f.Backends = map[string]backendEvidence{}
			}),
			want: recoveryDecision{At: leaderlessSince.Add(lostMajorityAfter), On: "a=alive;b=alive;c=failed;"},
		},
		{
			name: "a node recovering stays lost while the gossip pool catches up",
			facts: facts(func(f *recoveryFacts) {
				f.Now = leaderlessSince.Add(lostMajorityAfter)
				f.Recovering = true
				f.Last = recoveryDecision{Lost: true, Recover: true}
			}),
			want: recoveryDecision{Lost: true},
		},
		{
			name: "a server that left counts on neither side: one failed of two is no majority left",
			facts: facts(func(f *recoveryFacts) {
				f.Now = leaderlessSince.Add(lostMajorityAfter)
				f.Servers = []agentapi.ServerSeen{server("a", state.MemberAlive), server("b", state.MemberLeft), server("c", state.MemberFailed)}
				f.Backends["local"] = backendEvidence{Running: map[string]bool{"a": true}}
			}),
			want: recoveryDecision{Lost: true, At: leaderlessSince.Add(lostMajorityAfter), On: "a=alive;b=left;c=failed;", Recover: true,
				Reason: "every lost server is gone by its backend's word; this node has the most up-to-date Raft log (index 120) of 1 survivors"},
		},
		{
			name:  "the mirrored inventory is read before any backend is asked",
			facts: facts(func(f *recoveryFacts) { f.Records = nil }),
			want:  recoveryDecision{Lost: true, AskRecords: true},
		},
		{
			name:  "a lost server without a mirrored record cannot be checked",
			facts: facts(func(f *recoveryFacts) { f.Records = onBackend("local", "a", "b") }),
			want:  taken("no mirrored record of lost server c: cannot ask its backend; run `raptiformica recover` if it is gone", false),
		},
		{
			name:  "the lost server's backend is asked",
			facts: facts(func(f *recoveryFacts) { f.Backends = map[string]backendEvidence{} }),
			want:  recoveryDecision{Lost: true, AskBackend: "local"},
		},
		{
			name:  "a backend unknown here cannot confirm",
			facts: facts(func(f *recoveryFacts) { f.Backends = map[string]backendEvidence{"local": {Unknown: true}} }),
			want:  taken(`lost server c is on backend "local", unknown here`, false),
		},
		{
			name:  "a backend that lists only this node's machines cannot confirm",
			facts: facts(func(f *recoveryFacts) { f.Backends = map[string]backendEvidence{"local": {LocalOnly: true}} }),
			want:  taken(`backend "local" cannot confirm that c is gone (it lists only this node's machines)`, false),
		},
		{
			name: "a backend that cannot be listed cannot confirm",
			facts: facts(func(f *recoveryFacts) {
				f.Backends = map[string]backendEvidence{"local": {Err: errors.New("docker: no daemon")}}
			}),
			want: taken(`backend "local" cannot be asked about c: docker: no daemon`, false),
		},
		{
			name: "a lost server whose machine still runs is a partition: nobody recovers",
			facts: facts(func(f *recoveryFacts) {
				f.Backends = map[string]backendEvidence{"local": {Running: map[string]bool{"a": true, "b": true, "c": true}}}
			}),
			want: taken(`lost server c still runs on backend "local": a partition, not a death; waiting`, false),
		},
		{
			name: "every lost server is checked, on its own backend",
			facts: facts(func(f *recoveryFacts) {
				f.Servers = append(f.Servers, server("d", state.MemberLeft))
				f.Records["d"] = reconcile.Record{ID: "d", Backend: "docker"}
				f.Backends["docker"] = backendEvidence{Running: map[string]bool{"d": true}}
			}),
			want: recoveryDecision{Lost: true, Reason: `lost server d still runs on backend "docker": a partition, not a death; waiting`,
				At: now, On: "a=alive;b=alive;c=failed;d=left;"},
		},
		{
			name:  "the other survivors are asked for their Raft index",
			facts: facts(func(f *recoveryFacts) { f.Survivors = map[string]survivorEvidence{} }),
			want:  recoveryDecision{Lost: true, AskSurvivor: "b"},
		},
		{
			name:  "a survivor that cannot be asked stops the choice",
			facts: facts(func(f *recoveryFacts) { f.Survivors["b"] = survivorEvidence{Err: errors.New("connection refused")} }),
			want:  taken("survivor b cannot be asked for its Raft index (connection refused): waiting", false),
		},
		{
			name:  "a survivor that sees a leader (no quorum status) stops the choice",
			facts: facts(func(f *recoveryFacts) { f.Survivors["b"] = survivorEvidence{} }),
			want:  taken("survivor b cannot be asked for its Raft index (<nil>): waiting", false),
		},
		{
			name: "a survivor already recovering is joined, whatever its index",
			facts: facts(func(f *recoveryFacts) {
				f.Survivors["b"] = survivorEvidence{Quorum: &agentapi.QuorumStatus{Recovering: true, RaftLastIndex: 1}}
			}),
			want: taken("survivor b is recovering; this node joins it", false),
		},
		{
			name:  "the most up-to-date survivor recovers",
			facts: threeLostOne(),
			want:  taken("every lost server is gone by its backend's word; this node has the most up-to-date Raft log (index 120) of 2 survivors", true),
		},
		{
			name:  "a survivor with a longer log recovers; this node joins it",
			facts: facts(func(f *recoveryFacts) { f.RaftLastIndex = 90 }),
			want:  taken("every lost server is gone by its backend's word; b (Raft index 100) recovers, this node joins it", false),
		},
		{
			name: "on equal logs the lowest machine ID recovers",
			facts: facts(func(f *recoveryFacts) {
				f.Self, f.RaftLastIndex = "b", 100
				f.Survivors = map[string]survivorEvidence{"a": {Quorum: &agentapi.QuorumStatus{Lost: true, RaftLastIndex: 100}}}
			}),
			want: taken("every lost server is gone by its backend's word; a (Raft index 100) recovers, this node joins it", false),
		},
		{
			name: "a node that does not see itself alive does not choose",
			facts: facts(func(f *recoveryFacts) {
				f.Servers = []agentapi.ServerSeen{server("a", state.MemberFailed), server("c", state.MemberFailed)}
				f.Backends["local"] = backendEvidence{Running: map[string]bool{}}
			}),
			want: recoveryDecision{Lost: true, Reason: "this node does not see itself alive in the gossip pool yet", At: now, On: "a=failed;c=failed;"},
		},
		{
			name: "the last decision is reused while the servers seen stay the same",
			facts: facts(func(f *recoveryFacts) {
				f.Now = now.Add(evidenceEvery - time.Second)
				f.Last = taken(`lost server c still runs on backend "local": a partition, not a death; waiting`, false)
				f.Backends = map[string]backendEvidence{}
			}),
			want: taken(`lost server c still runs on backend "local": a partition, not a death; waiting`, false),
		},
		{
			name: "the evidence is gathered again after evidenceEvery",
			facts: facts(func(f *recoveryFacts) {
				f.Now = now.Add(evidenceEvery)
				f.Last = taken(`lost server c still runs on backend "local": a partition, not a death; waiting`, false)
				f.Backends = map[string]backendEvidence{}
			}),
			want: recoveryDecision{Lost: true, AskBackend: "local"},
		},
		{
			name: "the evidence is gathered again when the servers seen change",
			facts: facts(func(f *recoveryFacts) {
				f.Last = taken(`lost server c still runs on backend "local": a partition, not a death; waiting`, false)
				f.Last.On = "a=alive;b=alive;c=alive;"
				f.Backends = map[string]backendEvidence{}
			}),
			want: recoveryDecision{Lost: true, AskBackend: "local"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := decideRecovery(tc.facts)
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("decision (-want +got):\n%s", diff)
			}
		})
	}
}

// A look asks for evidence in the order the decision needs it, and no
// more: a partition found on the first backend asks no survivor.
func TestDecideRecoveryAsksOnlyWhatItNeeds(t *testing.T) {
	world := threeLostOne()
	world.Servers = append(world.Servers, server("d", state.MemberFailed))
	world.Records["d"] = reconcile.Record{ID: "d", Backend: "docker"}
	world.Backends["docker"] = backendEvidence{Running: map[string]bool{}}
	for _, tc := range []struct {
		name    string
		world   func(*recoveryFacts)
		want    []string
		recover bool
	}{
		{name: "all gone: every backend, then the survivor", want: []string{"records", "backend local", "backend docker", "survivor b"}, recover: true},
		{
			name:  "a partition on the first backend stops there",
			world: func(f *recoveryFacts) { f.Backends["local"] = backendEvidence{Running: map[string]bool{"c": true}} },
			want:  []string{"records", "backend local"},
		},
		{
			name:  "a backend that cannot be listed stops there",
			world: func(f *recoveryFacts) { f.Backends["docker"] = backendEvidence{Err: errors.New("down")} },
			want:  []string{"records", "backend local", "backend docker"},
		},
		{
			name:  "nothing is asked before quorum is lost",
			world: func(f *recoveryFacts) { f.Now = f.LeaderlessSince },
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := world
			w.Records, w.Backends, w.Survivors = maps.Clone(world.Records), maps.Clone(world.Backends), maps.Clone(world.Survivors)
			if tc.world != nil {
				tc.world(&w)
			}
			f := w
			f.Records, f.Backends, f.Survivors = nil, map[string]backendEvidence{}, map[string]survivorEvidence{}
			var asked []string
			d := decideRecovery(f)
			for ; d.AskRecords || d.AskBackend != "" || d.AskSurvivor != ""; d = decideRecovery(f) {
				switch {
				case d.AskRecords:
					asked, f.Records = append(asked, "records"), w.Records
				case d.AskBackend != "":
					asked, f.Backends[d.AskBackend] = append(asked, "backend "+d.AskBackend), w.Backends[d.AskBackend]
				default:
					asked, f.Survivors[d.AskSurvivor] = append(asked, "survivor "+d.AskSurvivor), w.Survivors[d.AskSurvivor]
				}
				if len(asked) > 10 {
					t.Fatalf("asks without end: %v", asked)
				}
			}
			if diff := cmp.Diff(tc.want, asked); diff != "" {
				t.Errorf("asked (-want +got):\n%s", diff)
			}
			if d.Recover != tc.recover {
				t.Errorf("recover: got %v want %v (%s)", d.Recover, tc.recover, d.Reason)
			}
		})
	}
}
