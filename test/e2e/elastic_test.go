package e2e

import (
	"encoding/json"
	"fmt"
	mrand "math/rand/v2"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/raptiformica/raptiformica/internal/state"
	"github.com/raptiformica/raptiformica/reconcile"
)

// elasticPlatform is one server and two types that only it makes, on the
// local backend, wanting more room than the backend's cap per host gives:
// "app", whose name sorts first, and "zone", of a higher priority.
func elasticPlatform(perHost int) string {
	return platformWith(1, 1, "3s", fmt.Sprintf(`
backend "local" {
  max_per_host = %d
}
machine "app" {
  min      = 2
  hosts    = ["server"]
  backends = ["local"]
}
machine "zone" {
  min      = 1
  priority = 10
  hosts    = ["server"]
  backends = ["local"]
}
`, perHost), false)
}

// TestElasticPriorities: on a host with room for fewer machines than
// asked, the higher priority gets its min first whatever the names; with
// the room shrunk and its machine lost, the lower priority gives way to
// it, and status says for what; room back, the lower one comes back.
func TestElasticPriorities(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	c.up(c.writePlatform("server.hcl", platformWith(1, 1, "3s", "", false)))
	apply := func(name, src string) {
		t.Helper()
		if out, errOut, code := c.rf("platform", "apply", c.writePlatform(name, src)); code != 0 {
			t.Fatalf("apply %s: exit %d: %s %s", name, code, out, errOut)
		}
	}
	byType := func(v view) map[string][]string {
		out := map[string][]string{}
		for _, id := range v.joined {
			typ := v.records[id].Type
			out[typ] = append(out[typ], id)
		}
		return out
	}

	// Room for two beside the server: zone's one first, then one app.
	apply("two.hcl", elasticPlatform(2))
	v := c.waitAgree(3, 2*time.Minute, "zone and one app in the room for two")
	if got := byType(v); len(got["zone"]) != 1 || len(got["app"]) != 1 {
		t.Fatalf("machines by type %v, want zone 1 and app 1", got)
	}
	c.waitStatus(time.Minute, "app gave way to higher priorities, which hold the room it could use: zone (priority 10)")

	// Room for one, and zone's machine lost: app gives its room to zone.
	apply("one.hcl", elasticPlatform(1))
	app := byType(v)["app"][0]
	zone := byType(v)["zone"][0]
	c.kill(zone)
	v = c.waitAgree(2, 3*time.Minute, "zone again, in app's room", zone, app)
	if got := byType(v); len(got["zone"]) != 1 || len(got["app"]) != 0 {
		t.Fatalf("machines by type %v, want zone 1 and no app", got)
	}
	// The leader publishes its status after its next pass.
	waitUntil(t, 30*time.Second, "status shows "+app+" given up for zone", func() bool {
		return c.recentOutcome(state.KindPreempt, app, `given up for "zone" (priority 10 over 0)`)
	})

	// Room for two again: app comes back.
	apply("two-again.hcl", elasticPlatform(2))
	v = c.waitAgree(3, 2*time.Minute, "app back in the room given back")
	if got := byType(v); len(got["zone"]) != 1 || len(got["app"]) != 1 {
		t.Errorf("machines by type %v, want zone 1 and app 1", got)
	}
	for _, r := range v.records {
		if r.State != reconcile.StateJoined {
			t.Errorf("record %s is %s", r.ID, r.State)
		}
	}
}

// waitStatus waits until `status` prints every one of wants.
func (c *testCluster) waitStatus(timeout time.Duration, wants ...string) {
	c.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		out, _, _ := c.rf("status")
		missing := ""
		for _, w := range wants {
			if !strings.Contains(out, w) {
				missing = w
			}
		}
		if missing == "" {
			return
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("status never said %q:\n%s", missing, out)
		}
		time.Sleep(300 * time.Millisecond)
	}
}

// recentOutcome reports whether the leader's status lists, among its
// recent outcomes, a successful action of kind on machine id whose reason
// says why.
func (c *testCluster) recentOutcome(kind state.Kind, id, why string) bool {
	st := c.status()
	if st == nil {
		return false
	}
	for _, o := range st.Recent {
		if o.Kind == kind && o.MachineID == id && o.Result == "success" && strings.Contains(o.Reason, why) {
			return true
		}
	}
	return false
}

// status is the leader's last status, as `status --json` prints it; nil
// when it cannot be read.
func (c *testCluster) status() *state.Status {
	out, _, _ := c.rf("status", "--json")
	var st struct {
		Reconcile *state.Status `json:"reconcile"`
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		return nil
	}
	return st.Reconcile
}

// TestElasticPerHost: a type with per_host = 1 on a backend each adopted
// host runs for itself (the local backend on an address of the host's
// own) gets one machine on each host, made by that host; a host that
// joins gets its own; a host that dies takes its machine with it, and no
// other host makes up for it. The machines, which run the same backend on
// the same addresses' host, make none of their own.
func TestElasticPerHost(t *testing.T) {
	t.Parallel()
	l := newSSHLab(t)
	prefix2, addHost := l.roomHosts(t)
	hosts := map[int]string{} // last octet to machine ID
	add := func(last int) { hosts[last] = addHost(last) }
	add(11)
	add(12)
	// A host that dies takes its agent with it: two members fail at once,
	// which max_unhealthy must allow for the reaps to go ahead.
	l.apply(t, "per-host.hcl", strings.Replace(l.platform(fmt.Sprintf(`
machine "worker" {
  min      = 0
  max      = 5
  backends = ["host"]
}
backend "room" {
  type     = "local"
  settings = { addresses = "%[1]s.11,%[1]s.12,%[1]s.13" }
}
machine "agent" {
  min      = 0
  max      = 6
  per_host = 1
  backends = ["room"]
}
`, prefix2)), "policy {\n", "policy {\n  max_unhealthy     = 2\n", 1))
	agentsOn := func() map[string]int {
		out := map[string]int{}
		for _, r := range l.recordsOf("agent") {
			if r.State == reconcile.StateJoined {
				out[r.Host]++
			}
		}
		return out
	}
	want := func(lasts ...int) func() bool {
		return func() bool {
			got := agentsOn()
			if len(got) != len(lasts) {
				return false
			}
			for _, last := range lasts {
				if got[hosts[last]] != 1 {
					return false
				}
			}
			return true
		}
	}
	waitUntil(t, 4*time.Minute, "one agent on each of the two hosts", want(11, 12))

	// A third host joins: it gets its own.
	add(13)
	waitUntil(t, 4*time.Minute, "one agent on each of the three hosts", want(11, 12, 13))

	// The second host dies, with its agent: nobody makes up for it.
	dockerRun(t, "kill", fmt.Sprintf("%s-%d", l.network, 12))
	waitUntil(t, 2*time.Minute, "the dead host's agent reaped", func() bool {
		for _, r := range l.recordsOf("agent") {
			if r.Host == hosts[12] {
				return false
			}
		}
		return true
	})
	time.Sleep(5 * time.Second) // a pass or two: a stray spawn would show by now
	if got := agentsOn(); !want(11, 13)() || len(l.recordsOf("agent")) != 2 {
		t.Errorf("agents by host %v (%d records), want one on each of the two hosts left", got, len(l.recordsOf("agent")))
	}
}

// roomHosts gives the lab a second network, on which each host it adds has
// a second address (prefix.last), for the machines the host makes with
// the local backend; addHost starts the sshd host .last on both networks,
// adopts it as a worker and returns its machine ID.
func (l *sshLab) roomHosts(t *testing.T) (prefix string, addHost func(last int) string) {
	t.Helper()
	net2, prefix := l.extraNetwork(t)
	return prefix, func(last int) string {
		t.Helper()
		ip := l.host(t, last)
		dockerRun(t, "network", "connect", "--ip", fmt.Sprintf("%s.%d", prefix, last), net2, fmt.Sprintf("%s-%d", l.network, last))
		out, errOut, code := l.adopt("root@" + ip)
		if code != 0 {
			t.Fatalf("adopt %s: exit %d\n%s\n%s", ip, code, out, errOut)
		}
		m := regexp.MustCompile(`adopted root@\S+ as (worker-[0-9a-f]+) \(worker\)`).FindStringSubmatch(out)
		if m == nil {
			t.Fatalf("adopt did not name the machine:\n%s", out)
		}
		return m[1]
	}
}

// extraNetwork makes a second Docker network for the lab's hosts, removed
// with the lab, and returns its name and its first three octets.
func (l *sshLab) extraNetwork(t *testing.T) (string, string) {
	t.Helper()
	name := l.network + "-2"
	for attempt := 1; ; attempt++ {
		n := 1 + mrand.IntN(250)
		prefix := fmt.Sprintf("10.217.%d", n)
		out, err := exec.Command("docker", "network", "create", "--subnet", prefix+".0/24", "--gateway", prefix+".1", "--label", "raptiformica.test=1", name).CombinedOutput()
		if err == nil {
			// Runs before the lab's cleanup, which dumps and removes
			// the hosts: they leave this network, and keep theirs.
			t.Cleanup(func() {
				ids, _ := exec.Command("docker", "ps", "-aq", "--filter", "network="+name).Output()
				for _, id := range strings.Fields(string(ids)) {
					_ = exec.Command("docker", "network", "disconnect", "-f", name, id).Run()
				}
				_ = exec.Command("docker", "network", "rm", name).Run()
			})
			return name, prefix
		}
		if attempt == 5 {
			t.Fatalf("docker network create %s: %v\n%s", prefix, err, out)
		}
	}
}

// TestElasticSparePromoted: a type with a spare keeps it made and joined
// but not live; its live machine killed, the spare takes its place by a
// promotion (the same machine, now live), and a new spare is made.
func TestElasticSparePromoted(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	c.up(c.writePlatform("server.hcl", platformWith(1, 1, "1m", "", false)))
	if out, errOut, code := c.rf("platform", "apply", c.writePlatform("spares.hcl", platformWith(1, 1, "1m", `
machine "worker" {
  min      = 1
  spares   = 1
  hosts    = ["server"]
  backends = ["local"]
}
`, false))); code != 0 {
		t.Fatalf("apply: exit %d: %s %s", code, out, errOut)
	}
	v := c.waitAgree(3, 2*time.Minute, "a worker and its spare")
	var live, spare string
	for _, id := range v.joined {
		switch r := v.records[id]; {
		case r.Type == "worker" && r.Spare:
			spare = id
		case r.Type == "worker":
			live = id
		}
	}
	if live == "" || spare == "" {
		t.Fatalf("records %v: want a live worker and a spare", v.records)
	}
	if st := c.status(); st == nil || st.Types["worker"].Live != 1 || st.Types["worker"].Spares != 1 {
		t.Errorf("status of worker: %+v, want 1 live and 1 spare", st)
	}

	// The live one killed: well within the minute's grace period, the
	// spare is the live worker, and a new spare is made.
	c.kill(live)
	waitUntil(t, time.Minute, spare+" promoted", func() bool {
		v, err := c.view()
		r, ok := v.records[spare]
		return err == nil && ok && !r.Spare
	})
	if !c.recentOutcome(state.KindPromote, spare, "spare promoted") {
		t.Errorf("status does not show %s promoted", spare)
	}
	waitUntil(t, 3*time.Minute, "a new spare, and the dead worker reaped", func() bool {
		v, err := c.view()
		if err != nil || v.has(live) {
			return false
		}
		spares := 0
		for _, id := range v.joined {
			if r := v.records[id]; r.Type == "worker" && r.Spare && id != spare {
				spares++
			}
		}
		return spares == 1
	})
}

// TestElasticPrioritiesHostLost: two adopted hosts with room for one
// machine each (the local backend on one address of each; only the hosts
// make machines: the machines share their host's addresses), a type of
// higher priority and one of lower asking for more than that: the host
// holding the higher one dies with it, and the lower one on the other
// host gives way; a host joins, and the lower one comes back there.
func TestElasticPrioritiesHostLost(t *testing.T) {
	t.Parallel()
	l := newSSHLab(t)
	prefix, addHost := l.roomHosts(t)
	hosts := map[string]int{addHost(11): 11, addHost(12): 12}
	l.apply(t, "priorities.hcl", strings.Replace(l.platform(fmt.Sprintf(`
machine "worker" {
  min      = 0
  max      = 5
  backends = ["host"]
}
backend "room" {
  type         = "local"
  settings     = { addresses = "%[1]s.11,%[1]s.12,%[1]s.13" }
  max_per_host = 1 # each host has one address of the list
}
machine "app" {
  min      = 2
  hosts    = ["worker"]
  backends = ["room"]
}
machine "zone" {
  min      = 1
  priority = 10
  hosts    = ["worker"]
  backends = ["room"]
}
`, prefix)), "policy {\n", "policy {\n  max_unhealthy     = 2\n", 1))
	on := func(typ string) map[string]int {
		out := map[string]int{}
		for _, r := range l.recordsOf(typ) {
			if r.State == reconcile.StateJoined {
				out[r.Host]++
			}
		}
		return out
	}
	waitUntil(t, 4*time.Minute, "zone on one host, one app on the other", func() bool {
		return len(on("zone")) == 1 && len(on("app")) == 1
	})
	var zoneHost string
	for h := range on("zone") {
		zoneHost = h
	}
	l.waitStatus(time.Minute, "app gave way to higher priorities, which hold the room it could use: zone (priority 10)")

	// The zone's host dies with it: the app on the other host gives way.
	dockerRun(t, "kill", fmt.Sprintf("%s-%d", l.network, hosts[zoneHost]))
	waitUntil(t, 3*time.Minute, "zone again, on the host left, in the app's room", func() bool {
		z, a := on("zone"), on("app")
		return len(z) == 1 && z[zoneHost] == 0 && len(a) == 0
	})
	if st := l.status(); st == nil || !slices.ContainsFunc(st.Recent, func(o state.Outcome) bool {
		return o.Kind == state.KindPreempt && strings.Contains(o.Reason, `given up for "zone"`)
	}) {
		t.Errorf("status shows no machine given up for zone")
	}

	// A host joins: the app comes back there.
	newHost := addHost(13)
	waitUntil(t, 4*time.Minute, "an app on the new host", func() bool { return on("app")[newHost] == 1 })
}
