package e2e

import (
	"fmt"
	"testing"
	"time"
)

// sparePlatform is one server that alone makes the workers: one live
// worker, with spares standby ones.
func sparePlatform(spares int) string {
	return platformWith(1, 1, "1m", fmt.Sprintf(`
machine "worker" {
  min      = 1
  spares   = %d
  hosts    = ["server"]
  backends = ["local"]
}
`, spares), false)
}

// liveWorker is the joined, alive worker that is not a spare, other than
// not; "" when there is none.
func liveWorker(c *testCluster, not string) string {
	v, err := c.view()
	if err != nil {
		return ""
	}
	for _, id := range v.joined {
		if r := v.records[id]; r.Type == "worker" && !r.Spare && id != not && contains(v.alive, id) {
			return id
		}
	}
	return ""
}

// spareUp reports whether a worker spare is joined and alive.
func spareUp(c *testCluster) bool {
	v, err := c.view()
	if err != nil {
		return false
	}
	for _, id := range v.joined {
		if r := v.records[id]; r.Type == "worker" && r.Spare && contains(v.alive, id) {
			return true
		}
	}
	return false
}

// BenchmarkSpare: SIGKILL of a type's one live machine until another is
// live in its place, on two clusters side by side: one whose type keeps a
// spare (the spare is promoted) and one without (a replacement is
// spawned). Beside them, the floor a replacement cannot beat, measured in
// the same run: Consul's failure detection plus a bare node start.
func BenchmarkSpare(b *testing.B) {
	with, without := newCluster(b), newCluster(b)
	with.up(with.writePlatform("spare.hcl", sparePlatform(1)))
	without.up(without.writePlatform("bare.hcl", sparePlatform(0)))
	var spared, spawned, floors, detects, starts []time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		poll(3*time.Minute, func() bool { return liveWorker(with, "") != "" && spareUp(with) })
		poll(3*time.Minute, func() bool { return liveWorker(without, "") != "" })
		heal := func(c *testCluster) (time.Duration, time.Duration) {
			victim := liveWorker(c, "")
			cl := c.client()
			t0 := time.Now()
			c.kill(victim)
			var detect time.Duration
			for time.Since(t0) < 3*time.Minute {
				if detect == 0 && !memberAlive(cl, victim) {
					detect = time.Since(t0)
				}
				if liveWorker(c, victim) != "" {
					healed := time.Since(t0)
					poll(time.Minute, func() bool { return detect != 0 || !memberAlive(cl, victim) })
					if detect == 0 {
						detect = time.Since(t0)
					}
					return healed, detect
				}
				time.Sleep(20 * time.Millisecond)
			}
			b.Fatalf("no live worker within 3m of killing %s", victim)
			return 0, 0
		}
		s, _ := heal(with)
		n, d := heal(without)

		start := without.bareStart(b, "worker") // on the cluster without spares
		spared, spawned, detects, starts = append(spared, s), append(spawned, n), append(detects, d), append(starts, start)
		floors = append(floors, d+start)
		b.Logf("iteration %d: with a spare %s, without %s; detect %s, bare start %s, floor %s", i, s.Round(time.Millisecond), n.Round(time.Millisecond), d.Round(time.Millisecond), start.Round(time.Millisecond), (d + start).Round(time.Millisecond))
	}
	b.ReportMetric(quantile(spared, 0.5), "spare_p50_s")
	b.ReportMetric(quantile(spared, 0.9), "spare_p90_s")
	b.ReportMetric(quantile(spawned, 0.5), "nospare_p50_s")
	b.ReportMetric(quantile(spawned, 0.9), "nospare_p90_s")
	b.ReportMetric(quantile(floors, 0.5), "floor_p50_s")
	b.ReportMetric(quantile(floors, 0.9), "floor_p90_s")
	if f := quantile(floors, 0.9); f > 0 {
		b.ReportMetric(quantile(spared, 0.9)/f, "spare/floor_p90")
	}
	b.ReportMetric(quantile(detects, 0.5), "detect_p50_s")
	b.ReportMetric(quantile(starts, 0.5), "node_start_p50_s")
}

// scaledPlatform is one server that alone makes workers between 1 and 4,
// 10 jobs of the queue a worker, read every interval.
func scaledPlatform(promIP string, interval time.Duration) string {
	return platformWith(1, 1, "5s", fmt.Sprintf(`
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
    interval   = %q
    scale_up_cooldown   = "1s"
    scale_down_cooldown = "1s"
    scale_down_after    = "1s"
  }
}
`, promIP, interval), false)
}

// BenchmarkSignal: from jobs pushed onto the queue past one worker's
// target to a second worker live, beside what it cannot beat, measured in
// the same run: the signal's evaluation interval plus Prometheus's scrape
// interval (the value must be scraped, then read), plus a bare node start.
func BenchmarkSignal(b *testing.B) {
	const interval, scrape = time.Second, time.Second
	q := startQueue(b)
	c := newCluster(b)
	c.up(c.writePlatform("server.hcl", platformWith(1, 1, "5s", "", false)))
	if out, errOut, code := c.rf("platform", "apply", c.writePlatform("scaled.hcl", scaledPlatform(q.promIP, interval))); code != 0 {
		b.Fatalf("apply: %s %s", out, errOut)
	}
	workers := func() int { return c.liveOf("worker") }
	jobs := make([]string, 15)
	for i := range jobs {
		jobs[i] = fmt.Sprintf("job-%d", i)
	}
	var reacts, starts, floors []time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		q.redis("DEL", "jobs")
		if !poll(3*time.Minute, func() bool { return workers() == 1 }) {
			b.Fatalf("not back to one worker: %d", workers())
		}
		time.Sleep(2 * time.Second) // past the cooldowns of the fall
		t0 := time.Now()
		q.redis(append([]string{"RPUSH", "jobs"}, jobs...)...)
		if !poll(3*time.Minute, func() bool { return workers() == 2 }) {
			b.Fatalf("no second worker within 3m of 15 jobs")
		}
		react := time.Since(t0)

		start := c.bareStart(b, "worker")
		floor := interval + scrape + start
		reacts, starts, floors = append(reacts, react), append(starts, start), append(floors, floor)
		b.Logf("iteration %d: jobs to a second live worker %s; bare start %s, floor %s", i, react.Round(time.Millisecond), start.Round(time.Millisecond), floor.Round(time.Millisecond))
	}
	b.ReportMetric(quantile(reacts, 0.5), "signal_to_live_p50_s")
	b.ReportMetric(quantile(reacts, 0.9), "signal_to_live_p90_s")
	b.ReportMetric(quantile(floors, 0.5), "floor_p50_s")
	b.ReportMetric(quantile(floors, 0.9), "floor_p90_s")
	b.ReportMetric(interval.Seconds(), "interval_s")
	b.ReportMetric(scrape.Seconds(), "scrape_s")
	b.ReportMetric(quantile(starts, 0.5), "node_start_p50_s")
}

// liveOf counts the joined, alive machines of type typ; -1 while the
// cluster's KV or Consul does not answer.
func (c *testCluster) liveOf(typ string) int {
	v, err := c.view()
	if err != nil {
		return -1
	}
	n := 0
	for _, id := range v.joined {
		if v.records[id].Type == typ && contains(v.alive, id) {
			n++
		}
	}
	return n
}

// bareStart is a bare node start, the floor's other half: a machine of
// type typ spawned by hand until it is an alive member, then destroyed.
func (c *testCluster) bareStart(b *testing.B, typ string) time.Duration {
	b.Helper()
	before, _, _ := c.listInstances()
	t1 := time.Now()
	if out, errOut, code := c.rf("spawn", "--type", typ); code != 0 {
		b.Fatalf("spawn: %s %s", out, errOut)
	}
	after, _, _ := c.listInstances()
	extra := ""
	for _, id := range after {
		if !contains(before, id) {
			extra = id
		}
	}
	cl := c.client()
	poll(time.Minute, func() bool { return memberAlive(cl, extra) })
	start := time.Since(t1)
	if out, errOut, code := c.rf("destroy", extra); code != 0 {
		b.Fatalf("destroy: %s %s", out, errOut)
	}
	return start
}
