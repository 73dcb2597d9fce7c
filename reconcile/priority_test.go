package reconcile

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/raptiformica/raptiformica/internal/state"
	"github.com/raptiformica/raptiformica/rules"
)

// elastic is a server on the leader and two types that want more room than
// hosts b and c have (two machines each on docker): "app", whose name
// sorts first, and "zone" of a higher priority.
const elastic = `
backend "docker" {
  max_per_host = 2
}
machine "server" {
  min = 1
  consul_server = true
}
machine "app" {
  min      = 3
  backends = ["docker"]
}
machine "zone" {
  min      = 2
  priority = 10
  backends = ["docker"]
}
policy {
  max_concurrent_spawns = 10
  max_unhealthy         = 1
}
`

// elasticObs is the leader "a" (which cannot run docker) with hosts and
// live machines (id to type on host, "app-1": "app@b").
func elasticObs(hosts []string, machines map[string]string) Observed {
	return with(cluster("server", "a"), func(o *Observed) {
		o.Self = "a"
		o.BackendErrors = map[string]string{"docker": "unavailable: no socket"}
		offs := []state.Offer{offering("a", "!docker")}
		for _, h := range hosts {
			offs = append(offs, offering(h, "docker"))
		}
		o.Offers = offers(offs...)
		// Made in the order of their IDs: the last is the newest.
		for i, id := range sortedKeys(machines) {
			typ, host, _ := strings.Cut(machines[id], "@")
			o.Records[id] = Record{ID: id, Type: typ, Backend: "docker", Host: host, State: StateJoined, Created: t0.Add(time.Duration(i) * time.Second)}
			o.Members[id] = Member{Name: id, Status: state.MemberAlive, Type: typ}
		}
	})
}

func kinds(d Decision, kind state.Kind) map[string]int {
	out := map[string]int{}
	for _, a := range d.Actions {
		if a.Kind == kind {
			out[a.Type]++
		}
	}
	return out
}

// TestElasticPriorityFirst: with room for four machines and five asked,
// the higher priority gets its min first, though its name sorts last; the
// lower one takes what is left and says it waits for room.
func TestElasticPriorityFirst(t *testing.T) {
	p := platform(t, elastic)
	d := Plan(p, elasticObs([]string{"b", "c"}, nil), t0)
	if got := kinds(d, state.KindSpawn); got["zone"] != 2 || got["app"] != 2 {
		t.Errorf("spawns %v, want zone 2 (its min) and app the 2 left", got)
	}
	if !slices.ContainsFunc(d.Waiting, func(w string) bool { return strings.Contains(w, `machine "app": 1 more to spawn once there is room`) }) {
		t.Errorf("waiting %q: want app's 1 more once there is room", d.Waiting)
	}
	if len(preempts(d)) != 0 {
		t.Errorf("preempts %+v with nothing live", preempts(d))
	}
	// A Consul server type is served first whatever the others' priority.
	zone := p.Machines["zone"]
	zone.Priority = rules.MaxPriority
	p.Machines["zone"] = zone
	if got := p.ByPriority(); !slices.Equal(got, []string{"server", "zone", "app"}) {
		t.Errorf("order %q, want server, zone, app", got)
	}
}

// TestElasticLowerGivesWay: host b lost with the machines on it leaves the
// higher priority below its min with nowhere to go: the lower machine on
// the host that is left gives way (at most max_unhealthy a pass), status
// says for what, and nothing more is taken while that removal is in
// flight; the room it frees goes to the higher priority. With b back, the
// lower type comes back as far as there is room.
func TestElasticLowerGivesWay(t *testing.T) {
	p := platform(t, elastic)
	obs := elasticObs([]string{"c"}, map[string]string{"zone-2": "zone@c", "app-2": "app@c"})
	d := Plan(p, obs, t0)
	pre := preempts(d)
	if len(pre) != 1 || pre[0].MachineID != "app-2" || pre[0].Type != "app" || pre[0].Host != "c" {
		t.Fatalf("preempts %+v, want app-2 on c alone", pre)
	}
	if !strings.Contains(pre[0].Reason, `given up for "zone" (priority 10 over 0)`) {
		t.Errorf("reason %q: want what it was given up for", pre[0].Reason)
	}
	if got := kinds(d, state.KindSpawn); len(got) != 0 {
		t.Errorf("spawns %v while the room is still held", got)
	}
	if !slices.ContainsFunc(d.Waiting, func(w string) bool {
		return strings.Contains(w, `machine "zone": 1 to spawn in the room app-2 gives up for it, once removed`)
	}) {
		t.Errorf("waiting %q: want zone's spawn in app-2's room", d.Waiting)
	}

	// The removal announced: nothing more is taken until it is done, and
	// the room it frees goes to zone, not back to app.
	r := obs.Records["app-2"]
	r.State, r.Reason = StateDestroying, pre[0].Reason
	obs.Records["app-2"] = r
	d = Plan(p, obs, t0)
	if len(preempts(d)) != 0 {
		t.Errorf("preempted %+v while a removal is in flight", preempts(d))
	}
	if got := kinds(d, state.KindSpawn); got["zone"] != 1 || got["app"] != 0 {
		t.Errorf("spawns %v, want zone's alone in the freed room", got)
	}

	// Done: zone is whole on c, app has nothing and says for what.
	delete(obs.Records, "app-2")
	delete(obs.Members, "app-2")
	obs.Records["zone-3"] = Record{ID: "zone-3", Type: "zone", Backend: "docker", Host: "c", State: StateJoined, Created: t0}
	obs.Members["zone-3"] = Member{Name: "zone-3", Status: state.MemberAlive, Type: "zone"}
	d = Plan(p, obs, t0)
	if len(preempts(d)) != 0 || len(kinds(d, state.KindSpawn)) != 0 {
		t.Errorf("actions %+v with c full of zone", d.Actions)
	}
	if gw := d.Types["app"].GaveWay; gw != "zone (priority 10)" {
		t.Errorf("app gave way to %q, want zone (priority 10)", gw)
	}

	// Host b back: app comes back there, as far as b has room.
	obs.Offers = offers(offering("a", "!docker"), offering("b", "docker"), offering("c", "docker"))
	d = Plan(p, obs, t0)
	if got := kinds(d, state.KindSpawn); got["app"] != 2 || got["zone"] != 0 {
		t.Errorf("spawns %v with b back, want app's 2", got)
	}
	if len(preempts(d)) != 0 {
		t.Errorf("preempts %+v: app is the lowest priority", preempts(d))
	}
}

// TestElasticNeverTakesServersOrHandMadeMachines: a lower type's Consul
// server, a machine spawned by hand and the leader itself never give way,
// and a type of the same priority takes nothing from another.
func TestElasticNeverTakesServersOrHandMadeMachines(t *testing.T) {
	p := platform(t, elastic)
	obs := elasticObs([]string{"c"}, map[string]string{"app-1": "app@c", "app-2": "app@c"})
	r := obs.Records["app-2"]
	r.Manual = true
	obs.Records["app-2"] = r
	d := Plan(p, obs, t0)
	pre := preempts(d)
	if len(pre) != 1 || pre[0].MachineID != "app-1" {
		t.Errorf("preempts %+v, want app-1 alone (app-2 was made by hand)", pre)
	}
	// Same priority: nothing is taken.
	zone := p.Machines["zone"]
	zone.Priority = 0
	p.Machines["zone"] = zone
	if pre := preempts(Plan(p, obs, t0)); len(pre) != 0 {
		t.Errorf("preempts %+v between types of one priority", pre)
	}
	// Halted: nothing is taken either.
	zone.Priority = 10
	p.Machines["zone"] = zone
	obs.Records["app-9"] = Record{ID: "app-9", Type: "app", Backend: "docker", Host: "x", State: StateFailed, FailedSince: t0.Add(-time.Hour)}
	obs.Records["app-8"] = Record{ID: "app-8", Type: "app", Backend: "docker", Host: "x", State: StateFailed, FailedSince: t0.Add(-time.Hour)}
	if d := Plan(p, watched(obs), t0); d.Halted == "" || len(preempts(d)) != 0 {
		t.Errorf("halted %q, preempts %+v: want halted and none", d.Halted, preempts(d))
	}
}

// TestElasticWaitingTypeKeepsItsRoom: a higher type in its cooldown keeps
// the room it will take: a lower type does not take it meanwhile (to be
// removed for it at the next pass).
func TestElasticWaitingTypeKeepsItsRoom(t *testing.T) {
	p := platform(t, strings.Replace(elastic, "max_unhealthy         = 1", "max_unhealthy = 1\n  cooldown = \"1m\"", 1))
	obs := elasticObs([]string{"b", "c"}, nil)
	obs.LastSpawn = map[string]time.Time{"zone": t0.Add(-time.Second)}
	d := Plan(p, obs, t0)
	if got := kinds(d, state.KindSpawn); got["zone"] != 0 || got["app"] != 2 {
		t.Errorf("spawns %v: want none of zone (cooldown) and app's 2 beside zone's reserved room", got)
	}
}

func preempts(d Decision) []state.Action {
	var out []state.Action
	for _, a := range d.Actions {
		if a.Kind == state.KindPreempt {
			out = append(out, a)
		}
	}
	return out
}

// TestElasticHostsNamedByType: a type that names its hosts' types is
// placed only on members of those types, as the inventory records them
// (a member's own word of its type is not believed), so that machines it
// makes, which offer the same backend, do not host more of it.
func TestElasticHostsNamedByType(t *testing.T) {
	p := platform(t, strings.Replace(elastic, "  priority = 10\n", "  priority = 10\n  hosts    = [\"app\"]\n", 1))
	obs := elasticObs([]string{"b", "c", "d"}, map[string]string{"app-1": "app@b"})
	for id, typ := range map[string]string{"b": "app", "c": "zone", "d": "app"} {
		obs.Records[id] = Record{ID: id, Type: typ, Backend: "docker", State: StateJoined}
		obs.Members[id] = Member{Name: id, Status: state.MemberAlive, Type: "app"} // c claims app
	}
	for _, a := range Plan(p, obs, t0).Actions {
		if a.Kind == state.KindSpawn && a.Type == "zone" && a.Host != "b" && a.Host != "d" {
			t.Errorf("zone placed on %q, want b or d (the members recorded as app)", a.Host)
		}
	}
}
