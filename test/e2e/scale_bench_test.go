package e2e

import (
	cryptorand "crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/raptiformica/raptiformica/internal/consulclient"
	"github.com/raptiformica/raptiformica/internal/pki"
	"github.com/raptiformica/raptiformica/internal/state"
	"github.com/raptiformica/raptiformica/internal/testconsul"
)

// scaleWorkers is how many workers BenchmarkScale boots beside three
// servers (RF_SCALE_WORKERS overrides it, for a smaller try).
func scaleWorkers(b *testing.B) int {
	if s := os.Getenv("RF_SCALE_WORKERS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			b.Fatalf("RF_SCALE_WORKERS=%q: want a positive number", s)
		}
		return n
	}
	return 100
}

// BenchmarkScale boots three servers and scaleWorkers workers on local, as
// a user would (`up` with a description asking for them, at most ten
// spawns at once), and reports, beside the floor of the same number of
// bare Consul agents (no raptiformica agent) measured in the same run:
// time to converge, RSS and CPU per machine at rest, the Consul leader
// server's RPC rate at rest, a reconcile pass's duration, and the heal time
// of a killed worker beside the heal of one in a six-machine cluster
// booted the same way in the same run. It asserts nothing but that the
// clusters converge and heal.
//
// RF_SCALE_DIR, when set, is the cluster's folder and holds the bare
// agents' PIDs (bare.pids), so that the script that runs it can clean up
// after a benchmark that was killed.
func BenchmarkScale(b *testing.B) {
	workers := scaleWorkers(b)
	total := workers + 3
	floor, floorRSS := bareFloor(b, total, false)
	secure, secureRSS := bareFloor(b, total, true)
	small := smallHeal(b)

	c := newCluster(b)
	if d := os.Getenv("RF_SCALE_DIR"); d != "" {
		c.dir = d
	}
	src := scaleDescription(workers)
	b.ResetTimer()
	t0 := time.Now()
	out, errOut, code := c.rf("up", "--platform", c.writePlatform("scale.hcl", src), "--timeout", "20m")
	if code != 0 {
		b.Fatalf("up: exit %d\n%s\n%s", code, out, errOut)
	}
	v := c.waitAgree(total, 20*time.Minute, "after up")
	converge := time.Since(t0)
	leaderType := v.records[v.leader].Type
	var servers []string
	for id, r := range v.records {
		if r.Type == "server" {
			servers = append(servers, id)
		}
	}

	time.Sleep(settle)
	// Per role: the three servers carry the cluster's writes and its
	// leader, the clients only themselves; the floor is split the same
	// way, so that an excess shows where it lives.
	roles := map[string][]int{}
	var agents, consuls []int
	for _, m := range c.machines() {
		if !m.Running {
			continue
		}
		role := "client"
		if m.Config.ConsulServer {
			role = "server"
		}
		kids := children(m.PID)
		agents, consuls = append(agents, m.PID), append(consuls, kids...)
		roles[role+"_agent"] = append(roles[role+"_agent"], m.PID)
		roles[role+"_consul"] = append(roles[role+"_consul"], kids...)
	}
	roles["agent"], roles["consul"] = agents, consuls
	rest := restCPU(roles)
	perMachineCPU := (rest["agent"]*float64(len(agents)) + rest["consul"]*float64(len(consuls))) / float64(len(agents))
	agentCPU := rest["agent"]
	perMachineRSS := (rssMB(agents) + rssMB(consuls)) / float64(len(agents))

	pass := passDuration(b, c)
	rpc := leaderRPCRate(b, c)

	heal := healWorker(b, c, total, 10*time.Minute)
	b.StopTimer()

	v, _ = c.view()
	replaced := 0
	for _, id := range servers {
		if _, ok := v.records[id]; !ok {
			replaced++
		}
	}
	b.Logf("%d machines: converged in %s, leader %s (a %s), servers gone since: %d; at rest %.3f %% CPU and %.0f MB per machine (bare Consul %.3f %%, %.0f MB; secured as the agent runs it %.3f %%, %.0f MB), the Consul leader serving %.1f RPCs/s; pass %s; heal %s (on 6 machines: %s)",
		total, converge.Round(time.Second), v.leader, leaderType, replaced, perMachineCPU, perMachineRSS, floor.all, floorRSS, secure.all, secureRSS, rpc, pass, heal.Round(100*time.Millisecond), small.Round(100*time.Millisecond))
	b.Logf("per role, %% of a core each: server Consul %.3f (bare %.3f, secured %.3f), server agent %.3f; client Consul %.3f (bare %.3f, secured %.3f), client agent %.3f",
		rest["server_consul"], floor.server, secure.server, rest["server_agent"], rest["client_consul"], floor.client, secure.client, rest["client_agent"])
	b.ReportMetric(float64(total), "machines")
	b.ReportMetric(converge.Seconds(), "converge_s")
	b.ReportMetric(perMachineCPU, "cpu_%/machine")
	b.ReportMetric(floor.all, "floor_cpu_%/machine")
	b.ReportMetric(secure.all, "floor_secured_cpu_%/machine")
	b.ReportMetric(rest["client_consul"], "client_consul_cpu_%")
	b.ReportMetric(secure.client, "floor_secured_client_cpu_%")
	b.ReportMetric(rest["server_consul"], "server_consul_cpu_%")
	b.ReportMetric(secure.server, "floor_secured_server_cpu_%")
	b.ReportMetric(secureRSS, "floor_secured_rss_MB/machine")
	b.ReportMetric(agentCPU, "agent_cpu_%/machine")
	b.ReportMetric(perMachineRSS, "rss_MB/machine")
	b.ReportMetric(floorRSS, "floor_rss_MB/machine")
	b.ReportMetric(pass.Seconds()*1000, "pass_ms")
	b.ReportMetric(heal.Seconds(), "heal_s")
	b.ReportMetric(small.Seconds(), "heal_6_machines_s")
	b.ReportMetric(rpc, "leader_rpc_per_s")
	if leaderType == "server" {
		b.ReportMetric(1, "server_leads")
	} else {
		b.ReportMetric(0, "server_leads")
	}
}

// settle is how long a cluster, or the floor's bare agents, run after
// they agree before CPU is measured at rest: a minute, so that the
// window sees neither the join's tail nor every member's first
// minute-long checks at once (measured 10 s after converging, 103
// machines used twice the CPU they use a minute later).
const settle = time.Minute

// restWindow is how long CPU at rest is measured, the floor's and the
// cluster's alike. Several of each agent's minute-long timers (Consul's
// anti-entropy sync, its coordinate updates) fall in or out of a shorter
// window: over 30 s the same 103 bare agents measured twice in a run
// differed by up to 19 %.
const restWindow = 2 * time.Minute

// restCPU measures the processes of each group over one restWindow and
// returns each group's CPU at rest, in percent of a core per process.
func restCPU(groups map[string][]int) map[string]float64 {
	t0 := map[string]float64{}
	for g, pids := range groups {
		t0[g] = cpuTicks(pids)
	}
	time.Sleep(restWindow)
	out := map[string]float64{}
	for g, pids := range groups {
		if len(pids) > 0 {
			// /proc counts in ticks of 1/100 s.
			out[g] = (cpuTicks(pids) - t0[g]) / 100 / restWindow.Seconds() * 100 / float64(len(pids))
		}
	}
	return out
}

// floorCPU is a floor's CPU at rest, in percent of a core per agent: over
// all its agents, its three servers, and its clients.
type floorCPU struct{ all, server, client float64 }

// scaleDescription is the benchmarks' description: three servers and n
// workers on local, at most ten spawns at once.
func scaleDescription(n int) string {
	return fmt.Sprintf(`cluster = "scale"
policy {
  grace_period          = %q
  cooldown              = "1s"
  provision_timeout     = "5m"
  max_concurrent_spawns = 10
  max_unhealthy         = 10
}
machine "server" {
  min           = 3
  max           = 3
  consul_server = true
  backends      = ["local"]
}
machine "worker" {
  min      = %d
  max      = %d
  backends = ["local"]
}
`, benchGrace, n, n)
}

// smallHeal boots three servers and three workers the way BenchmarkScale
// boots its cluster, kills a worker, and returns the time until it is
// replaced: the heal the big cluster's is set beside. The cluster is
// removed before it returns.
func smallHeal(b *testing.B) time.Duration {
	c := newCluster(b)
	defer c.rf("down")
	if out, errOut, code := c.rf("up", "--platform", c.writePlatform("small.hcl", scaleDescription(3)), "--timeout", "5m"); code != 0 {
		b.Fatalf("up of six machines: exit %d\n%s\n%s", code, out, errOut)
	}
	c.waitAgree(6, 5*time.Minute, "six machines after up")
	return healWorker(b, c, 6, 5*time.Minute)
}

// healWorker SIGKILLs a joined worker of c's n machines and returns the
// time until the cluster agrees on n machines without it, as the leader's
// Consul sees its members: the one whose view the control loop acts on.
// The others' views of the dead member wait on Consul's failure detector
// (seconds at a hundred machines' gossip timings): at a hundred, the leave
// the reap asks of Consul was seen reverted on other servers, the member
// alive again until detected failed.
func healWorker(b *testing.B, c *testCluster, n int, timeout time.Duration) time.Duration {
	v := c.waitAgree(n, time.Minute, "before the kill")
	var victim string
	for _, id := range v.joined {
		if v.records[id].Type == "worker" && id != v.leader {
			victim = id
			break
		}
	}
	if victim == "" {
		b.Fatal("no joined worker to kill")
	}
	c.viewFrom = v.leader
	defer func() { c.viewFrom = "" }()
	t0 := time.Now()
	c.kill(victim)
	c.waitAgree(n, timeout, "after killing "+victim, victim)
	return time.Since(t0)
}

// leaderRPCRate is the RPCs a second the Consul leader server handled at
// rest (consul.rpc.request over its current metrics interval, from the
// interval's start to now): what the cluster asks of the one server every
// write goes through. 0 when it cannot be read.
func leaderRPCRate(b *testing.B, c *testCluster) float64 {
	leader, err := c.client().Status().Leader()
	if err != nil {
		b.Logf("consul leader: %v", err)
		return 0
	}
	host, _, _ := strings.Cut(leader, ":")
	id := c.identity()
	cl, err := consulclient.New(consulclient.Target{Host: host, Token: id.ManagementToken, CACert: id.CACert})
	if err != nil {
		b.Logf("consul leader %s: %v", host, err)
		return 0
	}
	for range 3 {
		time.Sleep(5 * time.Second)
		m, err := cl.Agent().Metrics()
		if err != nil {
			b.Logf("metrics of %s: %v", host, err)
			return 0
		}
		start, err := time.Parse("2006-01-02 15:04:05 -0700 MST", m.Timestamp)
		if elapsed := time.Since(start); err != nil || elapsed < 3*time.Second {
			continue // an interval just begun says little: look again
		} else {
			for _, ctr := range m.Counters {
				if ctr.Name == "consul.rpc.request" {
					return float64(ctr.Count) / elapsed.Seconds()
				}
			}
			return 0
		}
	}
	return 0
}

// passDuration is the leader's last pass's duration, from `status`.
func passDuration(b *testing.B, c *testCluster) time.Duration {
	out, _, _ := c.rf("status", "--json")
	var st struct {
		Reconcile *state.Status `json:"reconcile"`
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil || st.Reconcile == nil {
		b.Logf("status: no pass to read (%v)", err)
		return 0
	}
	d, err := time.ParseDuration(st.Reconcile.Duration)
	if err != nil {
		b.Logf("status: pass duration %q: %v", st.Reconcile.Duration, err)
	}
	return d
}

// bareFloor starts n bare Consul agents (three servers, the rest clients)
// on loopback addresses, waits until the servers see all n alive, and
// returns their CPU (percent of a core, per role) and RSS (MB) per agent
// at rest over restWindow, as the cluster's are measured. They are killed
// before it returns. Secured, they run as the agent runs its Consul,
// which no secure cluster can do without: gossip encrypted, ACLs denying
// by default, TLS on every RPC with the server name verified.
func bareFloor(b *testing.B, n int, secured bool) (cpu floorCPU, rss float64) {
	bin, err := testconsul.Binary()
	if err != nil {
		b.Fatal(err)
	}
	dir := b.TempDir()
	pidFile := ""
	if d := os.Getenv("RF_SCALE_DIR"); d != "" {
		pidFile = filepath.Join(d, "bare.pids")
	}
	base := fmt.Sprintf("127.%d.%d.", 16+rand.IntN(224), rand.IntN(256))
	ip := func(i int) string { return base + strconv.Itoa(2+i) }
	var cmds []*exec.Cmd
	defer func() {
		for _, cmd := range cmds {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
		if pidFile != "" {
			_ = os.Remove(pidFile)
		}
	}()
	var pids []string
	token, secure := "", func(int) []string { return nil }
	if secured {
		token, secure = securedFloor(b, dir)
	}
	for i := range n {
		args := []string{"agent", "-node", fmt.Sprintf("bare-%03d", i), "-bind", ip(i), "-client", ip(i),
			"-data-dir", filepath.Join(dir, strconv.Itoa(i)), "-dns-port", "-1", "-grpc-port", "-1", "-log-level", "warn"}
		args = append(args, secure(i)...)
		if i < 3 {
			args = append(args, "-server", "-bootstrap-expect", "3", "-serf-wan-port", "-1")
		}
		for j := range 3 {
			if j != i {
				args = append(args, "-retry-join", ip(j))
			}
		}
		cmd := exec.Command(bin, args...)
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := cmd.Start(); err != nil {
			b.Fatalf("bare agent %d: %v", i, err)
		}
		cmds = append(cmds, cmd)
		pids = append(pids, strconv.Itoa(cmd.Process.Pid))
		if pidFile != "" {
			_ = os.WriteFile(pidFile, []byte(strings.Join(pids, "\n")+"\n"), 0o600)
		}
	}
	cfg := api.DefaultConfig()
	cfg.Address, cfg.Token = ip(0)+":8500", token
	cl, err := api.NewClient(cfg)
	if err != nil {
		b.Fatal(err)
	}
	if !poll(5*time.Minute, func() bool {
		ms, err := cl.Agent().Members(false)
		alive := 0
		for _, m := range ms {
			if m.Status == 1 {
				alive++
			}
		}
		return err == nil && alive == n
	}) {
		b.Fatalf("%d bare Consul agents did not all join in 5 minutes", n)
	}
	time.Sleep(settle)
	groups := map[string][]int{}
	for i, cmd := range cmds {
		role := "client"
		if i < 3 {
			role = "server"
		}
		groups[role] = append(groups[role], cmd.Process.Pid)
		groups["all"] = append(groups["all"], cmd.Process.Pid)
	}
	rest := restCPU(groups)
	return floorCPU{all: rest["all"], server: rest["server"], client: rest["client"]}, rssMB(groups["all"]) / float64(n)
}

// securedFloor writes, under dir, what bare agents need to run secured as
// the agent runs its Consul (a gossip key, one CA, a certificate per role,
// a management token), and returns the token and the extra arguments of
// agent i (the first three are servers).
func securedFloor(b *testing.B, dir string) (string, func(i int) []string) {
	key := make([]byte, 32)
	if _, err := cryptorand.Read(key); err != nil {
		b.Fatal(err)
	}
	token := fmt.Sprintf("%x-%x-%x-%x-%x", key[0:4], key[4:6], key[6:8], key[8:10], key[10:16])
	ca, err := pki.NewCA("floor")
	if err != nil {
		b.Fatal(err)
	}
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			b.Fatal(err)
		}
		return p
	}
	caFile := write("ca.pem", ca.CertPEM)
	configs := map[bool]string{}
	for _, server := range []bool{true, false} {
		cert, err := ca.Issue("floor", server)
		if err != nil {
			b.Fatal(err)
		}
		role := map[bool]string{true: "server", false: "client"}[server]
		certFile, keyFile := write(role+".pem", cert.CertPEM), write(role+"-key.pem", cert.KeyPEM)
		tokens := fmt.Sprintf("agent = %q", token)
		if server {
			tokens += fmt.Sprintf("\n    initial_management = %q", token)
		}
		configs[server] = write(role+".hcl", fmt.Sprintf(`encrypt = %q
acl {
  enabled        = true
  default_policy = "deny"
  down_policy    = "extend-cache"
  tokens {
    %s
  }
}
tls {
  defaults {
    ca_file         = %q
    cert_file       = %q
    key_file        = %q
    verify_incoming = true
    verify_outgoing = true
  }
  internal_rpc {
    verify_server_hostname = true
  }
}
`, base64.StdEncoding.EncodeToString(key), tokens, caFile, certFile, keyFile))
	}
	return token, func(i int) []string { return []string{"-config-file", configs[i < 3]} }
}
