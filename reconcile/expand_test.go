package reconcile

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/raptiformica/raptiformica/internal/kvschema"
	"github.com/raptiformica/raptiformica/internal/state"
)

const perHost = `
backend "docker" {}
machine "server" {
  min = 1
  consul_server = true
}
machine "agent" {
  min      = 0
  max      = 10
  per_host = 1
  backends = ["docker"]
}
policy {
  max_concurrent_spawns = 10
}
`

func spawnHosts(d Decision, typ string) map[string]int {
	out := map[string]int{}
	for _, a := range d.Actions {
		if a.Kind == state.KindSpawn && a.Type == typ {
			out[a.Host]++
		}
	}
	return out
}

// TestElasticPerHost: a per_host type gets its machines on every host
// that offers its backend, each placed on that host, within max; a host
// that left is not made up for elsewhere; its own machines, which offer
// the backend too, host none of it; a host with more than per_host gives
// back its newest.
func TestElasticPerHost(t *testing.T) {
	p := platform(t, perHost)
	obs := elasticObs([]string{"b", "c", "d"}, nil)
	if got := spawnHosts(Plan(p, obs, t0), "agent"); len(got) != 3 || got["b"] != 1 || got["c"] != 1 || got["d"] != 1 {
		t.Errorf("spawns by host %v, want one on each of b, c, d", got)
	}
	mt := p.Machines["agent"]
	mt.Max = 2
	p.Machines["agent"] = mt
	if got := spawnHosts(Plan(p, obs, t0), "agent"); len(got) != 2 {
		t.Errorf("spawns by host %v, want 2 (max)", got)
	}
	mt.Max = 10
	p.Machines["agent"] = mt

	// b and c have theirs; d left (it no longer offers anything), and
	// its agent, failed, is not placed elsewhere. The agents offer
	// docker themselves: they host none.
	obs = elasticObs([]string{"b", "c"}, map[string]string{"agent-b": "agent@b", "agent-c": "agent@c"})
	obs.Offers["agent-b"] = offering("agent-b", "docker")
	obs.Offers["agent-c"] = offering("agent-c", "docker")
	if d := Plan(p, obs, t0); len(spawnHosts(d, "agent")) != 0 {
		t.Errorf("spawns %v with every host holding its own", spawnHosts(d, "agent"))
	}

	// A host holding two gives back the newest.
	obs.Records["agent-b2"] = Record{ID: "agent-b2", Type: "agent", Backend: "docker", Host: "b", State: StateJoined, Created: t0.Add(time.Hour)}
	obs.Members["agent-b2"] = Member{Name: "agent-b2", Status: state.MemberAlive, Type: "agent"}
	var downs []string
	for _, a := range Plan(p, obs, t0).Actions {
		if a.Kind == state.KindScaleDown {
			downs = append(downs, a.MachineID+": "+a.Reason)
		}
	}
	if len(downs) != 1 || !strings.HasPrefix(downs[0], "agent-b2: more than per_host 1 on b") {
		t.Errorf("scale-downs %q, want agent-b2 alone", downs)
	}
}

// TestElasticFill: a type that fills takes the room left after every
// type's min, up to its max, saying nothing of the room it lacks; its
// machines beyond its min give way to another type's min, whatever the
// priorities.
func TestElasticFill(t *testing.T) {
	p := platform(t, strings.Replace(elastic, "machine \"app\" {\n  min      = 3\n", "machine \"app\" {\n  min      = 1\n  max      = 9\n  fill     = true\n  priority = 20\n", 1))
	d := Plan(p, elasticObs([]string{"b", "c"}, nil), t0)
	if got := kinds(d, state.KindSpawn); got["zone"] != 2 || got["app"] != 2 {
		t.Errorf("spawns %v, want zone 2 (its min) and app 2 (1 for its min, 1 filling the room left)", got)
	}
	for _, w := range d.Waiting {
		if strings.Contains(w, `"app"`) {
			t.Errorf("waiting %q: a type that fills says nothing of the room it lacks", w)
		}
	}

	// app filled b and c; zone lost its machines: app's newest beyond
	// its min gives way, though app is of the higher priority.
	obs := elasticObs([]string{"b", "c"}, map[string]string{"app-1": "app@b", "app-2": "app@b", "app-3": "app@c", "app-4": "app@c"})
	pre := preempts(Plan(p, obs, t0))
	if len(pre) != 1 || pre[0].MachineID != "app-4" || !strings.Contains(pre[0].Reason, "filled beyond its min") {
		t.Errorf("preempts %+v, want app-4 (the newest), filled beyond its min", pre)
	}
}

// TestElasticMachineGoesWithItsHost: a machine whose host has left the
// cluster for good (no record, not a member) is removed without waiting
// for that host to destroy it: its record and keys go, and no work order
// is left for a host that will never read it. One whose host is only down
// (still recorded) waits for it.
func TestElasticMachineGoesWithItsHost(t *testing.T) {
	inv := needConsul(t)
	ctx := context.Background()
	p := platform(t, oneSecondToProvision)
	const leader = "leader-1"
	gone, err := inv.Put(ctx, Record{ID: "agent-x", Type: "server", Backend: "room", Host: "host-x", State: StateFailed})
	if err != nil {
		t.Fatal(err)
	}
	down, err := inv.Put(ctx, Record{ID: "agent-y", Type: "server", Backend: "room", Host: "host-y", State: StateFailed})
	if err != nil {
		t.Fatal(err)
	}
	hostY, err := inv.Put(ctx, Record{ID: "host-y", Type: "server", Backend: "local", State: StateFailed})
	if err != nil {
		t.Fatal(err)
	}
	ex := newExecutor(inv)
	ex.Self = leader
	obs := Observed{Records: map[string]Record{"agent-x": gone, "agent-y": down, "host-y": hostY}, Self: leader,
		Members: map[string]Member{"host-y": {Name: "host-y", Status: state.MemberFailed}}}
	acts := []state.Action{
		{Kind: state.KindReap, MachineID: "agent-x", Type: "server", Backend: "room", Host: "host-x", Reason: "failed"},
		{Kind: state.KindReap, MachineID: "agent-y", Type: "server", Backend: "room", Host: "host-y", Reason: "failed"},
	}
	if err := ex.Execute(ctx, p, nil, obs, acts); err != nil {
		t.Fatal(err)
	}
	waitFor(t, ex, 30*time.Second)
	recs, _, err := inv.List(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := recs["agent-x"]; ok {
		t.Error("agent-x, whose host is gone, is still recorded")
	}
	if r, ok := recs["agent-y"]; !ok || r.State != StateDestroying {
		t.Errorf("agent-y, whose host is only down: %+v, want its removal announced and waiting", r)
	}
	if keys, _, _ := consul.Client.KV().Keys(kvschema.Work+"host-x/", "", nil); len(keys) != 0 {
		t.Errorf("work orders left for the gone host: %v", keys)
	}
}
