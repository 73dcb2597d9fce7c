// Package e2e holds the system tests: the real binary, built from
// ./cmd/raptiformica in TestMain, driving real Consul agents, processes,
// Docker containers, OpenSSH servers, Prometheus and Chromium. They talk to
// the program as a user does, through its command line, its HTTP API and
// what Consul and the backends report; nothing here reaches into package
// main.
//
// Each cluster test boots its own cluster in its own folder (and so its own
// 127.x.y.0/24), which lets them run in parallel. `make test` installs and
// builds every tool they need; one that is missing fails the test that
// needs it, with where it comes from. With -short they skip.
package e2e

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/raptiformica/raptiformica/backends/local"
	"github.com/raptiformica/raptiformica/daemon/agentapi"
	"github.com/raptiformica/raptiformica/internal/consulclient"
	"github.com/raptiformica/raptiformica/internal/identity"
	"github.com/raptiformica/raptiformica/internal/kvschema"
	"github.com/raptiformica/raptiformica/internal/nodeconfig"
	"github.com/raptiformica/raptiformica/internal/state"
	"github.com/raptiformica/raptiformica/reconcile"
)

var binary string

// insecureBinary is the binary without ACLs and TLS, built for benchmarks
// only.
var insecureBinary string

func TestMain(m *testing.M) {
	flag.Parse()
	code := func() int {
		if testing.Short() {
			return m.Run()
		}
		root, err := moduleRoot()
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		dir, err := os.MkdirTemp("", "rf-e2e-bin")
		if err != nil {
			panic(err)
		}
		defer os.RemoveAll(dir)
		binary = filepath.Join(dir, "raptiformica")
		build := exec.Command("go", "build", "-o", binary, "./cmd/raptiformica")
		build.Dir = root
		build.Env = append(os.Environ(), "CGO_ENABLED=0") // static, for the node image
		out, err := build.CombinedOutput()
		if err != nil {
			fmt.Fprintf(os.Stderr, "build: %v\n%s", err, out)
			return 1
		}
		// Benchmarks also measure what ACLs and TLS cost, on a binary
		// built without them (never released: see daemon/insecure_bench.go).
		if f := flag.Lookup("test.bench"); f != nil && f.Value.String() != "" {
			insecureBinary = filepath.Join(dir, "raptiformica-insecure")
			build := exec.Command("go", "build", "-tags", "benchinsecure", "-o", insecureBinary, "./cmd/raptiformica")
			build.Dir = root
			build.Env = append(os.Environ(), "CGO_ENABLED=0")
			if out, err := build.CombinedOutput(); err != nil {
				fmt.Fprintf(os.Stderr, "build -tags benchinsecure: %v\n%s", err, out)
				return 1
			}
		}
		if _, err := nodeconfig.FindConsul(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		// A second run beside this one (a helper's, in another checkout)
		// shares the node images: RF_KEEP_IMAGES=1 leaves them.
		if os.Getenv("RF_KEEP_IMAGES") == "" {
			defer removeNodeImages()
		}
		return m.Run()
	}()
	os.Exit(code)
}

// needTool returns the path of a program a test needs. `make test` installs
// or builds every one of them (scripts/testdeps.sh, scripts/prometheus.sh)
// and puts it on PATH, so a missing one fails the test, saying where it
// comes from. With -short the test is skipped instead, as every end-to-end
// test is.
func needTool(t testing.TB, name, from string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err == nil {
		return p
	}
	if testing.Short() {
		t.Skipf("%s not found on PATH (%s); skipped with -short", name, from)
	}
	t.Fatalf("%s not found on PATH: run the tests with make test, which provides it (%s)", name, from)
	return ""
}

// moduleRoot is the folder of the go.mod this package belongs to, found by
// walking up from the package's folder (where go test runs it).
func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for d := dir; ; d = filepath.Dir(d) {
		if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
			return d, nil
		}
		if filepath.Dir(d) == d {
			return "", fmt.Errorf("no go.mod in %s or any folder above it", dir)
		}
	}
}

// platformSrc is a description with short timings, so that healing takes
// seconds, and a hook that logs every spawn to SPAWNLOG.
func platformSrc(min, max int) string {
	return platformWith(min, max, "2s", "", true)
}

func platformWith(min, max int, grace, extra string, spawnHook bool) string {
	src := fmt.Sprintf(`cluster = "e2e"
policy {
  grace_period      = %q
  cooldown          = "1s"
  provision_timeout = "90s"
  resync_interval   = "2s"
}
machine "server" {
  min           = %d
  max           = %d
  consul_server = true
  backends      = ["local"]
}
`, grace, min, max) + extra
	if spawnHook {
		src += `hook "after_spawn" {
  command = ["/bin/sh", "-c", "cat >> \"$0\"; echo >> \"$0\"", "SPAWNLOG"]
}
`
	}
	return src
}

type testCluster struct {
	t        testing.TB
	bin      string // the binary rf runs, and so the machines; default binary
	dir      string
	spawnLog string
	clients  map[string]*api.Client
	// env is added to the environment of the commands rf runs.
	env []string
	// addrs (the hosts of their Consul, reached over HTTPS) and instances
	// find the machines when they are not local processes.
	addrs     func() []string
	instances func() (running []string, total int, err error)
	killer    func(id string)
	// viewFrom, when set, is the machine whose Consul view reads
	// (its members as that agent sees them); otherwise any that has a
	// leader.
	viewFrom string
}

// listInstances returns the machines the backend runs, sorted, and how many
// it holds in all.
func (c *testCluster) listInstances() ([]string, int, error) {
	if c.instances != nil {
		return c.instances()
	}
	var running []string
	ms := c.machines()
	for _, m := range ms {
		if m.Running {
			running = append(running, m.Config.MachineID)
		}
	}
	sort.Strings(running)
	return running, len(ms), nil
}

func newCluster(t testing.TB) *testCluster {
	t.Helper()
	if testing.Short() {
		t.Skip("end-to-end test (run without -short)")
	}
	dir := t.TempDir()
	c := &testCluster{t: t, dir: dir, spawnLog: filepath.Join(dir, "spawns.log")}
	t.Cleanup(func() {
		if t.Failed() {
			c.dumpLogs()
		}
		c.rf("down")
	})
	return c
}

func (c *testCluster) writePlatform(name, src string) string {
	c.t.Helper()
	p := filepath.Join(c.dir, name)
	if err := os.WriteFile(p, []byte(strings.ReplaceAll(src, "SPAWNLOG", c.spawnLog)), 0o644); err != nil {
		c.t.Fatal(err)
	}
	return p
}

// rf runs the binary against this cluster's folder.
func (c *testCluster) rf(args ...string) (string, string, int) {
	c.t.Helper()
	if len(args) > 0 && args[0] != "platform" && args[0] != "token" {
		args = append([]string{args[0], "--dir", c.dir}, args[1:]...)
	} else if len(args) > 1 {
		args = append([]string{args[0], args[1], "--dir", c.dir}, args[2:]...)
	}
	cmd := exec.Command(cmp.Or(c.bin, binary), args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.Env = append(append(os.Environ(), "CONSUL_HTTP_ADDR="), c.env...)
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		c.t.Fatalf("run %v: %v", args, err)
	}
	return stdout.String(), stderr.String(), code
}

// client returns a client of a machine whose Consul has a leader. Clients
// are kept per address: each api.Client has its own connection pool, and a
// new one per poll would exhaust Consul's per-client connection limit.
func (c *testCluster) client() *api.Client {
	c.t.Helper()
	if c.clients == nil {
		c.clients = map[string]*api.Client{}
	}
	var targets []consulclient.Target
	if c.addrs != nil {
		for _, h := range c.addrs() {
			targets = append(targets, consulclient.Target{Host: h})
		}
	} else {
		for _, m := range c.machines() {
			if m.Running {
				targets = append(targets, consulclient.Target{Host: m.Config.BindAddr, HTTPPort: m.Config.ConsulHTTPPort, HTTPSPort: m.Config.ConsulHTTPSPort})
			}
		}
	}
	for _, tg := range targets {
		key := fmt.Sprintf("%s:%d", tg.Host, tg.HTTPPort)
		cl := c.clients[key]
		if cl == nil {
			id := c.identity()
			tg.Token, tg.CACert = id.ManagementToken, id.CACert
			var err error
			if cl, err = consulclient.New(tg); err != nil {
				continue
			}
			c.clients[key] = cl
		}
		if l, err := cl.Status().Leader(); err == nil && l != "" {
			return cl
		}
	}
	return nil
}

// clientOf returns a client of machine id's own Consul, nil when it does
// not run or cannot be reached.
func (c *testCluster) clientOf(id string) *api.Client {
	c.t.Helper()
	for _, m := range c.machines() {
		if m.Config.MachineID != id || !m.Running {
			continue
		}
		key := fmt.Sprintf("%s:%d", m.Config.BindAddr, m.Config.ConsulHTTPPort)
		if cl := c.clients[key]; cl != nil {
			return cl
		}
		ident := c.identity()
		cl, err := consulclient.New(consulclient.Target{Host: m.Config.BindAddr, HTTPPort: m.Config.ConsulHTTPPort,
			HTTPSPort: m.Config.ConsulHTTPSPort, Token: ident.ManagementToken, CACert: ident.CACert})
		if err != nil {
			return nil
		}
		if c.clients == nil {
			c.clients = map[string]*api.Client{}
		}
		c.clients[key] = cl
		return cl
	}
	return nil
}

// token is the cluster's ACL token, which `up` keeps in the folder: what
// an operator's commands use.
func (c *testCluster) token() string { return c.identity().ManagementToken }

// identity is the cluster's credentials, which `up` keeps in the folder.
func (c *testCluster) identity() identity.Identity {
	id, err := identity.Read(c.dir)
	if err != nil {
		c.t.Fatalf("cluster identity: %v", err)
	}
	return id
}

func (c *testCluster) machines() []local.Machine {
	ms, err := local.Machines(c.dir)
	if err != nil {
		c.t.Fatal(err)
	}
	return ms
}

// view is what the three sources of truth say at one moment.
type view struct {
	leader    string
	records   map[string]reconcile.Record
	alive     []string // Consul members that are alive
	instances []string // machines the backend runs
	total     int      // machines the backend holds, running or not
	joined    []string // records in state joined
}

func (c *testCluster) view() (view, error) {
	v := view{}
	var err error
	if v.instances, v.total, err = c.listInstances(); err != nil {
		return v, err
	}
	var cl *api.Client
	if c.viewFrom != "" {
		cl = c.clientOf(c.viewFrom)
	} else {
		cl = c.client()
	}
	if cl == nil {
		return v, fmt.Errorf("no Consul answers")
	}
	recs, _, err := (&reconcile.Inventory{Store: kvschema.New(cl)}).List(context.Background(), nil)
	if err != nil {
		return v, err
	}
	v.records = recs
	for id, r := range recs {
		if r.State == reconcile.StateJoined {
			v.joined = append(v.joined, id)
		}
	}
	members, err := cl.Agent().Members(false)
	if err != nil {
		return v, err
	}
	for _, m := range members {
		if m.Status == 1 {
			v.alive = append(v.alive, m.Name)
		}
	}
	v.leader = kvschema.New(cl).Leader(context.Background())
	sort.Strings(v.alive)
	sort.Strings(v.instances)
	sort.Strings(v.joined)
	return v, nil
}

// agreeOn reports whether the inventory, Consul's members and the backend's
// machines name the same n machines, one to one, that the backend holds no
// other (stopped, orphaned) machine, and that there is a leader.
func (v view) agreeOn(n int) bool {
	return v.leader != "" && len(v.records) == n && len(v.joined) == n && v.total == n &&
		equal(v.joined, v.alive) && equal(v.joined, v.instances)
}

// has reports whether any of ids is recorded, alive or running.
func (v view) has(ids ...string) bool {
	for _, id := range ids {
		if _, ok := v.records[id]; ok || contains(v.alive, id) || contains(v.instances, id) {
			return true
		}
	}
	return false
}

func (v view) String() string {
	return fmt.Sprintf("leader=%q records=%d joined=%v alive=%v instances=%v", v.leader, len(v.records), v.joined, v.alive, v.instances)
}

func equal(a, b []string) bool {
	return strings.Join(a, ",") == strings.Join(b, ",")
}

// waitAgree waits until the cluster has n machines on which every source
// agrees, none of them in gone, and returns that view.
func (c *testCluster) waitAgree(n int, timeout time.Duration, why string, gone ...string) view {
	c.t.Helper()
	var last view
	var lastErr error
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		last, lastErr = c.view()
		if lastErr == nil && last.agreeOn(n) && !last.has(gone...) {
			return last
		}
		time.Sleep(200 * time.Millisecond)
	}
	c.t.Fatalf("%s: cluster did not settle on %d machines in %s: %v (error: %v)", why, n, timeout, last, lastErr)
	return last
}

func (c *testCluster) kill(id string) {
	c.t.Helper()
	if c.killer != nil {
		c.killer(id)
		return
	}
	c.killLocal(id)
}

// killLocal SIGKILLs a local machine's process group.
func (c *testCluster) killLocal(id string) {
	c.t.Helper()
	for _, m := range c.machines() {
		if m.Config.MachineID == id && m.Running {
			if err := syscall.Kill(-m.PID, syscall.SIGKILL); err != nil {
				c.t.Fatalf("kill %s: %v", id, err)
			}
			return
		}
	}
	c.t.Fatalf("no running machine %s", id)
}

// waitWaiting waits until the leader's status explains, among the reasons
// it waits, every one of wants.
func (c *testCluster) waitWaiting(timeout time.Duration, wants ...string) {
	c.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		out, _, _ := c.rf("status", "--json")
		var st struct {
			Reconcile *state.Status `json:"reconcile"`
		}
		_ = json.Unmarshal([]byte(out), &st)
		waiting := ""
		if st.Reconcile != nil {
			waiting = strings.Join(st.Reconcile.Waiting, "\n")
		}
		missing := false
		for _, w := range wants {
			missing = missing || !strings.Contains(waiting, w)
		}
		if !missing {
			return
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("status never said %q:\n%s", wants, out)
		}
		time.Sleep(300 * time.Millisecond)
	}
}

// spawns counts the after_spawn hook events logged. Hooks of parallel
// spawns append concurrently, so events are counted, not lines.
func (c *testCluster) spawns() int {
	b, _ := os.ReadFile(c.spawnLog)
	return strings.Count(string(b), `"event":"after_spawn"`)
}

// dumpLogs prints, for a failed test, the end of the logs of every local
// machine of the cluster, running or not.
func (c *testCluster) dumpLogs() {
	ms, err := local.Machines(c.dir)
	if err != nil {
		c.t.Logf("--- machines of %s: %v", c.dir, err)
		return
	}
	for _, m := range ms {
		dirs := []string{m.Dir}
		if d := m.Config.DataDir; d != "" && d != m.Dir {
			dirs = append(dirs, d)
		}
		dumpMachineDir(c.t, fmt.Sprintf("%s (running=%v, pid %d)", m.Config.MachineID, m.Running, m.PID), dirs...)
	}
}

func (c *testCluster) up(platformFile string) {
	c.t.Helper()
	out, errOut, code := c.rf("up", "--platform", platformFile, "--timeout", "3m")
	if code != 0 {
		c.t.Fatalf("up: exit %d\n%s\n%s", code, out, errOut)
	}
	if !strings.Contains(out, "NODE") {
		c.t.Errorf("up did not print the members:\n%s", out)
	}
}

// follower returns a joined machine that is not the leader.
func (v view) follower() string {
	for _, id := range v.joined {
		if id != v.leader {
			return id
		}
	}
	return ""
}

// killFollowerThenLeader kills a follower's machine, waits for the cluster
// to heal to its size, then does the same to the leader's machine.
func (c *testCluster) killFollowerThenLeader(v view) {
	c.t.Helper()
	n := len(v.joined)
	victim := v.follower()
	c.kill(victim)
	v = c.waitAgree(n, 2*time.Minute, "after killing follower "+victim, victim)

	// The leader's machine dies; another takes the lock and heals.
	old := v.leader
	c.kill(old)
	v = c.waitAgree(n, 2*time.Minute, "after killing leader "+old, old)
	if v.leader == old {
		c.t.Errorf("leader %s was killed but is still leader: %v", old, v)
	}
}

func TestSelfHealing(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	pgrep := needTool(t, "pgrep", "Debian's procps package; scripts/testdeps.sh installs it")
	c.up(c.writePlatform("platform.hcl", platformSrc(3, 3)))
	v := c.waitAgree(3, time.Minute, "after up")
	t.Logf("up: %v", v)

	// A follower dies.
	c.killFollowerThenLeader(v)

	// Nothing was spawned twice for one need: 2 to grow, 1 per death.
	time.Sleep(3 * time.Second) // a stray extra spawn would show by now
	if n := c.spawns(); n != 4 {
		t.Errorf("spawned %d machines, want 4 (2 to grow from the seed, 2 replacements)", n)
	}
	c.waitAgree(3, 30*time.Second, "at the end")

	// Every machine dies at once (the host rebooted): `up` re-creates the
	// cluster from the description the machines mirrored, not the default.
	// The leader goes first, so that nobody spawns replacements meanwhile.
	c.kill(c.waitAgree(3, time.Minute, "before the reboot").leader)
	for running := true; running; {
		running = false
		for _, m := range c.machines() {
			if m.Running {
				running = true
				_ = syscall.Kill(-m.PID, syscall.SIGKILL)
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	out, errOut, code := c.rf("up", "--timeout", "3m")
	if code != 0 || !strings.Contains(out, "re-creating the cluster from the description mirrored in") {
		t.Fatalf("up after losing every machine: exit %d\n%s%s", code, out, errOut)
	}
	c.waitAgree(3, time.Minute, "after re-creating")
	if out, _, _ := c.rf("platform", "get"); !strings.Contains(out, `cluster = "e2e"`) {
		t.Errorf("re-created cluster runs another description:\n%s", out)
	}

	// down leaves no process and no listening port behind.
	addrs := map[string]bool{}
	for _, m := range c.machines() {
		addrs[m.Config.BindAddr] = true
	}
	if out, errOut, code := c.rf("down"); code != 0 {
		t.Fatalf("down: exit %d: %s %s", code, out, errOut)
	}
	if ms := c.machines(); len(ms) != 0 {
		t.Errorf("machines left after down: %v", ms)
	}
	if l := listeners(t, addrs); len(l) > 0 {
		t.Errorf("listening after down: %v", l)
	}
	if out, _ := exec.Command(pgrep, "-f", c.dir).Output(); len(out) > 0 {
		t.Errorf("processes left after down: %s", out)
	}
}

func TestPlatformChanges(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	c.up(c.writePlatform("platform.hcl", platformSrc(3, 3)))
	c.waitAgree(3, time.Minute, "after up")

	// Grow to 5.
	if out, errOut, code := c.rf("platform", "apply", c.writePlatform("five.hcl", platformSrc(5, 5))); code != 0 {
		t.Fatalf("apply: exit %d: %s %s", code, out, errOut)
	}
	c.waitAgree(5, 2*time.Minute, "after applying min = 5")

	// A malformed description through the CLI is refused, naming file and line.
	bad := c.writePlatform("bad.hcl", "machine \"server\" {\n  min = 4\n  consul_server = true\n  colour = \"red\"\n}\n")
	_, errOut, code := c.rf("platform", "apply", bad)
	if code != 1 || !strings.Contains(errOut, "bad.hcl:4,3: Unsupported argument") || !strings.Contains(errOut, "bad.hcl:2,9: consul_server") {
		t.Errorf("apply of a bad description: exit %d, stderr:\n%s", code, errOut)
	}

	// A malformed description written straight into KV is rejected by
	// every agent, which keep their last good one.
	cl := c.client()
	if _, err := cl.KV().Put(&api.KVPair{Key: kvschema.Platform, Value: []byte("machine \"server\" {\n  min = \"many\"\n}\n")}, nil); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		rejected := 0
		for _, m := range c.machines() {
			if st, err := agentStatus(m.Config); err == nil && strings.Contains(st.PlatformError, kvschema.PlatformSource+":2,9") {
				rejected++
			}
		}
		if rejected == 5 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of 5 agents report the bad description", rejected)
		}
		time.Sleep(200 * time.Millisecond)
	}
	out, _, _ := c.rf("status")
	if !strings.Contains(out, "REJECTED") {
		t.Errorf("status does not report the rejected description:\n%s", out)
	}
	time.Sleep(5 * time.Second) // two resync intervals
	c.waitAgree(5, 10*time.Second, "with a bad description in KV")

	// Back to 3: servers leave one at a time.
	if out, errOut, code := c.rf("platform", "apply", c.writePlatform("three.hcl", platformSrc(3, 3))); code != 0 {
		t.Fatalf("apply: exit %d: %s %s", code, out, errOut)
	}
	c.waitAgree(3, 2*time.Minute, "after applying max = 3")
	peers, err := cl.Operator().RaftGetConfiguration(nil)
	if err != nil {
		// The client's own node may have been scaled down.
		peers, err = c.client().Operator().RaftGetConfiguration(nil)
	}
	if err != nil {
		t.Fatal(err)
	}
	if len(peers.Servers) != 3 {
		t.Errorf("raft has %d servers after scale-down, want 3", len(peers.Servers))
	}

	// The planner, asked from outside, agrees there is nothing to do.
	if out, errOut, code := c.rf("plan"); code != 0 || !strings.Contains(out, "no actions") {
		t.Errorf("plan at rest: exit %d\n%s%s", code, out, errOut)
	}

	// A machine spawned by hand is kept above max; destroying it by hand
	// brings the cluster back to its description.
	before := map[string]bool{}
	for _, m := range c.machines() {
		before[m.Config.MachineID] = true
	}
	if out, errOut, code := c.rf("spawn", "--type", "server"); code != 0 {
		t.Fatalf("spawn: exit %d: %s %s", code, out, errOut)
	}
	v := c.waitAgree(4, 2*time.Minute, "after spawning by hand")
	manual := ""
	for _, id := range v.joined {
		if !before[id] {
			manual = id
		}
	}
	if r := v.records[manual]; !r.Manual {
		t.Errorf("hand-spawned machine %q not recorded as manual: %+v", manual, r)
	}
	time.Sleep(5 * time.Second) // two resync intervals: it must not be scaled down
	c.waitAgree(4, 10*time.Second, "hand-spawned machine kept")
	if out, errOut, code := c.rf("destroy", manual); code != 0 {
		t.Fatalf("destroy: exit %d: %s %s", code, out, errOut)
	}
	c.waitAgree(3, time.Minute, "after destroying by hand")

	out, _, code = c.rf("members", "--json")
	var rows []struct {
		Status string `json:"status"`
		Leader bool   `json:"leader"`
	}
	if err := json.Unmarshal([]byte(out), &rows); err != nil || code != 0 {
		t.Fatalf("members --json: exit %d, %v:\n%s", code, err, out)
	}
	alive, leaders := 0, 0
	for _, r := range rows {
		if r.Status == "alive" {
			alive++
		}
		if r.Leader {
			leaders++
		}
	}
	if alive != 3 || leaders != 1 {
		t.Errorf("members --json: %d alive and %d leaders, want 3 and 1:\n%s", alive, leaders, out)
	}

	// Every member says what it can run: here, the local backend. The
	// machine destroyed by hand may still be listed as left until its
	// prune has gone round the gossip: it runs nothing, and is not
	// counted.
	deadline = time.Now().Add(30 * time.Second)
	for {
		out, _, _ = c.rf("members", "--json")
		var rows []struct {
			Name   string   `json:"name"`
			Status string   `json:"status"`
			Offers []string `json:"offers"`
		}
		_ = json.Unmarshal([]byte(out), &rows)
		members, offering := 0, 0
		for _, r := range rows {
			if r.Status == "left" {
				continue
			}
			members++
			if slices.Contains(r.Offers, "local") {
				offering++
			}
		}
		if members == 3 && offering == 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("members --json: %d of %d members offer the local backend, want every one:\n%s", offering, members, out)
			break
		}
		time.Sleep(time.Second)
	}
}

// agentStatus asks a machine's agent for its status over its HTTP API: on
// loopback (the local backend's machines) over plain HTTP, elsewhere over
// TLS with the certificate n.TLS holds.
func agentStatus(n nodeconfig.Config) (agentapi.AgentStatus, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var r agentapi.Reader
	if n.TLS != nil {
		r = agentapi.Reader{CACert: n.TLS.CACert, Cert: n.TLS.Cert, Key: n.TLS.Key}
	}
	return agentapi.FetchStatus(ctx, n.BindAddr, cmp.Or(n.HTTPPort, nodeconfig.AgentHTTPPort), cmp.Or(n.HTTPSPort, nodeconfig.AgentHTTPSPort), r)
}

// memberTLS is a certificate of the cluster's CA for the test itself, as
// a member's: what reads another machine's agent over TLS.
func (c *testCluster) memberTLS() *nodeconfig.TLS {
	c.t.Helper()
	id := c.identity()
	cert, err := id.CA().Issue("e2e-reader", false)
	if err != nil {
		c.t.Fatal(err)
	}
	return &nodeconfig.TLS{CACert: id.CACert, Cert: cert.CertPEM, Key: cert.KeyPEM}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// listeners returns the TCP listening sockets bound to any of addrs.
func listeners(t *testing.T, addrs map[string]bool) []string {
	t.Helper()
	b, err := os.ReadFile("/proc/net/tcp")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, line := range strings.Split(string(b), "\n")[1:] {
		f := strings.Fields(line)
		if len(f) < 4 || f[3] != "0A" { // 0A: LISTEN
			continue
		}
		var a, b2, c2, d uint8
		var port uint16
		fmt.Sscanf(f[1], "%2X%2X%2X%2X:%X", &d, &c2, &b2, &a, &port)
		ip := fmt.Sprintf("%d.%d.%d.%d", a, b2, c2, d)
		if addrs[ip] {
			out = append(out, fmt.Sprintf("%s:%d", ip, port))
		}
	}
	return out
}

// TestQuorumLossAndRecover kills two of three servers: the survivor's Consul
// has no leader, so there is no KV and no control loop, and the survivor's
// own status and metrics must say so, naming the servers it saw die. Then
// the operator recovers on it.
func TestQuorumLossAndRecover(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	src := quorumPlatform(3, "\n  recover_on_evidence = false")
	c.up(c.writePlatform("platform.hcl", src))
	v := c.waitAgree(3, 2*time.Minute, "after up")
	survivor, dead := v.joined[0], v.joined[1:]
	before, _, _ := c.rf("platform", "get")
	for _, id := range dead {
		c.kill(id)
	}
	var node nodeconfig.Config
	for _, m := range c.machines() {
		if m.Config.MachineID == survivor {
			node = m.Config
		}
	}
	deadline := time.Now().Add(time.Minute)
	for {
		st, err := agentStatus(node)
		failed := 0
		if err == nil && st.Quorum != nil {
			for _, s := range st.Quorum.Servers {
				if contains(dead, s.Name) && s.Status == state.MemberFailed {
					failed++
				}
			}
		}
		if err == nil && st.Quorum != nil && st.Quorum.Lost && failed == len(dead) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the survivor never reported lost quorum with %v failed: %+v (%v)", dead, st.Quorum, err)
		}
		time.Sleep(300 * time.Millisecond)
	}
	resp, err := http.Get(fmt.Sprintf("http://%s:%d/metrics", node.BindAddr, node.HTTPPort))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if !strings.Contains(string(body), "raptiformica_quorum_lost 1") {
		t.Errorf("metrics do not say raptiformica_quorum_lost 1")
	}
	// So does the status page, at once (no KV read to hang on), with the
	// failed servers.
	begin := time.Now()
	resp, err = http.Get(fmt.Sprintf("http://%s:%d/", node.BindAddr, node.HTTPPort))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ = io.ReadAll(resp.Body)
	page := pageText(string(body))
	if !strings.Contains(page, "Consul has lost quorum") || time.Since(begin) > 3*time.Second {
		t.Errorf("status page during lost quorum (in %s): %s", time.Since(begin), page)
	}
	for _, id := range dead {
		if !regexp.MustCompile(regexp.QuoteMeta(id) + ` [0-9.]+ failed server`).MatchString(page) {
			t.Errorf("status page does not show %s as a failed server: %s", id, page)
		}
	}

	// status says so too, from the survivor, with the dead servers.
	out, errOut, code := c.rf("status")
	if code == 0 || !strings.Contains(out, survivor+": QUORUM LOST") || !strings.Contains(out, "server "+dead[0]) {
		t.Errorf("status during lost quorum (exit %d):\n%s", code, out)
	}

	// The operator recovers on the survivor: the cluster is whole again,
	// with the same description, and the lost servers are gone.
	out, errOut, code = c.rf("recover", "--machine", survivor, "--yes")
	if code != 0 {
		t.Fatalf("recover: exit %d\n%s\n%s", code, out, errOut)
	}
	if !strings.Contains(out, "These servers are given up") || !strings.Contains(out, dead[0]) {
		t.Errorf("recover did not say what it would do:\n%s", out)
	}
	c.waitAgree(3, 2*time.Minute, "after recover", dead...)
	c.samePlatform(before)
}

// TestLastMachineStanding SIGKILLs four of five servers at once. The
// survivor has no quorum, asks the local backend, which confirms the four
// are dead, recovers alone, and the control loop brings the cluster back to
// five with the same description: no human step.
func TestLastMachineStanding(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	src := quorumPlatform(5, "")
	c.up(c.writePlatform("platform.hcl", src))
	v := c.waitAgree(5, 3*time.Minute, "after up")
	before, _, _ := c.rf("platform", "get")
	survivor, dead := v.joined[0], v.joined[1:]
	c.markConsulData(survivor)
	for _, id := range dead {
		c.kill(id)
	}
	v = c.waitAgree(5, 3*time.Minute, "after killing four of five servers", dead...)
	if !c.consulDataKept(survivor) {
		t.Errorf("the survivor's Consul data was not kept: it recovered on a fresh Consul")
	}
	if !contains(v.joined, survivor) {
		t.Errorf("the survivor %s is not in the recovered cluster: %v", survivor, v)
	}
	c.samePlatform(before)
}

// TestRecoverFromMirror loses the survivor's Consul data too: the cluster is
// re-created on a fresh Consul from the description and inventory the
// survivor mirrored to its disk.
func TestRecoverFromMirror(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	src := quorumPlatform(3, "")
	c.up(c.writePlatform("platform.hcl", src))
	v := c.waitAgree(3, 2*time.Minute, "after up")
	before, _, _ := c.rf("platform", "get")
	survivor, dead := v.joined[0], v.joined[1:]
	for _, id := range dead {
		c.kill(id)
	}
	for _, m := range c.machines() {
		if m.Config.MachineID == survivor {
			for _, f := range []string{"raft", "node-id"} {
				if err := os.RemoveAll(filepath.Join(m.Config.DataDir, "consul", f)); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	v = c.waitAgree(3, 3*time.Minute, "after losing two servers and the survivor's Consul data", dead...)
	if !contains(v.joined, survivor) {
		t.Errorf("the survivor %s is not in the re-created cluster: %v", survivor, v)
	}
	c.samePlatform(before)
}

// markConsulData leaves a file in a local machine's Consul data, which a
// recovery that keeps the data keeps, and one on a fresh Consul does not.
func (c *testCluster) markConsulData(id string) {
	c.t.Helper()
	if err := os.WriteFile(filepath.Join(c.machine(id).Config.DataDir, "consul", "e2e-marker"), nil, 0o600); err != nil {
		c.t.Fatal(err)
	}
}

// consulDataKept says whether markConsulData's file is still there.
func (c *testCluster) consulDataKept(id string) bool {
	c.t.Helper()
	_, err := os.Stat(filepath.Join(c.machine(id).Config.DataDir, "consul", "e2e-marker"))
	return err == nil
}

// TestTwoSurvivorsRecoverOnce SIGKILLs three of five servers: two survivors
// qualify, exactly one recovers (the same choice on both) and the other
// joins it, and the cluster is back to five.
func TestTwoSurvivorsRecoverOnce(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	src := quorumPlatform(5, "")
	c.up(c.writePlatform("platform.hcl", src))
	v := c.waitAgree(5, 3*time.Minute, "after up")
	survivors, dead := v.joined[:2], v.joined[2:]
	for _, id := range dead {
		c.kill(id)
	}
	v = c.waitAgree(5, 3*time.Minute, "after killing three of five servers", dead...)
	for _, id := range survivors {
		if !contains(v.joined, id) {
			t.Errorf("survivor %s is not in the recovered cluster: %v", id, v)
		}
	}
	recovered := 0
	for _, m := range c.machines() {
		if contains(survivors, m.Config.MachineID) {
			b, _ := os.ReadFile(filepath.Join(m.Dir, "agent.log"))
			if strings.Contains(string(b), "recovering on backend evidence") {
				recovered++
			}
		}
	}
	if recovered != 1 {
		t.Errorf("%d survivors recovered, want exactly one", recovered)
	}
}

// TestQuorumAServerCutOffKeepsItsVote stops a follower server (SIGSTOP,
// its agent and Consul) for longer than the failure detector and autopilot
// need, and less than the grace period: a partition, not a death. It stays
// in the Raft configuration all along, and when it runs again it is alive
// and a voter in every server's view, and no machine was replaced. With
// autopilot's cleanup of dead servers on, Consul took it out of Raft at
// its next pass and, back, some servers kept it "leaving" for good
// (hashicorp/consul#13379): the control loop replaced it after the grace
// period (TestDockerMajorityCutOff failed so, now and then).
func TestQuorumAServerCutOffKeepsItsVote(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	c.up(c.writePlatform("platform.hcl", platformWith(3, 3, "90s", "", false)))
	v := c.waitAgree(3, 2*time.Minute, "after up")
	victim := v.follower()
	id := c.identity()
	clients := map[string]*api.Client{}
	var pid int
	for _, m := range c.machines() {
		if m.Config.MachineID == victim {
			pid = m.PID
		}
		cl, err := consulclient.New(consulclient.Target{Host: m.Config.BindAddr, HTTPPort: m.Config.ConsulHTTPPort,
			HTTPSPort: m.Config.ConsulHTTPSPort, Token: id.ManagementToken, CACert: id.CACert, Timeout: 3 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		clients[m.Config.MachineID] = cl
	}
	if pid <= 0 {
		t.Fatalf("no running machine %s to stop", victim)
	}
	if err := syscall.Kill(-pid, syscall.SIGSTOP); err != nil {
		t.Fatalf("stop %s: %v", victim, err)
	}
	resumed := false
	resume := func() {
		if !resumed {
			resumed = true
			if err := syscall.Kill(-pid, syscall.SIGCONT); err != nil {
				t.Fatalf("resume %s: %v", victim, err)
			}
		}
	}
	defer resume()
	// Gossip has it failed within seconds; autopilot's pass comes every
	// 10 s. 25 s leaves it two passes after the failure detector.
	leader := clients[v.leader]
	failed := false
	for end := time.Now().Add(25 * time.Second); time.Now().Before(end); time.Sleep(500 * time.Millisecond) {
		alive, _ := memberState(leader, victim)
		failed = failed || !alive
		raft, err := leader.Operator().RaftGetConfiguration(nil)
		if err != nil {
			continue
		}
		in := false
		for _, s := range raft.Servers {
			in = in || s.ID == consulclient.NodeID(victim)
		}
		if !in {
			t.Fatalf("%s, stopped for seconds (its machine running), was taken out of the Raft configuration", victim)
		}
	}
	if !failed {
		t.Fatalf("the failure detector never had the stopped %s failed: the test stopped nothing", victim)
	}
	resume()
	for _, cl := range clients {
		if !poll(time.Minute, func() bool { alive, voter := memberState(cl, victim); return alive && voter }) {
			members, _ := cl.Agent().Members(false)
			var seen []string
			for _, m := range members {
				seen = append(seen, fmt.Sprintf("%s=%s", m.Name, reconcile.SerfStatus(m.Status)))
			}
			t.Errorf("%s is not an alive voter in a server's view after it ran again: %v", victim, seen)
		}
	}
	after := c.waitAgree(3, time.Minute, "after the stopped server ran again")
	if !equal(after.joined, v.joined) {
		t.Errorf("the machines changed: %v, were %v", after.joined, v.joined)
	}
}

// TestQuorumAHaltedLoopTakesDeadServersOutOfRaft: two of five servers die
// with max_unhealthy at 1, so the loop halts and reaps nothing. With
// autopilot's cleanup off, the two would stay Raft voters, and one more
// death would lose quorum; the loop takes them out of Raft once the grace
// period is over, and leaves their records for when it is no longer halted.
func TestQuorumAHaltedLoopTakesDeadServersOutOfRaft(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	src := strings.Replace(platformWith(5, 5, "3s", "", false), `resync_interval   = "2s"`, "resync_interval   = \"2s\"\n  max_unhealthy     = 1", 1)
	c.up(c.writePlatform("platform.hcl", src))
	v := c.waitAgree(5, 3*time.Minute, "after up")
	var dead []string
	for _, id := range v.joined {
		if id != v.leader && len(dead) < 2 {
			dead = append(dead, id)
		}
	}
	for _, id := range dead {
		c.kill(id)
	}
	var voters []string
	if !poll(2*time.Minute, func() bool {
		cfg, err := c.client().Operator().RaftGetConfiguration(nil)
		if err != nil {
			return false
		}
		voters = voters[:0]
		in := false
		for _, s := range cfg.Servers {
			voters = append(voters, s.Node)
			for _, id := range dead {
				in = in || s.ID == consulclient.NodeID(id)
			}
		}
		return !in
	}) {
		t.Fatalf("%v, dead and not reaped (the loop is halted), are still in Raft: %v", dead, voters)
	}
	v, err := c.view()
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range dead {
		if _, ok := v.records[id]; !ok {
			t.Errorf("%s was reaped while the loop was halted", id)
		}
	}
}

// quorumPlatform is a description of n servers whose nodes declare lost
// quorum after 3 s, with extra policy lines.
func quorumPlatform(n int, extraPolicy string) string {
	return strings.Replace(platformWith(n, n, "2s", "", false), `resync_interval   = "2s"`, "resync_interval   = \"2s\"\n  quorum_lost_after = \"3s\""+extraPolicy, 1)
}

// samePlatform checks that the stored description is still before.
func (c *testCluster) samePlatform(before string) {
	c.t.Helper()
	if after, _, _ := c.rf("platform", "get"); after != before || before == "" {
		c.t.Errorf("the description changed through recovery:\n%s\nwas\n%s", after, before)
	}
}
