package e2e

// Benchmarks that measure the real thing and print figures beside the floor
// they cannot beat, measured in the same run. They never fail on time.
//
//	go test -run '^$' -bench . -benchtime 3x ./test/e2e/

import (
	"context"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/raptiformica/raptiformica/backends/local"
	"github.com/raptiformica/raptiformica/internal/consulclient"
	"github.com/raptiformica/raptiformica/internal/kvschema"
	"github.com/raptiformica/raptiformica/reconcile"
)

const benchGrace = time.Second

func benchPlatform(extra string) string {
	return platformWith(3, 3, benchGrace.String(), extra, false)
}

// memberAlive reports whether serf sees the member alive.
func memberAlive(cl *api.Client, name string) bool {
	members, err := cl.Agent().Members(false)
	if err != nil {
		return false
	}
	for _, m := range members {
		if m.Name == name {
			return m.Status == 1
		}
	}
	return false
}

// memberState polls Consul for one member: alive, and a Raft voter.
func memberState(cl *api.Client, name string) (alive, voter bool) {
	members, err := cl.Agent().Members(false)
	if err != nil {
		return false, false
	}
	for _, m := range members {
		if m.Name == name {
			alive = m.Status == 1
		}
	}
	raft, err := cl.Operator().RaftGetConfiguration(nil)
	if err == nil {
		// By its ID: the configuration names servers by address, and a
		// machine may have the address of one that left and is still
		// listed.
		for _, s := range raft.Servers {
			if s.ID == consulclient.NodeID(name) {
				voter = s.Voter
			}
		}
	}
	return alive, voter
}

// quantile is the q-quantile of ds in seconds, by the nearest rank: with
// five runs, p50 is the third and p90 the fifth.
func quantile(ds []time.Duration, q float64) float64 {
	if len(ds) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	rank := int(math.Ceil(q*float64(len(s)))) - 1
	return s[max(0, min(rank, len(s)-1))].Seconds()
}

func poll(timeout time.Duration, f func() bool) bool {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if f() {
			return true
		}
		time.Sleep(20 * time.Millisecond)
	}
	return false
}

// BenchmarkHeal: SIGKILL a follower's machine and time until a replacement is
// a joined voter and the dead one reaped. Beside it, the floor: Consul's own
// failure detection (SIGKILL until serf says failed) plus a bare node start
// (a machine spawned by hand until it is an alive voter).
func BenchmarkHeal(b *testing.B) {
	c := newCluster(b)
	c.up(c.writePlatform("platform.hcl", benchPlatform("")))
	benchHeal(b, c, false)
}

// BenchmarkDockerHeal is BenchmarkHeal on containers: `docker kill` of a
// follower's container, and the floor is Consul's failure detection plus a
// bare container start (a machine spawned by hand until it is an alive voter).
func BenchmarkDockerHeal(b *testing.B) {
	c := newDockerCluster(b)
	c.up(strings.Replace(dockerPlatform(c.name, ""), `grace_period      = "2s"`, fmt.Sprintf("grace_period      = %q", benchGrace), 1))
	benchHeal(b, c.testCluster, false)
}

// BenchmarkHealLeader is BenchmarkHeal for the machine that holds the
// leader lock: the heal waits for the lock to move as well, so beside the
// floor it prints how long leadership took to move (lead_move) next to
// Consul's failure detection (detect), which the move cannot beat.
func BenchmarkHealLeader(b *testing.B) {
	c := newCluster(b)
	c.up(c.writePlatform("platform.hcl", benchPlatform("")))
	benchHeal(b, c, true)
}

// healPhases is when, after the SIGKILL, each step of one heal was first
// seen; zero when it was not.
type healPhases struct {
	detect time.Duration // a survivor's Consul says the victim is not alive
	moved  time.Duration // another live machine holds the leader lock
	spawn  time.Duration // the replacement's record (the spawn intent) is in KV
	reaped time.Duration // the victim's record is gone
	heal   time.Duration // three joined machines agree, the victim gone
}

func (p healPhases) String() string {
	r := func(d time.Duration) time.Duration { return d.Round(time.Millisecond) }
	moved := "" // a follower's heal moves no lock
	if p.moved != 0 {
		moved = fmt.Sprintf(", leader moved %s", r(p.moved))
	}
	return fmt.Sprintf("detect %s%s, spawn intent %s, reaped %s, heal %s", r(p.detect), moved, r(p.spawn), r(p.reaped), r(p.heal))
}

// benchHeal kills, b.N times, a follower's machine or (leader) the leader
// lock holder's, and measures its heal beside the floor of the same
// iteration: the detection plus a bare node start.
func benchHeal(b *testing.B, c *testCluster, leader bool) {
	c.waitAgree(3, time.Minute, "after up")
	var heals, floors, detects, moves, starts []time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		v := c.waitAgree(3, time.Minute, "before kill")
		victim, survivor := v.follower(), v.leader
		if leader {
			victim, survivor = v.leader, v.follower()
		}
		p := healOnce(b, c, v, victim, survivor, leader)
		heals, detects = append(heals, p.heal), append(detects, p.detect)
		if leader {
			moves = append(moves, p.moved)
		}

		// A bare node start: spawn one by hand, time it to an alive voter.
		before, _, _ := c.listInstances()
		t1 := time.Now()
		if out, errOut, code := c.rf("spawn", "--type", "server"); code != 0 {
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
		poll(time.Minute, func() bool { alive, voter := memberState(cl, extra); return alive && voter })
		s := time.Since(t1)
		starts, floors = append(starts, s), append(floors, p.detect+s)
		b.Logf("iteration %d: killed %s (leader %v): %s; bare node start %s, floor %s", i, victim, leader, p, s.Round(time.Millisecond), (p.detect + s).Round(time.Millisecond))
		if dir := os.Getenv("RF_BENCH_LOGS"); dir != "" && p.heal > 2*(p.detect+s) {
			// A heal slower than twice its floor: what the survivors
			// logged, for whoever looks for where its time went.
			keepLogs(b, c, filepath.Join(dir, fmt.Sprintf("%s-%d-%s", b.Name(), i, victim)))
		}
		if out, errOut, code := c.rf("destroy", extra); code != 0 {
			b.Fatalf("destroy: %s %s", out, errOut)
		}
	}
	b.ReportMetric(mean(heals), "heal_s")
	b.ReportMetric(mean(floors), "floor_s")
	b.ReportMetric(quantile(heals, 0.5), "heal_p50_s")
	b.ReportMetric(quantile(heals, 0.9), "heal_p90_s")
	b.ReportMetric(quantile(floors, 0.5), "floor_p50_s")
	b.ReportMetric(quantile(floors, 0.9), "floor_p90_s")
	if f := quantile(floors, 0.9); f > 0 {
		b.ReportMetric(quantile(heals, 0.9)/f, "heal/floor_p90")
	}
	b.ReportMetric(mean(detects), "detect_s")
	b.ReportMetric(quantile(detects, 0.5), "detect_p50_s")
	b.ReportMetric(quantile(detects, 0.9), "detect_p90_s")
	if leader {
		b.ReportMetric(quantile(moves, 0.5), "lead_move_p50_s")
		b.ReportMetric(quantile(moves, 0.9), "lead_move_p90_s")
	}
	b.ReportMetric(mean(starts), "node_start_s")
	b.ReportMetric(benchGrace.Seconds(), "grace_s")
}

// healOnce SIGKILLs victim and returns the phases of its heal, asked
// through survivor's Consul: the victim's own would stop answering rather
// than say it died. The lock holder is watched with a blocking query, so
// that its move is timed to the index, not to the next poll.
func healOnce(b *testing.B, c *testCluster, v view, victim, survivor string, leader bool) healPhases {
	b.Helper()
	id := c.identity()
	cl, err := consulclient.New(consulclient.Target{Host: v.records[survivor].Address, Token: id.ManagementToken, CACert: id.CACert})
	if err != nil {
		b.Fatal(err)
	}
	var p healPhases
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	moved := make(chan time.Duration, 1)
	t0 := time.Now()
	c.kill(victim)
	if leader {
		go func() { moved <- waitLeaderMoved(ctx, cl, victim, t0) }()
	}
	for ctx.Err() == nil {
		if p.detect == 0 && !memberAlive(cl, victim) {
			p.detect = time.Since(t0)
		}
		select {
		case d := <-moved:
			p.moved = d
		default:
		}
		// The view is slow to read: detection alone is polled until
		// it is seen, so that its time is not the view's.
		if p.detect == 0 {
			time.Sleep(20 * time.Millisecond)
			continue
		}
		if v2, err := c.view(); err == nil {
			if _, ok := v2.records[victim]; !ok && p.reaped == 0 {
				p.reaped = time.Since(t0)
			}
			for rid := range v2.records {
				if _, old := v.records[rid]; !old && p.spawn == 0 {
					p.spawn = time.Since(t0)
				}
			}
			if v2.agreeOn(3) && !v2.has(victim) {
				p.heal = time.Since(t0)
				break
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	if p.heal == 0 {
		b.Fatalf("no heal within 3m of killing %s: %s", victim, p)
	}
	if leader && p.moved == 0 {
		// Healed means a leader: the move is in the channel by now, or
		// was never seen.
		select {
		case p.moved = <-moved:
		case <-time.After(15 * time.Second):
		}
		if p.moved == 0 {
			b.Fatalf("the leader lock never left %s: %s", victim, p)
		}
	}
	return p
}

// waitLeaderMoved returns how long after t0 a live machine other than
// victim held the leader lock, read through cl; 0 when ctx ended first.
func waitLeaderMoved(ctx context.Context, cl *api.Client, victim string, t0 time.Time) time.Duration {
	var index uint64
	for ctx.Err() == nil {
		pair, meta, err := cl.KV().Get(kvschema.Leader, (&api.QueryOptions{WaitIndex: index, WaitTime: 5 * time.Second}).WithContext(ctx))
		if err != nil {
			index = 0
			time.Sleep(50 * time.Millisecond)
			continue
		}
		if pair != nil && pair.Session != "" && string(pair.Value) != victim && memberAlive(cl, string(pair.Value)) {
			return time.Since(t0)
		}
		if meta.LastIndex < index {
			index = 0
		} else {
			index = meta.LastIndex
		}
	}
	return 0
}

// mean is the mean of ds in seconds.
func mean(ds []time.Duration) float64 {
	if len(ds) == 0 {
		return 0
	}
	var sum time.Duration
	for _, d := range ds {
		sum += d
	}
	return sum.Seconds() / float64(len(ds))
}

// BenchmarkReaction: from `platform apply` of min+1 to the leader's spawn
// intent in KV, seen through a blocking query.
func BenchmarkReaction(b *testing.B) {
	c := newCluster(b)
	three := c.writePlatform("three.hcl", benchPlatform(""))
	// Servers must stay odd, so the change adds a worker type.
	withWorker := c.writePlatform("worker.hcl", benchPlatform("machine \"worker\" {\n  min = 1\n}\n"))
	c.up(three)
	c.waitAgree(3, time.Minute, "after up")
	var total time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		cl := c.client()
		inv := &reconcile.Inventory{Store: kvschema.New(cl)}
		_, index, err := inv.List(context.Background(), nil)
		if err != nil {
			b.Fatal(err)
		}
		t0 := time.Now()
		if out, errOut, code := c.rf("platform", "apply", withWorker); code != 0 {
			b.Fatalf("apply: %s %s", out, errOut)
		}
		for {
			recs, next, err := inv.List(context.Background(), &api.QueryOptions{WaitIndex: index, WaitTime: time.Minute})
			if err != nil {
				b.Fatal(err)
			}
			index = next
			found := false
			for _, r := range recs {
				found = found || r.Type == "worker"
			}
			if found {
				break
			}
		}
		total += time.Since(t0)
		b.StopTimer()
		c.waitAgree(4, time.Minute, "with a worker")
		if _, errOut, code := c.rf("platform", "apply", three); code != 0 {
			b.Fatal(errOut)
		}
		c.waitAgree(3, time.Minute, "back to three")
		b.StartTimer()
	}
	b.ReportMetric(total.Seconds()/float64(b.N)*1000, "reaction_ms")
}

// BenchmarkIdle: resident memory and CPU of idle agents and their Consuls in
// a settled 3-node cluster, sampled over 10 seconds.
func BenchmarkIdle(b *testing.B) {
	c := newCluster(b)
	c.up(c.writePlatform("platform.hcl", benchPlatform("")))
	c.waitAgree(3, time.Minute, "after up")
	time.Sleep(5 * time.Second)
	b.ResetTimer()
	var agentRSS, consulRSS, agentCPU, consulCPU float64
	for i := 0; i < b.N; i++ {
		var agents, consuls []int
		for _, m := range c.machines() {
			agents = append(agents, m.PID)
			consuls = append(consuls, children(m.PID)...)
		}
		a0, c0 := cpuTicks(agents), cpuTicks(consuls)
		const window = 10 * time.Second
		time.Sleep(window)
		a1, c1 := cpuTicks(agents), cpuTicks(consuls)
		const hz = 100.0 // USER_HZ on Linux
		agentCPU += (a1 - a0) / hz / window.Seconds() * 100 / float64(len(agents))
		consulCPU += (c1 - c0) / hz / window.Seconds() * 100 / float64(len(consuls))
		agentRSS += rssMB(agents) / float64(len(agents))
		consulRSS += rssMB(consuls) / float64(len(consuls))
	}
	n := float64(b.N)
	b.ReportMetric(agentRSS/n, "agent_rss_MB")
	b.ReportMetric(agentCPU/n, "agent_cpu_%")
	b.ReportMetric(consulRSS/n, "consul_rss_MB")
	b.ReportMetric(consulCPU/n, "consul_cpu_%")
}

// BenchmarkIdleClient measures a client machine at rest (a worker: the
// agent and a Consul client, the footprint of a small board or a laptop in
// the cluster), beside three servers: its agent's and its Consul's RSS.
func BenchmarkIdleClient(b *testing.B) {
	c := newCluster(b)
	c.up(c.writePlatform("platform.hcl", benchPlatform(`machine "worker" {
  min      = 1
  max      = 1
  backends = ["local"]
}
`)))
	v := c.waitAgree(4, 2*time.Minute, "three servers and a worker")
	worker := 0
	for _, m := range c.machines() {
		if v.records[m.Config.MachineID].Type == "worker" && m.Running {
			worker = m.PID
		}
	}
	if worker == 0 {
		b.Fatalf("no running worker in %v", v)
	}
	time.Sleep(30 * time.Second) // at rest: past joining and the first passes
	b.ResetTimer()
	var agentRSS, consulRSS float64
	for i := 0; i < b.N; i++ {
		agentRSS += rssMB([]int{worker})
		consulRSS += rssMB(children(worker))
		time.Sleep(time.Second)
	}
	n := float64(b.N)
	b.ReportMetric(agentRSS/n, "client_agent_rss_MB")
	b.ReportMetric(consulRSS/n, "client_consul_rss_MB")
}

// children returns the PIDs of the Consul processes whose parent is pid:
// the agent's own Consul. An agent is also the parent of the agents of the
// local machines it made, which are counted as agents, not again here.
func children(pid int) []int {
	ents, _ := os.ReadDir("/proc")
	var out []int
	for _, e := range ents {
		n, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", n))
		if err != nil {
			continue
		}
		s := string(b)
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
		if len(f) > 1 && f[1] == strconv.Itoa(pid) && strings.HasPrefix(s[strings.IndexByte(s, '(')+1:], "consul)") {
			out = append(out, n)
		}
	}
	sort.Ints(out)
	return out
}

func cpuTicks(pids []int) float64 {
	total := 0.0
	for _, pid := range pids {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		s := string(b)
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
		// fields after the command: state is f[0]; utime f[11], stime f[12]
		u, _ := strconv.ParseFloat(f[11], 64)
		st, _ := strconv.ParseFloat(f[12], 64)
		total += u + st
	}
	return total
}

func rssMB(pids []int) float64 {
	total := 0.0
	for _, pid := range pids {
		b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "status"))
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(line, "VmRSS:") {
				kb, _ := strconv.ParseFloat(strings.Fields(line)[1], 64)
				total += kb / 1024
			}
		}
	}
	return total
}

// BenchmarkRecovery measures the last machine standing: two of three
// servers SIGKILLed at once, until the cluster is three joined voters again
// with the dead reaped, beside the time a fresh `up` of the same size takes,
// measured on the same clusters.
func BenchmarkRecovery(b *testing.B) {
	const lostAfter = 3 * time.Second
	var up, recovery time.Duration
	var ups, recoveries []time.Duration
	for i := 0; i < b.N; i++ {
		c := newCluster(b)
		src := strings.Replace(benchPlatform(""), `resync_interval   = "2s"`, fmt.Sprintf("resync_interval   = \"2s\"\n  quorum_lost_after = %q", lostAfter), 1)
		begin := time.Now()
		c.up(c.writePlatform("platform.hcl", src))
		v := c.waitAgree(3, 2*time.Minute, "after up")
		u := time.Since(begin)
		dead := v.joined[1:]
		begin = time.Now()
		for _, id := range dead {
			c.kill(id)
		}
		c.waitAgree(3, 3*time.Minute, "after losing two of three", dead...)
		r := time.Since(begin)
		b.Logf("iteration %d: fresh up %s, recovery %s", i, u.Round(time.Millisecond), r.Round(time.Millisecond))
		up += u
		recovery += r
		ups, recoveries = append(ups, u), append(recoveries, r)
		c.rf("down")
	}
	n := float64(b.N)
	b.ReportMetric(recovery.Seconds()/n, "recovery_s")
	b.ReportMetric(up.Seconds()/n, "fresh_up_s")
	b.ReportMetric(quantile(recoveries, 0.5), "recovery_p50_s")
	b.ReportMetric(quantile(recoveries, 0.9), "recovery_p90_s")
	b.ReportMetric(quantile(ups, 0.5), "fresh_up_p50_s")
	b.ReportMetric(quantile(ups, 0.9), "fresh_up_p90_s")
	b.ReportMetric(lostAfter.Seconds(), "quorum_lost_after_s")
}

// BenchmarkSecurity prints what Consul's ACLs and TLS cost: `up` of three
// servers until they agree, and the heal of a SIGKILLed follower, on the
// real binary and on one built with -tags benchinsecure (ACLs and TLS
// off), in turns in the same run. Security may cost at most 10 % of the
// heal time (heal-cost-%).
func BenchmarkSecurity(b *testing.B) {
	if insecureBinary == "" {
		b.Fatal("no binary without security: TestMain builds it when -bench is given")
	}
	var up, heal [2]time.Duration
	for i := 0; i < b.N; i++ {
		for k, bin := range []string{binary, insecureBinary} {
			u, h := upAndHeal(b, bin)
			up[k] += u
			heal[k] += h
			b.Logf("iteration %d, %s: up %s, heal %s", i, []string{"secure", "insecure"}[k], u.Round(time.Millisecond), h.Round(time.Millisecond))
		}
	}
	n := float64(b.N)
	b.ReportMetric(up[0].Seconds()/n, "up-secure-s")
	b.ReportMetric(up[1].Seconds()/n, "up-insecure-s")
	b.ReportMetric(heal[0].Seconds()/n, "heal-secure-s")
	b.ReportMetric(heal[1].Seconds()/n, "heal-insecure-s")
	b.ReportMetric(100*(heal[0]-heal[1]).Seconds()/heal[1].Seconds(), "heal-cost-%")
}

// upAndHeal times, on binary bin, `up` of a local cluster of three
// servers until every source agrees on them, then a follower's SIGKILL
// until its replacement is joined and it is gone, and takes it down.
func upAndHeal(b *testing.B, bin string) (up, heal time.Duration) {
	c := newCluster(b)
	c.bin = bin
	t0 := time.Now()
	c.up(c.writePlatform("platform.hcl", benchPlatform("")))
	v := c.waitAgree(3, 2*time.Minute, "after up")
	up = time.Since(t0)
	victim := v.follower()
	t1 := time.Now()
	c.kill(victim)
	c.waitAgree(3, 2*time.Minute, "healed", victim)
	heal = time.Since(t1)
	c.rf("down")
	return up, heal
}

// BenchmarkBaseline measures `up` of three servers and a follower's heal
// on this binary beside another version's ($RAPTIFORMICA_BASELINE, which
// bench/baseline.sh builds), alternating in one run, so that what a change
// costs shows beside the machine's own noise: each figure's ratio to the
// baseline's is the change's.
func BenchmarkBaseline(b *testing.B) {
	base := os.Getenv("RAPTIFORMICA_BASELINE")
	if base == "" {
		b.Fatal("RAPTIFORMICA_BASELINE names no binary: run bench/baseline.sh REV")
	}
	var up, heal [2][]time.Duration
	for i := 0; i < b.N; i++ {
		for k, bin := range []string{binary, base} {
			u, h := upAndHeal(b, bin)
			up[k], heal[k] = append(up[k], u), append(heal[k], h)
			b.Logf("iteration %d, %s: up %s, heal %s", i, []string{"this", "baseline"}[k], u.Round(time.Millisecond), h.Round(time.Millisecond))
		}
	}
	for k, name := range []string{"", "-baseline"} {
		b.ReportMetric(quantile(up[k], 0.5), "up-p50"+name+"-s")
		b.ReportMetric(quantile(heal[k], 0.5), "heal-p50"+name+"-s")
	}
	b.ReportMetric(quantile(up[0], 0.5)/quantile(up[1], 0.5), "up-ratio")
	b.ReportMetric(quantile(heal[0], 0.5)/quantile(heal[1], 0.5), "heal-ratio")
}

// TestQuantileNearestRank: the benchmarks' p50 and p90 over five runs are
// the third and the fifth of them.
func TestQuantileNearestRank(t *testing.T) {
	runs := []time.Duration{5 * time.Second, time.Second, 4 * time.Second, 2 * time.Second, 3 * time.Second}
	if p50, p90 := quantile(runs, 0.5), quantile(runs, 0.9); p50 != 3 || p90 != 5 {
		t.Errorf("p50 %v, p90 %v; want 3 and 5", p50, p90)
	}
	if quantile(nil, 0.5) != 0 || quantile(runs[:1], 0.9) != 5 {
		t.Error("empty or single-run quantiles")
	}
}

// keepLogs copies the agent's and Consul's logs of every machine of c into
// dir.
func keepLogs(b *testing.B, c *testCluster, dir string) {
	ms, err := local.Machines(c.dir)
	if err != nil {
		b.Logf("keep logs: %v", err)
		return
	}
	for _, m := range ms {
		for _, f := range []string{filepath.Join(m.Dir, "agent.log"), filepath.Join(m.Config.DataDir, "consul.log")} {
			raw, err := os.ReadFile(f)
			if err != nil {
				continue
			}
			to := filepath.Join(dir, m.Config.MachineID, filepath.Base(f))
			if err := os.MkdirAll(filepath.Dir(to), 0o755); err == nil {
				_ = os.WriteFile(to, raw, 0o644)
			}
		}
	}
	b.Logf("a slow heal: the machines' logs are in %s", dir)
}
