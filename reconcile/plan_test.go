package reconcile

import (
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/raptiformica/raptiformica/backends"
	"github.com/raptiformica/raptiformica/internal/state"
	"github.com/raptiformica/raptiformica/rules"
)

var t0 = time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)

func platform(t testing.TB, src string) *rules.Platform {
	t.Helper()
	p, err := rules.Parse("test.hcl", []byte(src), rules.Options{BackendTypes: []string{"local", "docker"}})
	if err != nil {
		t.Fatalf("parse: %v", err)
	}
	return p
}

const threeServers = `
policy {
  grace_period = "30s"
  provision_timeout = "1m"
  cooldown = "5s"
  max_concurrent_spawns = 2
}
machine "server" {
  min = 3
  consul_server = true
}
`

// joined returns records and members for n alive machines of a type.
func cluster(typ string, ids ...string) Observed {
	o := Observed{Records: map[string]Record{}, Members: map[string]Member{}, Instances: map[string]map[string]backends.Instance{"local": {}}}
	for i, id := range ids {
		o.Records[id] = Record{ID: id, Type: typ, Backend: "local", State: StateJoined, Created: t0.Add(time.Duration(i) * time.Minute), Updated: t0}
		o.Members[id] = Member{Name: id, Status: state.MemberAlive, Type: typ, Server: true, Voter: true, RaftVoter: true}
		o.Instances["local"][id] = backends.Instance{MachineID: id, MachineType: typ, Running: true, Created: t0}
	}
	return o
}

func with(o Observed, f func(o *Observed)) Observed { f(&o); return o }

// watched is o as a leader sees it that has watched the cluster all along,
// in a pass every second: each machine that is not up was first seen when
// its record says (a spawn's last update, a failure's FailedSince) and an
// orphan when it was created. Tests of what a new leader or a clock step
// sees set Seen themselves.
func watched(o Observed) Observed {
	if o.Seen != nil {
		return o
	}
	o.Seen = map[string]Sighting{}
	for id, r := range o.Records {
		switch {
		case r.State == StateSpawning || r.State == StateJoining:
			o.Seen[id] = Sighting{Cond: condJoining, First: r.Updated, Passes: 2}
		case !r.FailedSince.IsZero():
			o.Seen[id] = Sighting{Cond: condDown, First: r.FailedSince, Passes: 2}
		}
	}
	for _, insts := range o.Instances {
		for id, in := range insts {
			if _, ok := o.Records[id]; !ok {
				o.Seen[id] = Sighting{Cond: condOrphan, First: in.Created, Passes: 2}
			}
		}
	}
	return o
}

func TestPlan(t *testing.T) {
	now := t0.Add(time.Hour)
	cases := []struct {
		name   string
		src    string
		obs    Observed
		want   []state.Action
		halted bool
		types  map[string]state.TypeStatus
	}{
		{
			name: "seed alone grows to three, two at a time",
			src:  threeServers,
			obs:  cluster("server", "a"),
			want: []state.Action{
				{Kind: state.KindSpawn, Type: "server", Backend: "local", Reason: "1 of min 3"},
				{Kind: state.KindSpawn, Type: "server", Backend: "local", Reason: "2 of min 3"},
			},
			types: map[string]state.TypeStatus{"server": {Min: 3, Max: 3, Live: 1}},
		},
		{
			name: "at strength does nothing",
			src:  threeServers,
			obs:  cluster("server", "a", "b", "c"),
		},
		{
			name: "pending spawns count, so nothing is spawned twice",
			src:  threeServers,
			obs: with(cluster("server", "a"), func(o *Observed) {
				o.Records["b"] = Record{ID: "b", Type: "server", Backend: "local", State: StateSpawning, Updated: now.Add(-10 * time.Second)}
				o.Records["c"] = Record{ID: "c", Type: "server", Backend: "local", State: StateJoining, Updated: now.Add(-10 * time.Second)}
				o.Instances["local"]["c"] = backends.Instance{MachineID: "c", Running: true}
			}),
			types: map[string]state.TypeStatus{"server": {Min: 3, Max: 3, Live: 1, Pending: 2}},
		},
		{
			name: "a spawned machine whose member is alive is marked joined",
			src:  threeServers,
			obs: with(cluster("server", "a", "b", "c"), func(o *Observed) {
				r := o.Records["c"]
				r.State = StateJoining
				o.Records["c"] = r
			}),
			want: []state.Action{{Kind: state.KindMarkJoined, MachineID: "c", Type: "server", Backend: "local", Reason: "member is alive"}},
		},
		{
			name: "a new server is not joined until it is a Raft voter",
			src:  threeServers,
			obs: with(cluster("server", "a", "b", "c"), func(o *Observed) {
				r := o.Records["c"]
				r.State, r.Updated = StateJoining, now
				o.Records["c"] = r
				o.Members["c"] = Member{Name: "c", Status: state.MemberAlive, Server: true, Voter: false}
			}),
			types: map[string]state.TypeStatus{"server": {Min: 3, Max: 3, Live: 2, Pending: 1}},
		},
		{
			name: "a spawn that never joined is reaped after the provision timeout",
			src:  threeServers,
			obs: with(cluster("server", "a", "b"), func(o *Observed) {
				o.Records["c"] = Record{ID: "c", Type: "server", Backend: "local", State: StateJoining, Updated: now.Add(-time.Minute)}
				o.Instances["local"]["c"] = backends.Instance{MachineID: "c", Running: true}
			}),
			want: []state.Action{
				{Kind: state.KindSpawn, Type: "server", Backend: "local", Reason: "2 of min 3"},
				{Kind: state.KindReap, MachineID: "c", Type: "server", Backend: "local", Reason: "did not join within the provision timeout (1m0s)"},
			},
		},
		{
			name: "a newly failed member is marked, not yet replaced",
			src:  threeServers,
			obs: with(cluster("server", "a", "b", "c"), func(o *Observed) {
				o.Members["c"] = Member{Name: "c", Status: state.MemberFailed}
			}),
			want:  []state.Action{{Kind: state.KindMarkFailed, MachineID: "c", Type: "server", Backend: "local", Reason: "member is failed"}},
			types: map[string]state.TypeStatus{"server": {Min: 3, Max: 3, Live: 2, Failed: 1}},
		},
		{
			name: "a dead instance counts as failed before Consul notices",
			src:  threeServers,
			obs: with(cluster("server", "a", "b", "c"), func(o *Observed) {
				o.Instances["local"]["c"] = backends.Instance{MachineID: "c", Running: false}
			}),
			want: []state.Action{{Kind: state.KindMarkFailed, MachineID: "c", Type: "server", Backend: "local", Reason: "instance is gone from backend local"}},
		},
		{
			name: "a gone instance, once marked, is reaped without waiting for the grace period",
			src:  threeServers,
			obs: with(cluster("server", "a", "b", "c"), func(o *Observed) {
				o.Instances["local"]["c"] = backends.Instance{MachineID: "c", Running: false}
				r := o.Records["c"]
				r.State, r.FailedSince = StateFailed, now.Add(-time.Second)
				o.Records["c"] = r
			}),
			want: []state.Action{
				{Kind: state.KindSpawn, Type: "server", Backend: "local", Reason: "2 of min 3"},
				{Kind: state.KindReap, MachineID: "c", Type: "server", Backend: "local", Reason: "instance is gone from backend local: no grace period to wait out"},
			},
			types: map[string]state.TypeStatus{"server": {Min: 3, Max: 3, Live: 2, Failed: 1}},
		},
		{
			name: "a machine missing from a list that covers only this node is unknown, not gone",
			src:  threeServers,
			obs: with(cluster("server", "a", "b", "c"), func(o *Observed) {
				delete(o.Instances["local"], "c")
				o.LocalOnly = map[string]bool{"local": true}
			}),
		},
		{
			name: "a stopped machine in a list that covers only this node is gone",
			src:  threeServers,
			obs: with(cluster("server", "a", "b", "c"), func(o *Observed) {
				o.Instances["local"]["c"] = backends.Instance{MachineID: "c", Running: false}
				o.LocalOnly = map[string]bool{"local": true}
			}),
			want: []state.Action{{Kind: state.KindMarkFailed, MachineID: "c", Type: "server", Backend: "local", Reason: "instance is gone from backend local"}},
		},
		{
			name: "the leader is never an orphan, even without a record or a membership",
			src:  threeServers,
			obs: with(cluster("server", "a", "b", "c"), func(o *Observed) {
				delete(o.Records, "a")
				delete(o.Members, "a")
				o.Self = "a"
			}),
			want: []state.Action{{Kind: state.KindSpawn, Type: "server", Backend: "local", Reason: "2 of min 3"}},
		},
		{
			name: "alive members without records are re-recorded, never destroyed or replaced",
			src:  threeServers,
			obs: with(cluster("server", "a", "b", "c"), func(o *Observed) {
				delete(o.Records, "b")
				delete(o.Records, "c")
				o.Self = "a"
				for _, id := range []string{"b", "c"} {
					in := o.Instances["local"][id]
					in.Created = now.Add(-time.Hour)
					o.Instances["local"][id] = in
				}
			}),
			want: []state.Action{
				{Kind: state.KindRestoreRecord, MachineID: "b", Type: "server", Backend: "local", Reason: "alive member without an inventory record: re-created from backend local"},
				{Kind: state.KindRestoreRecord, MachineID: "c", Type: "server", Backend: "local", Reason: "alive member without an inventory record: re-created from backend local"},
			},
			types: map[string]state.TypeStatus{"server": {Min: 3, Max: 3, Live: 3}},
		},
		{
			name: "the leader never judges itself gone from its backend",
			src:  threeServers,
			obs: with(cluster("server", "a", "b", "c"), func(o *Observed) {
				delete(o.Instances["local"], "a")
				o.Self = "a"
			}),
		},
		{
			name: "a failed member within the grace period is left alone",
			src:  threeServers,
			obs: with(cluster("server", "a", "b", "c"), func(o *Observed) {
				o.Members["c"] = Member{Name: "c", Status: state.MemberFailed}
				r := o.Records["c"]
				r.State, r.FailedSince = StateFailed, now.Add(-29*time.Second)
				o.Records["c"] = r
			}),
		},
		{
			name: "past the grace period the replacement is spawned first, then the failed one reaped",
			src:  threeServers,
			obs: with(cluster("server", "a", "b", "c"), func(o *Observed) {
				o.Members["c"] = Member{Name: "c", Status: state.MemberFailed}
				r := o.Records["c"]
				r.State, r.FailedSince = StateFailed, now.Add(-31*time.Second)
				o.Records["c"] = r
			}),
			want: []state.Action{
				{Kind: state.KindSpawn, Type: "server", Backend: "local", Reason: "2 of min 3"},
				{Kind: state.KindReap, MachineID: "c", Type: "server", Backend: "local", Reason: "failed for 31s, longer than the grace period (30s)"},
			},
		},
		{
			name: "a failed server that comes back is not live until it is a Raft voter again",
			src:  threeServers,
			obs: with(cluster("server", "a", "b", "c"), func(o *Observed) {
				r := o.Records["c"]
				r.State, r.FailedSince = StateFailed, now.Add(-5*time.Second)
				o.Records["c"] = r
				o.Members["c"] = Member{Name: "c", Status: state.MemberAlive, Server: true, Voter: false}
			}),
			types: map[string]state.TypeStatus{"server": {Min: 3, Max: 3, Live: 2, Pending: 1}},
		},
		{
			name: "a failed member that comes back is marked joined",
			src:  threeServers,
			obs: with(cluster("server", "a", "b", "c"), func(o *Observed) {
				r := o.Records["c"]
				r.State, r.FailedSince = StateFailed, now.Add(-5*time.Second)
				o.Records["c"] = r
			}),
			want: []state.Action{{Kind: state.KindMarkJoined, MachineID: "c", Type: "server", Backend: "local", Reason: "member is alive again"}},
		},
		{
			name: "too many failed at once halts replacement",
			src:  threeServers,
			obs: with(cluster("server", "a", "b", "c"), func(o *Observed) {
				for _, id := range []string{"b", "c"} {
					o.Members[id] = Member{Name: id, Status: state.MemberFailed}
					r := o.Records[id]
					r.State, r.FailedSince = StateFailed, now.Add(-time.Hour)
					o.Records[id] = r
				}
			}),
			halted: true,
		},
		{
			name: "cooldown delays the next spawn",
			src:  threeServers,
			obs: with(cluster("server", "a"), func(o *Observed) {
				o.LastSpawn = map[string]time.Time{"server": now.Add(-4 * time.Second)}
			}),
		},
		{
			name: "the concurrency limit counts spawns of every type",
			src:  threeServers + `machine "worker" { min = 2 }`,
			obs: with(cluster("server", "a", "b"), func(o *Observed) {
				o.Records["c"] = Record{ID: "c", Type: "server", Backend: "local", State: StateSpawning, Updated: now}
			}),
			want: []state.Action{{Kind: state.KindSpawn, Type: "worker", Backend: "local", Reason: "0 of min 2"}},
		},
		{
			name: "a backend backing off is skipped for the next one",
			src:  `backend "local" {}` + "\n" + `backend "docker" {}` + "\n" + `machine "server" {` + "\n min = 1\n consul_server = true\n backends = [\"docker\", \"local\"]\n}",
			obs: with(cluster("server"), func(o *Observed) {
				o.BackoffUntil = map[string]time.Time{"docker": now.Add(time.Minute)}
			}),
			want: []state.Action{{Kind: state.KindSpawn, Type: "server", Backend: "local", Reason: "0 of min 1"}},
		},
		{
			name: "no usable backend spawns nothing",
			src:  threeServers,
			obs: with(cluster("server", "a"), func(o *Observed) {
				o.BackendErrors = map[string]string{"local": "binary missing"}
			}),
		},
		{
			name: "scale-down of servers goes one at a time, newest first, never the leader",
			src:  `machine "server" {` + "\n min = 3\n consul_server = true\n}",
			obs: with(cluster("server", "a", "b", "c", "d", "e"), func(o *Observed) {
				o.Self = "e"
			}),
			want: []state.Action{{Kind: state.KindScaleDown, MachineID: "d", Type: "server", Backend: "local", Reason: "more than max 3"}},
		},
		{
			name: "scale-down waits while a member is failed",
			src:  `machine "server" {` + "\n min = 3\n consul_server = true\n}",
			obs: with(cluster("server", "a", "b", "c", "d", "e"), func(o *Observed) {
				o.Members["a"] = Member{Name: "a", Status: state.MemberFailed}
				r := o.Records["a"]
				r.State, r.FailedSince = StateFailed, now
				o.Records["a"] = r
			}),
		},
		{
			name: "a machine spawned by hand is on top of the description",
			src:  threeServers,
			obs: with(cluster("server", "a", "b", "c", "d"), func(o *Observed) {
				r := o.Records["d"]
				r.Manual = true
				o.Records["d"] = r
			}),
			types: map[string]state.TypeStatus{"server": {Min: 3, Max: 3, Live: 3}},
		},
		{
			name: "a dead machine spawned by hand is reaped and not replaced",
			src:  threeServers,
			obs: with(cluster("server", "a", "b", "c", "d"), func(o *Observed) {
				r := o.Records["d"]
				r.Manual, r.State, r.FailedSince = true, StateFailed, now.Add(-time.Minute)
				o.Records["d"] = r
				o.Members["d"] = Member{Name: "d", Status: state.MemberFailed}
			}),
			want: []state.Action{{Kind: state.KindReap, MachineID: "d", Type: "server", Backend: "local", Reason: "failed for 1m0s, longer than the grace period (30s)"}},
		},
		{
			name: "workers scale down together and hand-spawned machines stay",
			src:  `machine "server" {` + "\n min = 1\n consul_server = true\n}\n" + `machine "worker" {` + "\n min = 1\n max = 2\n}",
			obs: with(cluster("worker", "w1", "w2", "w3", "w4", "w5"), func(o *Observed) {
				r := o.Records["w5"]
				r.Manual = true
				o.Records["w5"] = r
				o.Records["s"] = Record{ID: "s", Type: "server", Backend: "local", State: StateJoined}
				o.Members["s"] = Member{Name: "s", Status: state.MemberAlive}
				o.Instances["local"]["s"] = backends.Instance{MachineID: "s", Running: true}
			}),
			want: []state.Action{
				{Kind: state.KindScaleDown, MachineID: "w4", Type: "worker", Backend: "local", Reason: "more than max 2"},
				{Kind: state.KindScaleDown, MachineID: "w3", Type: "worker", Backend: "local", Reason: "more than max 2"},
			},
		},
		{
			name: "an instance without a record is destroyed once it is old enough",
			src:  threeServers,
			obs: with(cluster("server", "a", "b", "c"), func(o *Observed) {
				o.Instances["local"]["old"] = backends.Instance{MachineID: "old", MachineType: "server", Created: now.Add(-time.Minute)}
				o.Instances["local"]["new"] = backends.Instance{MachineID: "new", MachineType: "server", Created: now.Add(-time.Second)}
			}),
			want: []state.Action{{Kind: state.KindDestroyOrphan, MachineID: "old", Type: "server", Backend: "local", Reason: "instance has no inventory record"}},
		},
		{
			name: "an interrupted removal is finished",
			src:  threeServers,
			obs: with(cluster("server", "a", "b", "c"), func(o *Observed) {
				o.Records["x"] = Record{ID: "x", Type: "server", Backend: "local", State: StateDestroying, Reason: "scaled down"}
			}),
			want: []state.Action{{Kind: state.KindReap, MachineID: "x", Type: "server", Backend: "local", Reason: "finish removal: scaled down"}},
		},
		{
			name: "a machine with an action in flight is left to it",
			src:  threeServers,
			obs: with(cluster("server", "a", "b", "c"), func(o *Observed) {
				o.Members["c"] = Member{Name: "c", Status: state.MemberFailed}
				o.InFlight = map[string]bool{"c": true}
			}),
		},
		{
			name: "a machine of a type no longer described is removed once the rest is at strength",
			src:  threeServers,
			obs: with(cluster("server", "a", "b", "c"), func(o *Observed) {
				o.Records["w"] = Record{ID: "w", Type: "worker", Backend: "local", State: StateJoined}
				o.Members["w"] = Member{Name: "w", Status: state.MemberAlive}
				o.Instances["local"]["w"] = backends.Instance{MachineID: "w", Running: true}
			}),
			want: []state.Action{{Kind: state.KindScaleDown, MachineID: "w", Type: "worker", Backend: "local", Reason: `machine type "worker" is not in the description`}},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := Plan(platform(t, tc.src), watched(tc.obs), now)
			if diff := cmp.Diff(tc.want, got.Actions); diff != "" {
				t.Errorf("actions (-want +got):\n%s\nwaiting: %q", diff, got.Waiting)
			}
			if (got.Halted != "") != tc.halted {
				t.Errorf("halted: got %q want halted=%v", got.Halted, tc.halted)
			}
			if tc.types != nil {
				if diff := cmp.Diff(tc.types, got.Types); diff != "" {
					t.Errorf("types (-want +got):\n%s", diff)
				}
			}
		})
	}
}

func TestPlanWakesWhenATimerRunsOut(t *testing.T) {
	now := t0.Add(time.Hour)
	p := platform(t, threeServers)
	obs := with(cluster("server", "a", "b", "c"), func(o *Observed) {
		o.Members["c"] = Member{Name: "c", Status: state.MemberFailed}
		r := o.Records["c"]
		r.State, r.FailedSince = StateFailed, now.Add(-10*time.Second)
		o.Records["c"] = r
	})
	if got, want := Plan(p, watched(obs), now).NextCheck, now.Add(20*time.Second); !got.Equal(want) {
		t.Errorf("next check with a failed member: got %v want the end of its grace period %v", got, want)
	}
	if got := Plan(p, cluster("server", "a", "b", "c"), now).NextCheck; !got.IsZero() {
		t.Errorf("next check at rest: got %v want none", got)
	}
}

func TestPlanExplainsWaiting(t *testing.T) {
	now := t0
	p := platform(t, threeServers)
	obs := with(cluster("server", "a"), func(o *Observed) {
		o.BackendErrors = map[string]string{"local": "binary missing"}
	})
	got := Plan(p, obs, now)
	want := []string{`backend "local" skipped: binary missing`, `machine "server": 2 to spawn, but no backend is usable`}
	if diff := cmp.Diff(want, got.Waiting); diff != "" {
		t.Errorf("waiting (-want +got):\n%s", diff)
	}

	// A backend backing off says what failed last.
	obs = with(cluster("server", "a"), func(o *Observed) {
		o.BackoffUntil = map[string]time.Time{"local": now.Add(4 * time.Second)}
		o.BackendFailures = map[string]string{"local": "start_instance timed out after 3s and was killed"}
	})
	got = Plan(p, obs, now)
	want = []string{`backend "local" skipped: backing off for 4s after failures (last: start_instance timed out after 3s and was killed)`, `machine "server": 2 to spawn, but no backend is usable`}
	if diff := cmp.Diff(want, got.Waiting); diff != "" {
		t.Errorf("waiting (-want +got):\n%s", diff)
	}
}

// TestPlanConverges runs the planner against a simulated world until it stops
// acting, checking that it reaches the desired size and never spawns more than
// the need.
func TestPlanConverges(t *testing.T) {
	p := platform(t, threeServers+`machine "worker" {
  min = 4
  max = 6
}`)
	obs := cluster("server", "seed")
	now := t0
	spawned := 0
	for pass := 0; pass < 50; pass++ {
		d := Plan(p, obs, now)
		if len(d.Actions) == 0 && len(d.Waiting) == 0 {
			break
		}
		for _, a := range d.Actions {
			switch a.Kind {
			case state.KindSpawn:
				spawned++
				id := a.Type + string(rune('a'+spawned))
				obs.Records[id] = Record{ID: id, Type: a.Type, Backend: a.Backend, State: StateSpawning, Updated: now}
				obs.Instances["local"][id] = backends.Instance{MachineID: id, Running: true, Created: now}
				obs.LastSpawn = map[string]time.Time{a.Type: now}
			case state.KindMarkJoined:
				r := obs.Records[a.MachineID]
				r.State = StateJoined
				obs.Records[a.MachineID] = r
			default:
				t.Fatalf("unexpected action %+v", a)
			}
		}
		// Whatever was spawned last pass joins now: a server as a
		// voter, as autopilot makes it once it is stable.
		for id, r := range obs.Records {
			if r.State == StateSpawning {
				srv := p.Machines[r.Type].ConsulServer
				obs.Members[id] = Member{Name: id, Status: state.MemberAlive, Server: srv, Voter: srv, RaftVoter: srv}
			}
		}
		now = now.Add(time.Second)
	}
	if spawned != 6 {
		t.Errorf("spawned %d machines, want 6 (2 servers and 4 workers)", spawned)
	}
	d := Plan(p, obs, now)
	want := map[string]state.TypeStatus{"server": {Min: 3, Max: 3, Live: 3}, "worker": {Min: 4, Max: 6, Live: 4}}
	if diff := cmp.Diff(want, d.Types); diff != "" {
		t.Errorf("final types (-want +got):\n%s", diff)
	}
}

// TestPlanAgesOnItsOwnClock is issue 15's clock step: times in records were
// written by other leaders' wall clocks (or by this one before its clock
// stepped), so a leader that has only just seen a failure, a join or an
// orphan removes nothing, however old the record says it is.
func TestPlanAgesOnItsOwnClock(t *testing.T) {
	now := t0.Add(time.Hour)
	p := platform(t, threeServers+`machine "worker" {
  min = 1
}`)
	obs := with(cluster("server", "a", "b", "c"), func(o *Observed) {
		o.Members["c"] = Member{Name: "c", Status: state.MemberFailed, Server: true}
		r := o.Records["c"]
		r.State, r.FailedSince = StateFailed, now.Add(-3*time.Minute)
		o.Records["c"] = r
		o.Records["w"] = Record{ID: "w", Type: "worker", Backend: "local", State: StateJoining, Updated: now.Add(-3 * time.Minute)}
		o.Instances["local"]["w"] = backends.Instance{MachineID: "w", Running: true}
		o.Instances["local"]["stray"] = backends.Instance{MachineID: "stray", Running: true, Created: now.Add(-3 * time.Minute)}
	})
	obs.Seen = map[string]Sighting{} // a leader's first pass
	for _, step := range []struct {
		after time.Duration
		want  []state.Action
	}{
		{after: 0},
		{after: time.Second},
		{after: 29 * time.Second, want: []state.Action{
			{Kind: state.KindDestroyOrphan, MachineID: "stray", Backend: "local", Reason: "instance has no inventory record"},
		}},
		{after: 31 * time.Second, want: []state.Action{
			{Kind: state.KindSpawn, Type: "server", Backend: "local", Reason: "2 of min 3"},
			{Kind: state.KindReap, MachineID: "c", Type: "server", Backend: "local", Reason: "failed for 31s, longer than the grace period (30s)"},
		}},
		{after: time.Minute, want: []state.Action{
			{Kind: state.KindSpawn, Type: "server", Backend: "local", Reason: "2 of min 3"},
			{Kind: state.KindSpawn, Type: "worker", Backend: "local", Reason: "0 of min 1"},
			{Kind: state.KindReap, MachineID: "c", Type: "server", Backend: "local", Reason: "failed for 1m0s, longer than the grace period (30s)"},
			{Kind: state.KindReap, MachineID: "w", Type: "worker", Backend: "local", Reason: "did not join within the provision timeout (1m0s)"},
		}},
	} {
		d := Plan(p, obs, now.Add(step.after))
		var got []state.Action
		for _, a := range d.Actions {
			if a.Kind != state.KindMarkFailed {
				got = append(got, a)
			}
		}
		if diff := cmp.Diff(step.want, got); diff != "" {
			t.Errorf("%s after this leader first looked (-want +got):\n%s", step.after, diff)
		}
		obs.Seen = d.Seen
		for _, a := range got {
			if a.Kind == state.KindDestroyOrphan {
				delete(obs.Instances[a.Backend], a.MachineID)
			}
		}
	}
}

// TestPlanReapsOnlyWhenTwoPassesAgree: a backend's one list that leaves a
// machine out is not enough to reap it, however sure it looks.
// TestPlanHoldsOrphansEarlyInATerm: a leader whose term just began (often
// on a KV re-seeded from a mirror older than the machines) waits the
// provision timeout before it takes an unrecorded instance for an orphan,
// since machines rejoining the re-created cluster take that long.
func TestPlanHoldsOrphansEarlyInATerm(t *testing.T) {
	now := t0.Add(time.Hour)
	p := platform(t, threeServers)
	obs := with(cluster("server", "a", "b", "c"), func(o *Observed) {
		o.Instances["local"]["old"] = backends.Instance{MachineID: "old", MachineType: "server", Running: true}
		o.Seen = map[string]Sighting{"old": {Cond: condOrphan, First: now.Add(-30 * time.Second), Passes: 30}}
		o.TermStart = now.Add(-30 * time.Second)
	})
	if d := Plan(p, obs, now); len(d.Actions) != 0 {
		t.Errorf("30 s into a term, with a provision timeout of 1m: %+v", d.Actions)
	}
	obs.Seen["old"] = Sighting{Cond: condOrphan, First: now.Add(-time.Minute), Passes: 60}
	obs.TermStart = now.Add(-time.Minute)
	want := []state.Action{{Kind: state.KindDestroyOrphan, MachineID: "old", Type: "server", Backend: "local", Reason: "instance has no inventory record"}}
	if diff := cmp.Diff(want, Plan(p, obs, now).Actions); diff != "" {
		t.Errorf("a provision timeout into the term (-want +got):\n%s", diff)
	}
}

func TestPlanReapsOnlyWhenTwoPassesAgree(t *testing.T) {
	now := t0.Add(time.Hour)
	p := platform(t, threeServers)
	obs := with(cluster("server", "a", "b", "c"), func(o *Observed) {
		delete(o.Instances["local"], "c")
		o.Members["c"] = Member{Name: "c", Status: state.MemberFailed, Server: true}
	})
	obs.Seen = map[string]Sighting{}
	d := Plan(p, obs, now)
	for _, a := range d.Actions {
		if a.Kind == state.KindReap {
			t.Fatalf("first pass that saw c gone reaped it: %+v", d.Actions)
		}
	}
	if want := now.Add(confirmAfter); !d.NextCheck.Equal(want) {
		t.Errorf("next check: got %v want %v, to confirm soon", d.NextCheck, want)
	}
	obs.Seen = d.Seen
	d = Plan(p, obs, now.Add(confirmAfter))
	reaped := false
	for _, a := range d.Actions {
		reaped = reaped || a.Kind == state.KindReap && a.MachineID == "c"
	}
	if !reaped {
		t.Errorf("second pass that saw c gone did not reap it: %+v", d.Actions)
	}

	// The machine back in between starts the count again.
	obs.Seen = map[string]Sighting{"c": {Cond: condDown, First: now, Passes: 1}}
	obs.Instances["local"]["c"] = backends.Instance{MachineID: "c", Running: true}
	obs.Members["c"] = Member{Name: "c", Status: state.MemberAlive, Server: true, Voter: true}
	if d := Plan(p, obs, now.Add(confirmAfter)); len(d.Seen) != 0 {
		t.Errorf("a machine up again keeps its sighting: %+v", d.Seen)
	}
}

// TestPlanConfirmsASecondApartOnFreshLists: a pass that came soon after
// the first sighting (an event woke it) does not confirm a removal; each
// pass that waits on one asks for fresh lists.
func TestPlanConfirmsASecondApartOnFreshLists(t *testing.T) {
	now := t0.Add(time.Hour)
	p := platform(t, threeServers)
	obs := with(cluster("server", "a", "b", "c"), func(o *Observed) {
		o.Instances["local"]["c"] = backends.Instance{MachineID: "c", Running: false}
	})
	obs.Seen = map[string]Sighting{}
	reaps := func(d Decision) bool {
		for _, a := range d.Actions {
			if a.Kind == state.KindReap {
				return true
			}
		}
		return false
	}
	d := Plan(p, obs, now)
	if reaps(d) || !d.FreshLists {
		t.Fatalf("first pass: reaps %v, fresh lists %v; want no reap, fresh lists", reaps(d), d.FreshLists)
	}
	obs.Seen = d.Seen
	soon := now.Add(confirmAfter / 5)
	d = Plan(p, obs, soon)
	if reaps(d) || !d.FreshLists {
		t.Fatalf("a pass %s after: reaps %v, fresh lists %v; want no reap, fresh lists", confirmAfter/5, reaps(d), d.FreshLists)
	}
	if want := now.Add(confirmAfter); !d.NextCheck.Equal(want) {
		t.Errorf("next check %v, want %v: a second after the first sighting", d.NextCheck, want)
	}
	obs.Seen = d.Seen
	if d = Plan(p, obs, now.Add(confirmAfter)); !reaps(d) {
		t.Errorf("a second after, still stopped: not reaped: %+v", d.Actions)
	}
	if d.FreshLists {
		t.Error("nothing waits, and the pass asks for fresh lists")
	}
}

// TestPlanLooksAgainAtAServerAwaitingItsVote: a server that is an alive
// member but not yet a Raft voter is looked at again within a second, since
// autopilot's promotion wakes nothing; a joining machine far from its
// provision timeout asks for no fresh lists (a burst of joins reuses them).
func TestPlanLooksAgainAtAServerAwaitingItsVote(t *testing.T) {
	now := t0.Add(time.Hour)
	p := platform(t, threeServers)
	obs := with(cluster("server", "a", "b", "c"), func(o *Observed) {
		o.Records["c"] = Record{ID: "c", Type: "server", Backend: "local", State: StateJoining, Updated: now}
		o.Members["c"] = Member{Name: "c", Status: state.MemberAlive, Server: true, Voter: false}
	})
	obs.Seen = map[string]Sighting{}
	d := Plan(p, obs, now)
	for _, a := range d.Actions {
		if a.Kind == state.KindMarkJoined {
			t.Fatalf("a server that is not a voter marked joined: %+v", d.Actions)
		}
	}
	if want := now.Add(voterRecheck); !d.NextCheck.Equal(want) {
		t.Errorf("next check %v, want %v", d.NextCheck, want)
	}
	if d.FreshLists {
		t.Error("a join a minute from its timeout asks for fresh lists")
	}
}

// TestPlanReapsAtMostMaxUnhealthyPerPass: however many machines one
// observation condemns, a pass removes no more than the cluster may lose.
func TestPlanReapsAtMostMaxUnhealthyPerPass(t *testing.T) {
	now := t0.Add(time.Hour)
	p := platform(t, `
policy {
  provision_timeout = "1m"
  max_unhealthy = 2
}
machine "server" {
  min = 1
  consul_server = true
}
machine "worker" {
  min = 4
}`)
	obs := cluster("server", "a")
	for _, id := range []string{"w1", "w2", "w3", "w4"} {
		obs.Records[id] = Record{ID: id, Type: "worker", Backend: "local", State: StateJoining, Updated: now.Add(-time.Hour)}
		obs.Instances["local"][id] = backends.Instance{MachineID: id, Running: true}
	}
	reaps := func(d Decision) (ids []string) {
		for _, a := range d.Actions {
			if a.Kind == state.KindReap {
				ids = append(ids, a.MachineID)
			}
		}
		return ids
	}
	d := Plan(p, watched(obs), now)
	if diff := cmp.Diff([]string{"w1", "w2"}, reaps(d)); diff != "" {
		t.Errorf("reaps in one pass (-want +got):\n%s", diff)
	}
	if want := now.Add(confirmAfter); !d.NextCheck.Equal(want) {
		t.Errorf("next check: got %v want %v, for the reaps held back", d.NextCheck, want)
	}
}

// TestPlanSaysWhoOffersABackendTheLeaderCannotUse: status names the members
// TestPlanPlacesWhereTheLeaderCannot: a backend the leader cannot run
// itself is given to the members that offer it, spread across them; with
// none, the status says so.
func TestPlanPlacesWhereTheLeaderCannot(t *testing.T) {
	p := platform(t, threeServers)
	obs := with(cluster("server", "a"), func(o *Observed) {
		o.Self = "a"
		o.BackendErrors = map[string]string{"local": "unavailable: binary missing"}
		o.Offers = offers(offering("a", "!local"), offering("b", "local"), offering("c", "local"))
		o.Members["b"] = Member{Name: "b", Status: state.MemberAlive, Server: true, RaftVoter: true}
		o.Members["c"] = Member{Name: "c", Status: state.MemberAlive, Server: true, RaftVoter: true}
	})
	d := Plan(p, obs, t0)
	var hosts []string
	for _, a := range d.Actions {
		if a.Kind != state.KindSpawn || a.Backend != "local" {
			t.Fatalf("action %+v, want spawns on local", a)
		}
		hosts = append(hosts, a.Host)
	}
	if !reflect.DeepEqual(hosts, []string{"b", "c"}) {
		t.Errorf("spawned on %q, want one on b and one on c (two servers never share a host while another can take one)", hosts)
	}

	obs.Offers = offers(offering("a", "!local"), offering("c", "!local"))
	d = Plan(p, obs, t0)
	if len(d.Actions) != 0 {
		t.Errorf("actions %+v with no member offering local", d.Actions)
	}
	if len(d.Waiting) == 0 || d.Waiting[0] != `backend "local" skipped: unavailable: binary missing; backend "local": no member offers it` {
		t.Errorf("waiting: %q", d.Waiting)
	}

	// A host backing off a backend after its failures there is passed
	// over, and said to be.
	obs.Offers = offers(offering("a", "!local"), offering("b", "local"))
	obs.HostBackoffUntil = map[string]map[string]time.Time{"b": {"local": t0.Add(time.Minute)}}
	d = Plan(p, obs, t0)
	if len(d.Actions) != 0 || len(d.Waiting) == 0 || !strings.Contains(d.Waiting[0], "host b backing off for 1m0s") {
		t.Errorf("actions %+v, waiting %q: want none, and host b backing off", d.Actions, d.Waiting)
	}
	if d.NextCheck != t0.Add(time.Minute) {
		t.Errorf("next check %v, want when b's backoff ends", d.NextCheck)
	}
}

// TestPlanSpreadsOverTheLeaderAndTheMembers: the leader is one host among
// the members that offer a backend: three servers land on three hosts
// though the leader could run them all, and the leader keeps a tie.
func TestPlanSpreadsOverTheLeaderAndTheMembers(t *testing.T) {
	p := platform(t, threeServers)
	obs := with(cluster("server", "a"), func(o *Observed) {
		o.Self = "a"
		r := o.Records["a"]
		r.Host = "a"
		o.Records["a"] = r
		o.Offers = offers(offering("a", "local"), offering("b", "local"), offering("c", "local"))
		o.Members["b"] = Member{Name: "b", Status: state.MemberAlive, Server: true, RaftVoter: true}
		o.Members["c"] = Member{Name: "c", Status: state.MemberAlive, Server: true, RaftVoter: true}
		o.Scopes = map[string]string{"local": "local:box-a"}
		bo := o.Offers["b"].Backends["local"]
		bo.Scope = "local:box-b"
		o.Offers["b"].Backends["local"] = bo
	})
	var hosts []string
	scopes := map[string]string{}
	for _, a := range Plan(p, obs, t0).Actions {
		if a.Kind == state.KindSpawn {
			hosts = append(hosts, a.Host)
			scopes[a.Host] = a.Scope
		}
	}
	if !reflect.DeepEqual(hosts, []string{"b", "c"}) {
		t.Errorf("servers spawned on %q, want b and c: a already holds one", hosts)
	}
	if scopes["b"] != "local:box-b" || scopes["c"] != "" {
		t.Errorf("spawns' scopes %v, want b's offer's scope on b, none on c", scopes)
	}
	// A server made before records named hosts counts for no host: the
	// leader wins the tie and runs the first spawn itself.
	r := obs.Records["a"]
	r.Host = ""
	obs.Records["a"] = r
	hosts = nil
	for _, a := range Plan(p, obs, t0).Actions {
		if a.Kind == state.KindSpawn {
			hosts = append(hosts, a.Host)
		}
	}
	if !reflect.DeepEqual(hosts, []string{"", "b"}) {
		t.Errorf("servers spawned on %q, want the leader itself (\"\") then b", hosts)
	}
	for _, a := range Plan(p, obs, t0).Actions {
		if a.Kind == state.KindSpawn && a.Host == "" && a.Scope != "local:box-a" {
			t.Errorf("the leader's spawn has scope %q, want its own backend's", a.Scope)
		}
	}
}

// TestPlanHoldsToEachHostsCapacity: a backend's max_per_host caps what
// placement gives one member, counting the machines the records say it
// holds; when every host is full the status says so.
func TestPlanHoldsToEachHostsCapacity(t *testing.T) {
	p := platform(t, `
backend "docker" {
  max_per_host = 2
}
machine "server" {
  min = 1
  consul_server = true
}
machine "web" {
  min = 5
  backends = ["docker"]
}
policy {
  max_concurrent_spawns = 10
}
`)
	obs := with(cluster("server", "a"), func(o *Observed) {
		o.Self = "a"
		o.BackendErrors = map[string]string{"docker": "unavailable: no socket"}
		o.Offers = offers(offering("a", "!docker"), offering("b", "docker"), offering("c", "docker"))
		o.Records["web-1"] = Record{ID: "web-1", Type: "web", Backend: "docker", Host: "b", State: StateJoined}
		o.Members["web-1"] = Member{Name: "web-1", Status: state.MemberAlive, Type: "web"}
	})
	d := Plan(p, obs, t0)
	perHost := map[string]int{}
	for _, a := range d.Actions {
		if a.Kind == state.KindSpawn {
			perHost[a.Host]++
		}
	}
	if perHost["b"] != 1 || perHost["c"] != 2 || len(perHost) != 2 {
		t.Errorf("spawns per host %v, want b 1 (it holds one) and c 2", perHost)
	}
	want := `machine "web": 1 more to spawn once there is room: backend "docker": every host offering it is full (2 per host)`
	if !strings.Contains(strings.Join(d.Waiting, "\n"), want) {
		t.Errorf("waiting %q, want %q", d.Waiting, want)
	}
}

// TestPlanGivesServersOnlyToServers: a server's node config carries the
// cluster's token and the CA key, so a server spawn goes only to the
// leader or another server, whatever a client's offer says.
func TestPlanGivesServersOnlyToServers(t *testing.T) {
	p := platform(t, threeServers)
	obs := with(cluster("server", "a"), func(o *Observed) {
		o.Self = "a"
		o.BackendErrors = map[string]string{"local": "unavailable: binary missing"}
		o.Offers = offers(offering("a", "!local"), offering("client-1", "local"))
		o.Members["client-1"] = Member{Name: "client-1", Status: state.MemberAlive, Type: "worker"}
	})
	d := Plan(p, obs, t0)
	for _, a := range d.Actions {
		if a.Kind == state.KindSpawn {
			t.Errorf("server spawn %+v: a client offered local, and must not get it", a)
		}
	}
	if len(d.Waiting) == 0 || !strings.Contains(d.Waiting[0], `backend "local": no member offers it`) {
		t.Errorf("waiting %q", d.Waiting)
	}
}

// TestPlanNeverPlacesOnAMachineItsBackendReportsGone: a machine whose
// instance its backend lists stopped is still an alive member until Consul
// notices, and still offers its backends; it holds the fewest servers, and
// a replacement must not go to it (it went there, and waited on a host
// that was dead).
func TestPlanNeverPlacesOnAMachineItsBackendReportsGone(t *testing.T) {
	p := platform(t, `
machine "server" {
  min = 5
  consul_server = true
}
`)
	obs := with(cluster("server", "a", "b", "c", "d", "e"), func(o *Observed) {
		o.Self = "a"
		for _, id := range []string{"a", "b", "c"} {
			r := o.Records[id]
			r.Host = "a"
			o.Records[id] = r
		}
		for _, id := range []string{"d", "e"} {
			r := o.Records[id]
			r.Host = "b"
			o.Records[id] = r
		}
		o.Offers = offers(offering("a", "local"), offering("b", "local"), offering("c", "local"), offering("d", "local"), offering("e", "local"))
		// d and e run on b, the others on a; c's process is gone,
		// Consul has it alive.
		o.Instances["local"]["c"] = backends.Instance{MachineID: "c", MachineType: "server", Running: false}
	})
	obs.Seen = map[string]Sighting{"c": {Cond: condDown, First: t0, Passes: 1}}
	d := Plan(p, obs, t0.Add(confirmAfter))
	spawned := false
	for _, a := range d.Actions {
		if a.Kind == state.KindSpawn {
			spawned = true
			if a.Host == "c" {
				t.Errorf("replacement placed on c, whose instance is gone: %+v", a)
			}
		}
	}
	if !spawned {
		t.Fatalf("no replacement for c: %+v (waiting %q)", d.Actions, d.Waiting)
	}
}

// TestPlanPrefersTheTypesBackendOrderAnywhere: the type's first backend
// wins when any member offers it, even when the leader could run the second
// itself.
func TestPlanPrefersTheTypesBackendOrderAnywhere(t *testing.T) {
	p := platform(t, `
machine "server" {
  min = 1
  consul_server = true
}
machine "web" {
  min = 1
  backends = ["docker", "local"]
}
`)
	obs := with(cluster("server", "a"), func(o *Observed) {
		o.Self = "a"
		o.BackendErrors = map[string]string{"docker": "unavailable: no socket"}
		o.Offers = offers(offering("a", "!docker", "local"), offering("b", "docker"))
	})
	d := Plan(p, obs, t0)
	if len(d.Actions) != 1 || d.Actions[0].Backend != "docker" || d.Actions[0].Host != "b" {
		t.Errorf("actions %+v, want one docker spawn on b", d.Actions)
	}
	// b goes: the type falls through to its next backend, on the leader.
	delete(obs.Offers, "b")
	d = Plan(p, obs, t0)
	if len(d.Actions) != 1 || d.Actions[0].Backend != "local" || d.Actions[0].Host != "" {
		t.Errorf("actions %+v, want one local spawn on the leader", d.Actions)
	}
}

// hostList is an offer of host listing the given machines on backend b,
// written at index.
func hostList(host, b string, index uint64, ids ...string) state.Offer {
	o := offering(host, b)
	bo := o.Backends[b]
	bo.Listed = true
	for _, id := range ids {
		bo.Instances = append(bo.Instances, backends.Instance{MachineID: id, MachineType: "server", Running: true})
	}
	o.Backends[b] = bo
	o.Index = index
	return o
}

// TestPlanRemovesOnTwoListsOfItsHost: a machine only its host's list
// says is gone, which Consul still has alive, is removed only once a list
// the host published later agrees: the leader cannot ask that list again,
// and a container restarted in the meantime shows running in the next.
func TestPlanRemovesOnTwoListsOfItsHost(t *testing.T) {
	p := platform(t, threeServers)
	stopped := func(index uint64, running bool) map[string]state.Offer {
		o := hostList("b", "docker", index, "c")
		bo := o.Backends["docker"]
		bo.Instances[0].Running = running
		o.Backends["docker"] = bo
		return offers(offering("a"), o)
	}
	base := with(cluster("server", "a", "b", "c"), func(o *Observed) {
		o.Self = "a"
		r := o.Records["c"]
		r.Host, r.Backend, r.HostSince = "b", "docker", 100
		o.Records["c"] = r
		delete(o.Instances["local"], "c")
	})
	reaps := func(d Decision) bool {
		for _, a := range d.Actions {
			if a.Kind == state.KindReap && a.MachineID == "c" {
				return true
			}
		}
		return false
	}
	obs := with(base, func(o *Observed) { o.Offers = stopped(101, false) })
	obs.Seen = map[string]Sighting{}
	d := Plan(p, obs, t0)
	obs.Seen = d.Seen
	if d = Plan(p, obs, t0.Add(2*confirmAfter)); reaps(d) {
		t.Fatalf("reaped on one list of its host, read twice: %+v", d.Actions)
	}
	later := with(obs, func(o *Observed) { o.Offers = stopped(102, false) })
	later.Seen = d.Seen
	if d := Plan(p, later, t0.Add(3*confirmAfter)); !reaps(d) {
		t.Errorf("a later list of its host agrees, and it was not reaped: %+v", d.Actions)
	}
	back := with(obs, func(o *Observed) { o.Offers = stopped(102, true) })
	back.Seen = d.Seen
	if d := Plan(p, back, t0.Add(3*confirmAfter)); reaps(d) {
		t.Errorf("its host lists it running again, and it was reaped: %+v", d.Actions)
	}
}

// TestPlanJudgesAMachineByItsHostsList: a machine another member made is
// gone when that member's list, written after it reported the machine
// made, no longer has it; an older list, or a host that is not alive, says
// nothing of it.
func TestPlanJudgesAMachineByItsHostsList(t *testing.T) {
	p := platform(t, threeServers)
	base := with(cluster("server", "a", "b", "c"), func(o *Observed) {
		o.Self = "a"
		r := o.Records["c"]
		r.Host, r.Backend, r.HostSince = "b", "docker", 100
		o.Records["c"] = r
		delete(o.Instances["local"], "c")
		o.Members["c"] = Member{Name: "c", Status: state.MemberFailed, Server: true}
	})
	cases := []struct {
		name    string
		offers  map[string]state.Offer
		leaders map[string]backends.Instance // the leader's own list of docker
		reapNow bool
	}{
		{"listed without it, after the spawn", offers(offering("a"), hostList("b", "docker", 101, "x")), nil, true},
		{"listed with it", offers(offering("a"), hostList("b", "docker", 101, "c")), nil, false},
		{"list older than the spawn", offers(offering("a"), hostList("b", "docker", 99)), nil, false},
		{"host not alive", offers(offering("a")), nil, false},
		{"host not alive, the leader lists it stopped", offers(offering("a")), map[string]backends.Instance{"c": {MachineID: "c"}}, true},
		{"host not alive, the leader lists it running", offers(offering("a")), map[string]backends.Instance{"c": {MachineID: "c", Running: true}}, false},
		{"host not alive, the leader's list lacks it", offers(offering("a")), map[string]backends.Instance{}, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			obs := with(base, func(o *Observed) {
				o.Offers = c.offers
				o.Instances = map[string]map[string]backends.Instance{"local": o.Instances["local"]}
				if c.leaders != nil {
					o.Instances["docker"] = c.leaders
				}
			})
			obs.Seen = map[string]Sighting{"c": {Cond: condDown, First: t0.Add(-time.Second), Passes: 1}}
			d := Plan(p, obs, t0)
			var reap *state.Action
			for i, a := range d.Actions {
				if a.Kind == state.KindReap && a.MachineID == "c" {
					reap = &d.Actions[i]
				}
			}
			if (reap != nil) != c.reapNow {
				t.Fatalf("reap of c: %v, want %v (actions %+v)", reap != nil, c.reapNow, d.Actions)
			}
			if reap != nil && reap.Host != "b" {
				t.Errorf("reap of c on host %q, want b (its destroy goes where it was made)", reap.Host)
			}
		})
	}
}

// TestPlanRunsWhatItsOwnBackendHolds: a machine whose host's backend
// manages the same thing as the leader's (one engine, one box) is the
// leader's to judge and remove, its host alive or not: a spawn its dead
// host left half-made is cleaned up, not stuck waiting for the host.
func TestPlanRunsWhatItsOwnBackendHolds(t *testing.T) {
	p := platform(t, threeServers)
	obs := with(cluster("server", "a", "b"), func(o *Observed) {
		o.Self = "a"
		o.Scopes = map[string]string{"local": "local:box-1"}
		o.Offers = offers(offering("a", "local"))
		o.Records["c"] = Record{ID: "c", Type: "server", Backend: "local", Host: "b", Scope: "local:box-1", State: StateDestroying, Reason: "spawn failed"}
		o.Records["d"] = Record{ID: "d", Type: "server", Backend: "local", Host: "b", Scope: "local:box-2", State: StateDestroying, Reason: "spawn failed"}
	})
	where := map[string]string{}
	for _, a := range Plan(p, obs, t0).Actions {
		if a.Kind == state.KindReap {
			where[a.MachineID] = a.Host
		}
	}
	if h, ok := where["c"]; !ok || h != "" {
		t.Errorf("reap of c (the leader's scope) on %q (planned %v), want on the leader", h, ok)
	}
	if h, ok := where["d"]; !ok || h != "b" {
		t.Errorf("reap of d (another scope) on %q (planned %v), want on its host b", h, ok)
	}
}

// TestScalePlanReusesAListOnlyForOlderRecords: a list reused from an
// earlier pass says a machine is gone only when the machine's record is
// older than the list; one recorded since is not judged by its absence.
func TestScalePlanReusesAListOnlyForOlderRecords(t *testing.T) {
	p := platform(t, threeServers)
	for _, tc := range []struct {
		index uint64
		reap  bool
	}{{index: 30, reap: true}, {index: 50, reap: false}} {
		obs := with(cluster("server", "a", "b", "c"), func(o *Observed) {
			o.Self = "a"
			r := o.Records["c"]
			r.Index = tc.index
			o.Records["c"] = r
			delete(o.Instances["local"], "c")
			o.Members["c"] = Member{Name: "c", Status: state.MemberFailed, Server: true}
			o.ListedAt = map[string]uint64{"local": 40}
			o.Seen = map[string]Sighting{"c": {Cond: condDown, First: t0.Add(-time.Second), Passes: 1}}
		})
		reaped := false
		for _, a := range Plan(p, obs, t0).Actions {
			reaped = reaped || a.Kind == state.KindReap && a.MachineID == "c"
		}
		if reaped != tc.reap {
			t.Errorf("record at index %d, list at 40: reaped %v, want %v", tc.index, reaped, tc.reap)
		}
	}
}

// TestPlanOrphansAndLostRecordsOnAnotherHost: a machine another member
// lists without a record is destroyed there once seen long enough, unless
// it is an alive member, whose record is restored naming its host.
func TestPlanOrphansAndLostRecordsOnAnotherHost(t *testing.T) {
	p := platform(t, threeServers+"backend \"docker\" {\n  type = \"docker\"\n}\n")
	obs := with(cluster("server", "a", "b", "c"), func(o *Observed) {
		o.Self = "a"
		o.Offers = offers(offering("a"), hostList("b", "docker", 5, "lost", "orphan"))
		o.Members["lost"] = Member{Name: "lost", Status: state.MemberAlive, Server: true, Voter: true}
		o.Seen = map[string]Sighting{"orphan": {Cond: condOrphan, First: t0.Add(-time.Minute), Passes: 3}}
	})
	d := Plan(p, obs, t0)
	var restore, orphan *state.Action
	for i, a := range d.Actions {
		switch {
		case a.Kind == state.KindRestoreRecord && a.MachineID == "lost":
			restore = &d.Actions[i]
		case a.Kind == state.KindDestroyOrphan && a.MachineID == "orphan":
			orphan = &d.Actions[i]
		}
	}
	if restore == nil || restore.Host != "b" || restore.Backend != "docker" {
		t.Errorf("restore of lost: %+v, want one on docker naming host b", restore)
	}
	if orphan == nil || orphan.Host != "b" {
		t.Errorf("orphan destroy: %+v, want one on host b", orphan)
	}
	// A member of another scope that lists the same machines contests
	// them: neither restore nor destroy acts on either's word.
	liar := hostList("x", "docker", 6, "lost", "orphan")
	bo := liar.Backends["docker"]
	bo.Scope = "docker:elsewhere"
	liar.Backends["docker"] = bo
	obs.Offers["x"] = liar
	for _, a := range Plan(p, obs, t0).Actions {
		if a.MachineID == "lost" || a.MachineID == "orphan" {
			t.Errorf("action %+v on a machine two scopes claim", a)
		}
	}
	delete(obs.Offers, "x")
	// Where the leader lists the backend itself, its own list decides.
	obs.Instances["docker"] = map[string]backends.Instance{}
	for _, a := range Plan(p, obs, t0).Actions {
		if a.Host != "" {
			t.Errorf("action %+v on another host while the leader lists docker itself", a)
		}
	}
}

// TestPlanReadyAfterProvision: a machine of a ready_after_provision type
// counts as live only once its provisioning record says ok for the
// description's checksum; until then it is unready, named in Waiting, and
// not replaced.
func TestPlanReadyAfterProvision(t *testing.T) {
	const src = `
machine "server" {
  min = 1
  consul_server = true
}
machine "web" {
  min = 2
  ready_after_provision = true
  provisioner "site" {
    source = "file:///srv/git/site.git"
    steps  = [["make", "install"]]
  }
}
`
	p := platform(t, src)
	sum := p.Machines["web"].ProvisionChecksum()
	now := t0.Add(time.Hour)
	base := func(f func(o *Observed)) Observed {
		o := cluster("server", "s")
		for _, id := range []string{"w1", "w2"} {
			o.Records[id] = Record{ID: id, Type: "web", Backend: "local", State: StateJoined, Created: t0, Updated: t0}
			o.Members[id] = Member{Name: id, Status: state.MemberAlive, Type: "web"}
			o.Instances["local"][id] = backends.Instance{MachineID: id, MachineType: "web", Running: true, Created: t0}
		}
		if f != nil {
			f(&o)
		}
		return o
	}
	ok := state.Provisioned{State: state.ProvisionOK, Checksum: sum}
	for _, tc := range []struct {
		name    string
		src     string
		obs     Observed
		web     state.TypeStatus
		waiting []string
		spawns  int
	}{
		{
			name: "both provisioned for this description: live",
			obs:  base(func(o *Observed) { o.Provisioned = map[string]state.Provisioned{"w1": ok, "w2": ok} }),
			web:  state.TypeStatus{Min: 2, Max: 2, Live: 2},
		},
		{
			name:    "nothing published yet: unready, waiting, not replaced",
			obs:     base(func(o *Observed) { o.Provisioned = map[string]state.Provisioned{"w1": ok} }),
			web:     state.TypeStatus{Min: 2, Max: 2, Live: 1, Unready: 1},
			waiting: []string{"waiting for provisioning on w2"},
		},
		{
			name: "running, and ok for an earlier description: both unready",
			obs: base(func(o *Observed) {
				o.Provisioned = map[string]state.Provisioned{
					"w1": {State: state.ProvisionRunning, Checksum: sum},
					"w2": {State: state.ProvisionOK, Checksum: "an-earlier-description"},
				}
			}),
			web:     state.TypeStatus{Min: 2, Max: 2, Unready: 2},
			waiting: []string{"waiting for provisioning on w1", "waiting for provisioning on w2"},
		},
		{
			name: "failed: its last line is in Waiting",
			obs: base(func(o *Observed) {
				o.Provisioned = map[string]state.Provisioned{
					"w1": ok,
					"w2": {State: state.ProvisionFailed, Checksum: sum, Error: "step 1 (make): exit status 2", Output: "cc -o site site.c\nsite.c:3: error: expected ';'\n"},
				}
			}),
			web:     state.TypeStatus{Min: 2, Max: 2, Live: 1, Unready: 1},
			waiting: []string{"provisioning failed on w2: site.c:3: error: expected ';'"},
		},
		{
			name:    "records not read: unready, and still nothing spawned",
			obs:     base(nil),
			web:     state.TypeStatus{Min: 2, Max: 2, Unready: 2},
			waiting: []string{"waiting for provisioning on w1", "waiting for provisioning on w2"},
		},
		{
			name: "a machine short: the spawn still happens",
			obs: base(func(o *Observed) {
				delete(o.Records, "w2")
				delete(o.Members, "w2")
				delete(o.Instances["local"], "w2")
				o.Provisioned = map[string]state.Provisioned{"w1": {State: state.ProvisionRunning, Checksum: sum}}
			}),
			web:     state.TypeStatus{Min: 2, Max: 2, Unready: 1},
			waiting: []string{"waiting for provisioning on w1"},
			spawns:  1,
		},
		{
			name: "without ready_after_provision, a failed provisioning still counts live",
			src:  strings.Replace(src, "ready_after_provision = true", "", 1),
			obs: base(func(o *Observed) {
				o.Provisioned = map[string]state.Provisioned{"w1": {State: state.ProvisionFailed, Checksum: sum}}
			}),
			web: state.TypeStatus{Min: 2, Max: 2, Live: 2},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pl := p
			if tc.src != "" {
				pl = platform(t, tc.src)
			}
			d := Plan(pl, watched(tc.obs), now)
			if diff := cmp.Diff(tc.web, d.Types["web"]); diff != "" {
				t.Errorf("web counts (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tc.waiting, d.Waiting); diff != "" {
				t.Errorf("waiting (-want +got):\n%s", diff)
			}
			spawns := 0
			for _, a := range d.Actions {
				if a.Kind == state.KindSpawn {
					spawns++
				}
			}
			if spawns != tc.spawns {
				t.Errorf("got %d spawns want %d: %+v", spawns, tc.spawns, d.Actions)
			}
		})
	}
}

// TestPlanUnvotesAFailedServerItDoesNotReap: a server Consul has had failed
// past the grace period, whose reap does not go ahead (replacements are
// halted), is taken out of Raft, and its record left; never before the
// grace period, never one that is no Raft voter, never a majority of the
// voters, and not one the pass reaps (the reap takes it out).
func TestPlanUnvotesAFailedServerItDoesNotReap(t *testing.T) {
	now := t0.Add(time.Hour)
	p := platform(t, `
policy {
  grace_period = "30s"
  provision_timeout = "1m"
  max_unhealthy = 1
}
machine "server" {
  min = 5
  consul_server = true
}`)
	servers := func(failedSince time.Time, failed ...string) Observed {
		o := cluster("server", "a", "b", "c", "d", "e")
		for id, m := range o.Members {
			m.RaftVoter = true
			o.Members[id] = m
		}
		for _, id := range failed {
			o.Members[id] = Member{Name: id, Status: state.MemberFailed, Server: true, RaftVoter: true}
			r := o.Records[id]
			r.State, r.FailedSince = StateFailed, failedSince
			o.Records[id] = r
		}
		return watched(o)
	}
	kinds := func(d Decision) map[state.Kind][]string {
		out := map[state.Kind][]string{}
		for _, a := range d.Actions {
			out[a.Kind] = append(out[a.Kind], a.MachineID)
			if a.Kind == state.KindUnvote && a.Host != "" {
				t.Errorf("unvote of %s runs on %s, not the leader", a.MachineID, a.Host)
			}
		}
		return out
	}
	for _, tc := range []struct {
		name   string
		obs    Observed
		unvote []string
		reap   []string
	}{
		{"halted, past the grace period", servers(now.Add(-time.Minute), "d", "e"), []string{"d", "e"}, nil},
		{"halted, within the grace period", servers(now.Add(-10*time.Second), "d", "e"), nil, nil},
		{"a majority failed", servers(now.Add(-time.Minute), "c", "d", "e"), nil, nil},
		{"not a Raft voter", with(servers(now.Add(-time.Minute), "d", "e"), func(o *Observed) {
			m := o.Members["e"]
			m.RaftVoter = false
			o.Members["e"] = m
		}), []string{"d"}, nil},
		{"reaped, not halted", servers(now.Add(-time.Minute), "e"), nil, []string{"e"}},
		{"with a failed server reaped, a majority", with(servers(now.Add(-time.Minute), "c", "d", "e"), func(o *Observed) {
			r := o.Records["e"]
			r.State = StateDestroying // a removal already announced goes on while halted
			o.Records["e"] = r
		}), nil, []string{"e"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := kinds(Plan(p, tc.obs, now))
			if diff := cmp.Diff(tc.unvote, got[state.KindUnvote]); diff != "" {
				t.Errorf("unvotes (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tc.reap, got[state.KindReap]); diff != "" {
				t.Errorf("reaps (-want +got):\n%s", diff)
			}
		})
	}
}
