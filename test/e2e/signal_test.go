package e2e

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/raptiformica/raptiformica/internal/kvschema"
	"github.com/raptiformica/raptiformica/internal/state"
	"github.com/raptiformica/raptiformica/internal/testconsul"
	"github.com/raptiformica/raptiformica/reconcile"
)

// daemon runs a program for the test's life, its output kept for a
// failure's log, and returns the process to stop it early.
func daemon(t testing.TB, name string, args ...string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(name, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("%s:\n%s", filepath.Base(name), out.String())
		}
	})
	return cmd
}

// queue is a Redis, Debian's prometheus-redis-exporter reading its list
// "jobs", and the pinned Prometheus scraping the exporter every second,
// each on a loopback address of its own.
type queue struct {
	prom   *exec.Cmd
	promIP string
	// redis runs a redis-cli command against the queue's Redis.
	redis func(args ...string)
}

func startQueue(t testing.TB) queue {
	t.Helper()
	redisServer := needTool(t, "redis-server", "Debian's redis-server package; scripts/testdeps.sh installs it")
	redisCLI := needTool(t, "redis-cli", "Debian's redis-tools package; scripts/testdeps.sh installs it")
	exporter := needTool(t, "prometheus-redis-exporter", "Debian's prometheus-redis-exporter package; scripts/testdeps.sh installs it")
	prometheus := needTool(t, "prometheus", fromPrometheus)
	redisIP, exporterIP, promIP := testconsul.FreeIP(), testconsul.FreeIP(), testconsul.FreeIP()
	daemon(t, redisServer, "--bind", redisIP, "--port", "6379", "--save", "", "--appendonly", "no")
	daemon(t, exporter, "-redis.addr=redis://"+redisIP+":6379", "-web.listen-address="+exporterIP+":9121", "-check-single-keys=db0=jobs")
	dir := t.TempDir()
	cfg := fmt.Sprintf("global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: redis\n    static_configs:\n      - targets: [%q]\n", exporterIP+":9121")
	if err := os.WriteFile(filepath.Join(dir, "p.yml"), []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	prom := daemon(t, prometheus, "--config.file="+filepath.Join(dir, "p.yml"), "--storage.tsdb.path="+filepath.Join(dir, "data"), "--web.listen-address="+promIP+":9090")
	if !poll(time.Minute, func() bool {
		resp, err := http.Get("http://" + promIP + ":9090/-/ready")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}) {
		t.Fatal("Prometheus not ready within a minute")
	}
	return queue{prom: prom, promIP: promIP, redis: func(args ...string) {
		t.Helper()
		if out, err := exec.Command(redisCLI, append([]string{"-h", redisIP, "-p", "6379"}, args...)...).CombinedOutput(); err != nil {
			t.Fatalf("redis-cli %v: %v\n%s", args, err, out)
		}
	}}
}

// TestElasticSignalRedis: workers scale on the length of a Redis list, as
// Prometheus reads it through Debian's prometheus-redis-exporter. Jobs
// pushed scale them up to what the list asks; the list drained scales
// them in one at a time, each after the value stayed low; Prometheus
// stopped, the count holds, and status says why.
func TestElasticSignalRedis(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	q := startQueue(t)
	prom, promIP, redis := q.prom, q.promIP, q.redis

	c.up(c.writePlatform("server.hcl", platformWith(1, 1, "5s", "", false)))
	apply := func(name, downAfter string) {
		t.Helper()
		if out, errOut, code := c.rf("platform", "apply", c.writePlatform(name, platformWith(1, 1, "5s", fmt.Sprintf(`
machine "worker" {
  min      = 1
  max      = 4
  hosts    = ["server"]
  backends = ["local"]
  scale {
    signal     = "prometheus"
    prometheus = "http://%s:9090"
    query      = "sum(redis_key_size{key=\"jobs\"}) or vector(0)"
    target     = 10
    interval   = "1s"
    scale_up_cooldown   = "2s"
    scale_down_cooldown = "3s"
    scale_down_after    = %q
  }
}
`, promIP, downAfter), false))); code != 0 {
			t.Fatalf("apply: exit %d: %s %s", code, out, errOut)
		}
	}
	apply("workers.hcl", "4s")
	workers := func() int { return c.liveOf("worker") }
	waitUntil(t, 2*time.Minute, "the worker of min 1", func() bool { return workers() == 1 })

	// 35 jobs at 10 a worker: 4.
	items := make([]string, 35)
	for i := range items {
		items[i] = fmt.Sprintf("job-%d", i)
	}
	redis(append([]string{"RPUSH", "jobs"}, items...)...)
	waitUntil(t, 2*time.Minute, "4 workers for 35 jobs", func() bool { return workers() == 4 })
	// The decision "up to 4" lasts one pass; what status shows after it:
	c.waitStatus(30*time.Second, "worker scales on prometheus: ", "(10 a machine): 35 at ", "at 4: the value 35 asks for it")

	// Drained: one at a time, each after the value stayed low, down to
	// min; never below.
	redis("DEL", "jobs")
	var falls []time.Time
	last := 4
	waitUntil(t, 3*time.Minute, "back to 1 worker, one at a time", func() bool {
		n := workers()
		if n >= 0 && n < last {
			if last-n > 1 {
				t.Errorf("workers fell from %d to %d at once", last, n)
			}
			falls = append(falls, time.Now())
			last = n
		}
		return n == 1
	})
	for i := 1; i < len(falls); i++ {
		// The down cooldown is 3 s: what the test sees may be later,
		// never sooner (a second's slack for when the test looked).
		if gap := falls[i].Sub(falls[i-1]); gap < 2*time.Second {
			t.Errorf("scale-in %d came %s after the one before, within the 3 s down cooldown", i+1, gap)
		}
	}
	// The leader publishes its status after each pass: the last removal
	// shows at the pass after it.
	waitUntil(t, 30*time.Second, "status showing the three scale-downs", func() bool {
		for _, why := range []string{"down to 3", "down to 2", "down to 1"} {
			if !c.recentReason(state.KindScaleDown, "scaled in on its signal: "+why) {
				return false
			}
		}
		return true
	})

	// Jobs again; the leader's metrics carry the signal and the count.
	redis(append([]string{"RPUSH", "jobs"}, items[:25]...)...)
	waitUntil(t, 2*time.Minute, "3 workers for 25 jobs", func() bool { return workers() == 3 })
	waitUntil(t, 30*time.Second, "the leader's metrics show the signal", func() bool {
		v, err := c.view()
		if err != nil {
			return false
		}
		m := leaderMetrics(t, c, v.leader)
		return strings.Contains(m, `raptiformica_scale_want{machine_type="worker"} 3`) &&
			strings.Contains(m, `raptiformica_scale_signal_value{machine_type="worker"} 25`) &&
			strings.Contains(m, `raptiformica_scale_signal_up{machine_type="worker"} 1`)
	})

	// The value hovers around what two workers are for (19 to 21 jobs)
	// for about 20 s, never low for the minute scale_down_after asks
	// here: at most one change. (With 4 s, a loaded machine's scrape that
	// missed one high phase made a low one last long enough to count.)
	apply("hover.hcl", "1m")
	redis("LTRIM", "jobs", "0", "20")
	changes, last := 0, workers()
	for i := range 14 {
		if i%2 == 0 {
			redis("LTRIM", "jobs", "0", "18")
		} else {
			redis("RPUSH", "jobs", "hover-1", "hover-2")
		}
		deadline := time.Now().Add(1500 * time.Millisecond)
		for time.Now().Before(deadline) {
			if n := workers(); n >= 0 && n != last {
				changes++
				last = n
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	if changes > 1 {
		t.Errorf("%d changes of the worker count while the value hovered at the target, want at most 1", changes)
	}

	apply("workers-again.hcl", "4s")

	// Prometheus stopped with the list drained: the count holds, and
	// status says why.
	redis("DEL", "jobs")
	redis(append([]string{"RPUSH", "jobs"}, items[:25]...)...)
	waitUntil(t, 2*time.Minute, "3 workers for 25 jobs", func() bool { return workers() == 3 })
	_ = prom.Process.Kill()
	redis("DEL", "jobs")
	c.waitStatus(30*time.Second, "holds at 3: the signal failed: prometheus: ")
	time.Sleep(10 * time.Second) // past scale_down_after and the cooldown
	if n := workers(); n != 3 {
		t.Errorf("%d workers with Prometheus stopped, want 3 held", n)
	}
	v, _ := c.view()
	for id, r := range v.records {
		if r.State == reconcile.StateDestroying {
			t.Errorf("machine %s is being removed with the signal gone", id)
		}
	}
}

// recentReason reports whether the leader's status lists, among its recent
// outcomes, a successful action of kind whose reason contains why.
func (c *testCluster) recentReason(kind state.Kind, why string) bool {
	st := c.status()
	if st == nil {
		return false
	}
	for _, o := range st.Recent {
		if o.Kind == kind && o.Result == "success" && strings.Contains(o.Reason, why) {
			return true
		}
	}
	return false
}

// TestElasticSignalLeaderKilledMidCooldown: the leader scales workers up
// on its signal and dies within the up cooldown; the next leader, reading
// the cooldown its predecessor kept in KV, does not raise the count again
// before it ends, however high the value, and does after.
func TestElasticSignalLeaderKilledMidCooldown(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	q := startQueue(t)
	c.up(c.writePlatform("servers.hcl", platformWith(3, 3, "2s", "", false)))
	if out, errOut, code := c.rf("platform", "apply", c.writePlatform("workers.hcl", platformWith(3, 3, "2s", fmt.Sprintf(`
machine "worker" {
  min      = 1
  max      = 4
  hosts    = ["server"]
  backends = ["local"]
  scale {
    signal     = "prometheus"
    prometheus = "http://%s:9090"
    query      = "sum(redis_key_size{key=\"jobs\"}) or vector(0)"
    target     = 10
    interval   = "1s"
    scale_up_cooldown = "30s"
  }
}
`, q.promIP), false))); code != 0 {
		t.Fatalf("apply: exit %d: %s %s", code, out, errOut)
	}
	// Records of workers, pending ones included; -1 while the KV does
	// not answer (the leader's death is a Raft election too).
	workers := func() int {
		v, err := c.view()
		if err != nil {
			return -1
		}
		n := 0
		for _, r := range v.records {
			if r.Type == "worker" && r.State != reconcile.StateDestroying {
				n++
			}
		}
		return n
	}
	waitUntil(t, 2*time.Minute, "the worker of min 1", func() bool { return workers() == 1 })
	jobs := make([]string, 35)
	for i := range jobs {
		jobs[i] = fmt.Sprintf("job-%d", i)
	}
	q.redis(append([]string{"RPUSH", "jobs"}, jobs[:15]...)...)
	waitUntil(t, 2*time.Minute, "2 workers for 15 jobs", func() bool { return workers() == 2 })
	kept, ok, _, err := state.ScaleStates(kvschema.New(c.client())).Get(context.Background(), "worker", nil)
	if err != nil || !ok || kept.LastUp.IsZero() || kept.Want != 2 {
		t.Fatalf("the scale state kept in KV: %+v %v %v", kept, ok, err)
	}
	until := kept.LastUp.Add(30 * time.Second)

	// The leader dies; the value asks for 4 at once.
	c.kill(c.waitAgree(5, time.Minute, "before the leader dies").leader)
	q.redis(append([]string{"RPUSH", "jobs"}, jobs[15:]...)...)
	for time.Now().Before(until.Add(-time.Second)) {
		if n := workers(); n > 2 {
			t.Fatalf("%d workers %s before the up cooldown the dead leader kept ends", n, time.Until(until).Round(time.Millisecond))
		}
		time.Sleep(200 * time.Millisecond)
	}
	waitUntil(t, 2*time.Minute, "4 workers after the cooldown", func() bool { return workers() == 4 })
}
