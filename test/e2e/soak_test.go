package e2e

import (
	"math/rand/v2"
	"os"
	"sort"
	"strconv"
	"testing"
	"time"
)

// BenchmarkSoak is the long chaos run behind `make soak`: a local cluster of
// three servers and three workers loses machines round after round (a
// random one; every fourth round the leader's; every fifth round two at
// once) and must heal each time, with exactly one spawn per death. It
// prints heal times; it fails only when the cluster does not heal or
// spawns twice for one need. SOAK_ROUNDS sets the rounds (default 20).
func BenchmarkSoak(b *testing.B) {
	rounds := 20
	if s := os.Getenv("SOAK_ROUNDS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			b.Fatalf("SOAK_ROUNDS=%q: want a positive number", s)
		}
		rounds = n
	}
	const size = 6
	c := newCluster(b)
	c.up(c.writePlatform("platform.hcl", platformWith(3, 3, benchGrace.String(), `machine "worker" {
  min      = 3
  backends = ["local"]
}
`, true)))
	c.waitAgree(size, 2*time.Minute, "after up")
	grown := c.spawns()
	var heals []time.Duration
	deaths, leaderKills := 0, 0
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for r := 1; r <= rounds; r++ {
			v := c.waitAgree(size, 2*time.Minute, "before round "+strconv.Itoa(r))
			victims := []string{v.joined[rand.IntN(len(v.joined))]}
			switch {
			case r%4 == 0:
				victims = []string{v.leader}
				leaderKills++
			case r%5 == 0:
				other := v.joined[rand.IntN(len(v.joined))]
				for other == victims[0] {
					other = v.joined[rand.IntN(len(v.joined))]
				}
				victims = append(victims, other)
			}
			t0 := time.Now()
			for _, id := range victims {
				c.kill(id)
			}
			deaths += len(victims)
			c.waitAgree(size, 3*time.Minute, "healing round "+strconv.Itoa(r), victims...)
			h := time.Since(t0)
			heals = append(heals, h)
			b.Logf("round %d: killed %v, healed in %s", r, victims, h.Round(time.Millisecond))
		}
	}
	b.StopTimer()
	time.Sleep(3 * time.Second) // a stray second spawn would show by now
	extra := c.spawns() - grown
	if extra != deaths {
		b.Errorf("%d spawns for %d deaths: a need was met twice, or not at all", extra, deaths)
	}
	sort.Slice(heals, func(i, j int) bool { return heals[i] < heals[j] })
	q := func(p float64) float64 { return heals[int(p*float64(len(heals)-1))].Seconds() }
	b.ReportMetric(float64(len(heals)), "rounds")
	b.ReportMetric(q(0.5), "heal_p50_s")
	b.ReportMetric(q(0.95), "heal_p95_s")
	b.ReportMetric(q(1), "heal_max_s")
	b.ReportMetric(float64(extra)/float64(deaths), "spawns_per_death")
	b.ReportMetric(float64(leaderKills), "leader_kills")
	b.ReportMetric(benchGrace.Seconds(), "grace_s")
}
