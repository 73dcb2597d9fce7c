package e2e

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

// Two exec backends ahead of local: "vm" is unavailable (its available
// command fails) and "flaky" is available but every start_instance fails.
const placementBackends = `
backend "vm" {
  type = "exec"
  commands = {
    available                 = ["/bin/sh", "-c", "echo 'vagrant: not installed' >&2; exit 1"]
    start_instance            = ["/bin/true"]
    get_hostname              = ["/bin/echo", "10.0.0.1"]
    clean_up_instance_command = ["/bin/true"]
  }
}
backend "flaky" {
  type = "exec"
  commands = {
    start_instance            = ["/bin/sh", "-c", "echo 'quota exceeded' >&2; exit 1"]
    get_hostname              = ["/bin/echo", "10.0.0.2"]
    clean_up_instance_command = ["/bin/true"]
  }
}
`

func workerOn(backends string) string {
	return fmt.Sprintf("machine \"worker\" {\n  min      = 2\n  backends = [%s]\n}\n", backends)
}

func TestPlacementSkipsUnusableBackends(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	c.up(c.writePlatform("server.hcl", platformWith(1, 1, "2s", "", false)))
	stuck := c.writePlatform("stuck.hcl", platformWith(1, 1, "2s", placementBackends+workerOn(`"vm", "flaky"`), false))
	if out, errOut, code := c.rf("platform", "apply", stuck); code != 0 {
		t.Fatalf("apply: %s %s", out, errOut)
	}

	// No usable backend: status says why for each.
	c.waitWaiting(time.Minute,
		`backend "vm" skipped: unavailable: available: exit status 1: vagrant: not installed`,
		`backend "flaky" skipped: backing off`, `(last: machine worker-`, `start_instance: exit status 1: quota exceeded)`,
		`machine "worker": 2 to spawn, but no backend is usable`)
	// And the leader's metrics show it.
	v := c.waitAgree(1, time.Minute, "server only")
	metrics := leaderMetrics(t, c, v.leader)
	for _, want := range []string{`raptiformica_backend_up{backend="vm"} 0`, `raptiformica_backend_up{backend="local"} 1`, `raptiformica_backend_errors_total{backend="flaky"}`} {
		if !strings.Contains(metrics, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	// Nothing half-made was left on the failing backend.
	if _, total, _ := c.listInstances(); total != 1 {
		t.Errorf("%d local machines, want the server alone", total)
	}

	// With local last in the list, the workers land there.
	fallback := c.writePlatform("fallback.hcl", platformWith(1, 1, "2s", placementBackends+workerOn(`"vm", "flaky", "local"`), false))
	if out, errOut, code := c.rf("platform", "apply", fallback); code != 0 {
		t.Fatalf("apply: %s %s", out, errOut)
	}
	v = c.waitAgree(3, 2*time.Minute, "after adding local to the workers' backends")
	for id, r := range v.records {
		if r.Backend != "local" {
			t.Errorf("machine %s is on backend %q", id, r.Backend)
		}
	}
}

func leaderMetrics(t *testing.T, c *testCluster, leader string) string {
	t.Helper()
	for _, m := range c.machines() {
		if m.Config.MachineID != leader {
			continue
		}
		cl := http.Client{Timeout: 2 * time.Second}
		resp, err := cl.Get(fmt.Sprintf("http://%s:%d/metrics", m.Config.BindAddr, m.Config.HTTPPort))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b)
	}
	t.Fatalf("no local machine %s", leader)
	return ""
}
