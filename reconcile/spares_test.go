package reconcile

import (
	"strings"
	"testing"
	"time"

	"github.com/raptiformica/raptiformica/backends"
	"github.com/raptiformica/raptiformica/internal/state"
)

const withSpares = `
policy {
  max_concurrent_spawns = 10
  grace_period          = "5m"
}
machine "server" {
  min = 1
  consul_server = true
}
machine "worker" {
  min    = 2
  spares = 1
}
`

// workers adds live machines of type worker to o, spares among them.
func workers(o *Observed, ids []string, spares ...string) {
	for i, id := range ids {
		r := Record{ID: id, Type: "worker", Backend: "local", State: StateJoined, Created: t0.Add(time.Duration(i) * time.Minute), Updated: t0}
		for _, s := range spares {
			r.Spare = r.Spare || s == id
		}
		o.Records[id] = r
		o.Members[id] = Member{Name: id, Status: state.MemberAlive, Type: "worker"}
		o.Instances["local"][id] = backends.Instance{MachineID: id, MachineType: "worker", Running: true, Created: t0}
	}
}

// TestElasticSpares: a type keeps its spares beside its count, made once
// its count is whole and not counted as live; when one of its machines
// dies, a spare is promoted in its place at once (no spawn for the type),
// and a new spare is made.
func TestElasticSpares(t *testing.T) {
	p := platform(t, withSpares)
	obs := with(cluster("server", "a"), func(o *Observed) { o.Self = "a"; workers(o, []string{"w1", "w2"}) })
	d := Plan(p, obs, t0)
	var spawns []state.Action
	for _, a := range d.Actions {
		if a.Kind == state.KindSpawn {
			spawns = append(spawns, a)
		}
	}
	if len(spawns) != 1 || !spawns[0].Spare || spawns[0].Type != "worker" {
		t.Fatalf("spawns %+v, want one spare worker", spawns)
	}

	// With its spare up: nothing to do, and the spare is not live.
	workers(&obs, []string{"w3"}, "w3")
	d = Plan(p, obs, t0)
	if len(d.Actions) != 0 || d.Types["worker"].Live != 2 || d.Types["worker"].Spares != 1 {
		t.Errorf("actions %+v, worker %+v: want none, 2 live and 1 spare", d.Actions, d.Types["worker"])
	}

	// w1's process dies: w3 is promoted at once, within the grace period,
	// with no spawn for the count; a new spare is made.
	delete(obs.Instances["local"], "w1")
	obs.Members["w1"] = Member{Name: "w1", Status: state.MemberFailed, Type: "worker"}
	obs.Records["w1"] = Record{ID: "w1", Type: "worker", Backend: "local", State: StateFailed, FailedSince: t0, Created: t0, Updated: t0}
	d = Plan(p, watched(obs), t0.Add(time.Second))
	var promoted []string
	spawns = nil
	for _, a := range d.Actions {
		switch a.Kind {
		case state.KindPromote:
			promoted = append(promoted, a.MachineID+": "+a.Reason)
		case state.KindSpawn:
			spawns = append(spawns, a)
		}
	}
	if len(promoted) != 1 || !strings.HasPrefix(promoted[0], "w3: spare promoted") {
		t.Errorf("promoted %q, want w3", promoted)
	}
	if len(spawns) != 1 || !spawns[0].Spare {
		t.Errorf("spawns %+v, want one: the new spare, none for the count", spawns)
	}
}

// TestElasticSparePromotedOnce: a machine down for its whole grace period
// has one spare promoted in its place, not one at every pass: once the
// type is whole again, a new spare is a spare.
func TestElasticSparePromotedOnce(t *testing.T) {
	p := platform(t, withSpares)
	obs := with(cluster("server", "a"), func(o *Observed) { o.Self = "a"; workers(o, []string{"w1", "w2", "w3", "w4"}, "w4") })
	// w3 was promoted for w1, which is still down within its grace period.
	obs.Members["w1"] = Member{Name: "w1", Status: state.MemberFailed, Type: "worker"}
	obs.Records["w1"] = Record{ID: "w1", Type: "worker", Backend: "local", State: StateFailed, FailedSince: t0, Created: t0, Updated: t0}
	for _, a := range Plan(p, watched(obs), t0.Add(time.Second)).Actions {
		if a.Kind == state.KindPromote {
			t.Errorf("promoted %s though the type is whole (w2, w3 live)", a.MachineID)
		}
	}
}

// TestElasticSparesGiveWayFirst: a lower type's spare gives way before
// its live machines.
func TestElasticSparesGiveWayFirst(t *testing.T) {
	p := platform(t, strings.Replace(elastic, "machine \"app\" {\n  min      = 3\n", "machine \"app\" {\n  min      = 1\n  spares   = 1\n", 1))
	obs := elasticObs([]string{"c"}, map[string]string{"app-1": "app@c", "app-2": "app@c"})
	r := obs.Records["app-1"]
	r.Spare = true
	obs.Records["app-1"] = r
	pre := preempts(Plan(p, obs, t0))
	if len(pre) != 1 || pre[0].MachineID != "app-1" {
		t.Errorf("preempts %+v, want app-1, the spare", pre)
	}
}
