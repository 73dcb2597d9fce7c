package e2e

import (
	"encoding/json"
	"fmt"
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
	out, _, _ := c.rf("status", "--json")
	var st struct {
		Reconcile *state.Status `json:"reconcile"`
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil || st.Reconcile == nil {
		return false
	}
	for _, o := range st.Reconcile.Recent {
		if o.Kind == kind && o.MachineID == id && o.Result == "success" && strings.Contains(o.Reason, why) {
			return true
		}
	}
	return false
}
