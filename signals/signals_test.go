package signals

import (
	"bytes"
	"context"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/raptiformica/raptiformica/internal/clock"
	"github.com/raptiformica/raptiformica/internal/testconsul"
	"github.com/raptiformica/raptiformica/rules"
)

// startPrometheus runs the pinned Prometheus (on PATH in `make test`, from
// scripts/prometheus.sh) with nothing to scrape, on a loopback address of
// its own, and returns its address once it answers.
func startPrometheus(t *testing.T) string {
	t.Helper()
	bin, err := exec.LookPath("prometheus")
	if err != nil {
		t.Fatalf("no prometheus on PATH: scripts/prometheus.sh builds it (make test puts it there): %v", err)
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "p.yml"), []byte("global:\n  scrape_interval: 1m\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	addr := testconsul.FreeIP() + ":9090"
	cmd := exec.Command(bin, "--config.file="+filepath.Join(dir, "p.yml"), "--storage.tsdb.path="+filepath.Join(dir, "data"), "--web.listen-address="+addr)
	var log bytes.Buffer
	cmd.Stdout, cmd.Stderr = &log, &log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("prometheus:\n%s", log.String())
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get("http://" + addr + "/-/ready")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return "http://" + addr
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("prometheus at %s not ready: %v\n%s", addr, err, log.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestElasticSignalPrometheus: a query that answers one number, a scalar or
// a vector of one sample, is read as that number, with the bearer token
// from its file; no series, several series, a bad query, a token file
// missing and a Prometheus stopped are each a clear error, never a zero.
func TestElasticSignalPrometheus(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a real Prometheus (run without -short)")
	}
	t.Parallel()
	prom := startPrometheus(t)
	tok := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tok, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	r := &Reader{Clock: clock.Real{}}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	sc := func(q string) rules.Scale {
		return rules.Scale{Signal: rules.SignalPrometheus, Prometheus: prom, Query: q, TokenFile: tok, Target: 1, Interval: time.Second}
	}
	for q, want := range map[string]float64{"vector(7)": 7, "scalar(vector(3))": 3, "sum(absent(nope)) or vector(0)": 1} {
		if v, err := r.Once(ctx, sc(q)); err != nil || v != want {
			t.Errorf("%s: %v, %v; want %v", q, v, err, want)
		}
	}
	for q, want := range map[string]string{
		"absent(vector(1))": "returned 0 series, want 1",
		`label_replace(vector(1), "a", "x", "", "") or label_replace(vector(2), "a", "y", "", "")`: "returned 2 series",
		"sum(":           "prometheus: ",
		"vector(0) / 0":  "not a number",
		`{__name__=~""}`: "prometheus: ",
	} {
		if _, err := r.Once(ctx, sc(q)); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want an error with %q", q, err, want)
		}
	}
	missing := sc("vector(1)")
	missing.TokenFile = filepath.Join(t.TempDir(), "none")
	if _, err := r.Once(ctx, missing); err == nil || !strings.Contains(err.Error(), "prometheus token") {
		t.Errorf("a token file missing: %v", err)
	}
	stopped := sc("vector(1)")
	stopped.Prometheus = "http://" + testconsul.FreeIP() + ":9090"
	if _, err := r.Once(ctx, stopped); err == nil || !strings.Contains(err.Error(), "connection refused") {
		t.Errorf("no Prometheus: %v", err)
	}
}

// TestElasticSignalConsul: the passing instances of a service, and the sum
// of the numbers a check's outputs start with, as a real Consul has them.
func TestElasticSignalConsul(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a real Consul (run without -short)")
	}
	t.Parallel()
	srv, err := testconsul.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Stop)
	ag := srv.Client.Agent()
	for _, id := range []string{"jobs-1", "jobs-2", "jobs-3"} {
		if err := ag.ServiceRegister(&api.AgentServiceRegistration{ID: id, Name: "jobs", Check: &api.AgentServiceCheck{CheckID: "check-" + id, TTL: "1h"}}); err != nil {
			t.Fatal(err)
		}
	}
	for _, id := range []string{"jobs-1", "jobs-2"} {
		if err := ag.UpdateTTL("check-"+id, "ok", api.HealthPassing); err != nil {
			t.Fatal(err)
		}
	}
	// The queue's depth is a check of a service of its own; a node's own
	// check, which any client may write on its node, does not count.
	if err := ag.ServiceRegister(&api.AgentServiceRegistration{ID: "queue", Name: "queue", Check: &api.AgentServiceCheck{CheckID: "queue-depth", TTL: "1h"}}); err != nil {
		t.Fatal(err)
	}
	if err := ag.CheckRegister(&api.AgentCheckRegistration{ID: "node-depth", Name: "node", AgentServiceCheck: api.AgentServiceCheck{TTL: "1h"}}); err != nil {
		t.Fatal(err)
	}
	if err := ag.UpdateTTL("node-depth", "1000000", api.HealthPassing); err != nil {
		t.Fatal(err)
	}
	if err := ag.UpdateTTL("queue-depth", "17 jobs waiting", api.HealthPassing); err != nil {
		t.Fatal(err)
	}
	r := &Reader{Consul: srv.Client, Clock: clock.Real{}}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	// The agent hands its services and checks to the catalog a moment
	// after they change: the reads are of the catalog.
	eventually := func(what string, sc rules.Scale, ok func(float64, error) bool) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			v, err := r.Once(ctx, sc)
			if ok(v, err) {
				return
			}
			if time.Now().After(deadline) {
				t.Errorf("%s: %v, %v", what, v, err)
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	eventually("passing instances of jobs, want 2", rules.Scale{Signal: rules.SignalConsulService, Service: "jobs"}, func(v float64, err error) bool { return err == nil && v == 2 })
	eventually("queue-depth's output, want 17", rules.Scale{Signal: rules.SignalConsulCheck, Check: "queue-depth"}, func(v float64, err error) bool { return err == nil && v == 17 })
	if _, err := r.Once(ctx, rules.Scale{Signal: rules.SignalConsulCheck, Check: "nope"}); err == nil || !strings.Contains(err.Error(), "no check nope of a service") {
		t.Errorf("a check that is not there: %v", err)
	}
	// A change of output alone reaches the catalog at the agent's
	// check_update_interval (5 minutes by default); one of status at once.
	if err := ag.UpdateTTL("queue-depth", "lots", api.HealthWarning); err != nil {
		t.Fatal(err)
	}
	eventually("an output without a number, want an error", rules.Scale{Signal: rules.SignalConsulCheck, Check: "queue-depth"}, func(_ float64, err error) bool {
		return err != nil && strings.Contains(err.Error(), `"lots" does not start with a number`)
	})
	eventually("a node's own check, want it ignored", rules.Scale{Signal: rules.SignalConsulCheck, Check: "node-depth"}, func(_ float64, err error) bool {
		return err != nil && strings.Contains(err.Error(), "no check node-depth of a service")
	})
	if err := ag.UpdateTTL("queue-depth", "-5", api.HealthCritical); err != nil {
		t.Fatal(err)
	}
	eventually("a negative value, want an error", rules.Scale{Signal: rules.SignalConsulCheck, Check: "queue-depth"}, func(_ float64, err error) bool {
		return err != nil && strings.Contains(err.Error(), "a negative value")
	})

	eventually("passing instances of jobs again, want 2", rules.Scale{Signal: rules.SignalConsulService, Service: "jobs"}, func(v float64, err error) bool { return err == nil && v == 2 })

	// Read keeps the last reading and reads again in the background.
	p := &rules.Platform{Machines: map[string]rules.MachineType{"w": {Name: "w", Scale: &rules.Scale{Signal: rules.SignalConsulService, Service: "jobs", Interval: time.Hour}}}}
	if got := r.Read(ctx, p); len(got) != 0 {
		t.Errorf("first Read: %v, want nothing yet (it starts the read)", got)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if got := r.Read(ctx, p)["w"]; got.OK() && got.Value == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("Read never kept a reading: %+v", r.Read(ctx, p))
		}
		time.Sleep(50 * time.Millisecond)
	}
}
