package e2e

// End-to-end tests of `raptiformica rotate`: the cluster's shared secrets
// replaced on a live cluster, which must lose no member meanwhile, refuse
// the old secret afterwards, and take machines made afterwards.

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/raptiformica/raptiformica/backends/local"
	"github.com/raptiformica/raptiformica/internal/identity"
	"github.com/raptiformica/raptiformica/internal/kvschema"
	"github.com/raptiformica/raptiformica/internal/nodeconfig"
	"github.com/raptiformica/raptiformica/internal/testconsul"
	"github.com/raptiformica/raptiformica/mesh"
)

// watchAlive polls the members through cl until the returned stop is
// called, which returns every look at which one of ids was not alive.
func watchAlive(cl *api.Client, ids []string) (stop func() []string) {
	done := make(chan struct{})
	var mu sync.Mutex
	var seen []string
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			if members, err := cl.Agent().Members(false); err == nil {
				status := map[string]int{}
				for _, m := range members {
					status[m.Name] = m.Status
				}
				for _, id := range ids {
					if status[id] != 1 {
						mu.Lock()
						seen = append(seen, fmt.Sprintf("%s: %s has status %d", time.Now().Format("15:04:05.000"), id, status[id]))
						mu.Unlock()
					}
				}
			}
			select {
			case <-done:
				return
			case <-time.After(300 * time.Millisecond):
			}
		}
	}()
	return func() []string {
		close(done)
		wg.Wait()
		return seen
	}
}

// gossipKey is the key the cluster gives new machines.
func (c *testCluster) gossipKey() string {
	c.t.Helper()
	key, err := kvschema.New(c.client()).GossipKey(context.Background())
	if err != nil || key == "" {
		c.t.Fatalf("gossip key in KV: %q, %v", key, err)
	}
	return key
}

// keyrings returns the keys every member's keyring holds, by how many
// members hold each, and how many members there are.
func (c *testCluster) keyrings() (map[string]int, int) {
	c.t.Helper()
	rings, err := c.client().Operator().KeyringList(nil)
	if err != nil {
		c.t.Fatal(err)
	}
	for _, r := range rings {
		if !r.WAN {
			return r.Keys, r.NumNodes
		}
	}
	c.t.Fatal("no LAN keyring listed")
	return nil, 0
}

// strangerJoins starts a Consul agent beside the cluster, with key as its
// gossip key and a member to join, and reports whether the cluster sees it
// alive within wait. The agent is stopped and its member entry pruned.
func (c *testCluster) strangerJoins(name, key, member string, wait time.Duration) bool {
	c.t.Helper()
	bin, err := nodeconfig.FindConsul()
	if err != nil {
		c.t.Fatal(err)
	}
	ip, dir := testconsul.FreeIP(), c.t.TempDir()
	cmd := exec.Command(bin, "agent", "-node", name, "-bind", ip, "-client", ip, "-data-dir", dir, "-encrypt", key,
		"-retry-join", member, "-retry-interval", "1s", "-dns-port", "-1", "-grpc-port", "-1", "-serf-wan-port", "-1", "-log-level", "warn")
	logf, err := os.Create(filepath.Join(dir, "consul.log"))
	if err != nil {
		c.t.Fatal(err)
	}
	defer logf.Close()
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		c.t.Fatal(err)
	}
	defer func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		_ = c.client().Agent().ForceLeavePrune(name)
	}()
	for end := time.Now().Add(wait); time.Now().Before(end); time.Sleep(500 * time.Millisecond) {
		members, err := c.client().Agent().Members(false)
		if err != nil {
			continue
		}
		for _, m := range members {
			if m.Name == name && m.Status == 1 {
				return true
			}
		}
	}
	return false
}

// restartLocal stops a local machine's processes at once and starts its
// agent again on the same folder, as a reboot would: what it kept on disk
// is all it comes back with.
func (c *testCluster) restartLocal(id string) {
	c.t.Helper()
	c.killLocal(id)
	mdir := filepath.Join(c.dir, "machines", id)
	// Until the old Consul has exited, its ports are taken.
	for end := time.Now().Add(10 * time.Second); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
		if m := c.machine(id); !m.Running {
			break
		}
	}
	logf, err := os.OpenFile(filepath.Join(mdir, "agent.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		c.t.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.Command(binary, "agent", "-config", filepath.Join(mdir, "agent.json"))
	cmd.Dir, cmd.Stdout, cmd.Stderr = mdir, logf, logf
	cmd.Env = append(os.Environ(), "RAPTIFORMICA_MACHINE_DIR="+mdir)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		c.t.Fatal(err)
	}
	go func() { _ = cmd.Wait() }()
	if err := os.WriteFile(filepath.Join(mdir, "pid"), []byte(strconv.Itoa(cmd.Process.Pid)+"\n"), 0o644); err != nil {
		c.t.Fatal(err)
	}
}

// machine returns a local machine by ID.
func (c *testCluster) machine(id string) local.Machine {
	c.t.Helper()
	for _, m := range c.machines() {
		if m.Config.MachineID == id {
			return m
		}
	}
	c.t.Fatalf("no machine %s", id)
	return local.Machine{}
}

// TestSecureRotateGossip: `rotate gossip` on a live local cluster loses no
// member, leaves every member with the new key only, and gives it to new
// machines (KV) and to `up` (the folder's identity). Afterwards a Consul
// agent with the old key cannot join, while one with the new key does; a
// member restarted on its data folder comes back with the new key though
// its node config still names the old one; a machine spawned afterwards
// joins.
func TestSecureRotateGossip(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	// A long grace period: the member the test restarts is not replaced
	// meanwhile.
	c.up(c.writePlatform("platform.hcl", platformWith(3, 3, "2m", "", false)))
	v := c.waitAgree(3, 2*time.Minute, "after up")
	old := c.gossipKey()

	stop := watchAlive(c.client(), v.joined)
	begin := time.Now()
	out, errOut, code := c.rf("rotate", "gossip")
	took := time.Since(begin)
	if lost := stop(); len(lost) > 0 {
		t.Errorf("members were not alive during the rotation:\n%s", strings.Join(lost, "\n"))
	}
	if code != 0 {
		t.Fatalf("rotate gossip: exit %d\n%s%s", code, out, errOut)
	}
	t.Logf("rotate gossip took %s:\n%s", took.Round(time.Millisecond), out)
	key := c.gossipKey()
	if key == old {
		t.Fatal("the key in KV did not change")
	}
	if keys, n := c.keyrings(); len(keys) != 1 || keys[key] != 3 || n != 3 {
		t.Errorf("keyrings after the rotation: %v on %d members; want the new key on all 3, alone", keys, n)
	}
	if id, err := identity.Read(c.dir); err != nil || id.GossipKey != key {
		t.Errorf("the folder's identity: gossip key %q, %v; want the new key", id.GossipKey, err)
	}
	c.waitAgree(3, 10*time.Second, "after the rotation")

	// The old key no longer works; the new one does (the same check,
	// which can fail).
	member := c.machine(v.joined[0]).Config.BindAddr
	if c.strangerJoins("stranger-old-key", old, member, 15*time.Second) {
		t.Error("a Consul agent with the old gossip key joined the cluster")
	}
	if !c.strangerJoins("stranger-new-key", key, member, 30*time.Second) {
		t.Error("a Consul agent with the new gossip key did not join: the check of the old key proves nothing")
	}

	// A member restarted on its data folder: its node config (and so the
	// Consul config the agent writes) names the old key; Consul's keyring
	// wins.
	victim := v.follower()
	c.restartLocal(victim)
	if v := c.waitAgree(3, 2*time.Minute, "after restarting "+victim); !slices.Contains(v.joined, victim) {
		t.Fatalf("the restarted member %s is not back (replaced instead): %v", victim, v)
	}
	if cfg, err := os.ReadFile(filepath.Join(c.machine(victim).Config.DataDir, "consul.json")); err != nil || !strings.Contains(string(cfg), old) {
		t.Errorf("the restarted member's Consul config should still name the old key (the point of the check): %v", err)
	}

	// A machine spawned after the rotation is given the new key and joins.
	if out, errOut, code := c.rf("spawn", "--type", "server"); code != 0 {
		t.Fatalf("spawn: exit %d: %s %s", code, out, errOut)
	}
	c.waitAgree(4, 2*time.Minute, "a machine spawned after the rotation")
	if keys, n := c.keyrings(); len(keys) != 1 || keys[key] != 4 || n != 4 {
		t.Errorf("keyrings with the new machine: %v on %d members; want the new key on all 4, alone", keys, n)
	}
}

// TestSecureRotateGossipThenRecoverFromMirror: after a rotation, the
// cluster loses quorum and its survivor's Consul data: the survivor comes
// back on a fresh Consul (the one wipe the agent makes) with the rotated
// key, not its node config's, re-seeds KV with it, and the machines the
// control loop spawns to replace the lost ones join with it.
func TestSecureRotateGossipThenRecoverFromMirror(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	c.up(c.writePlatform("platform.hcl", quorumPlatform(3, "")))
	v := c.waitAgree(3, 2*time.Minute, "after up")
	old := c.gossipKey()
	if out, errOut, code := c.rf("rotate", "gossip"); code != 0 {
		t.Fatalf("rotate gossip: exit %d\n%s%s", code, out, errOut)
	}
	key := c.gossipKey()

	survivor, dead := v.joined[0], v.joined[1:]
	for _, id := range dead {
		c.kill(id)
	}
	for _, f := range []string{"raft", "node-id"} {
		if err := os.RemoveAll(filepath.Join(c.machine(survivor).Config.DataDir, "consul", f)); err != nil {
			t.Fatal(err)
		}
	}
	v = c.waitAgree(3, 3*time.Minute, "after losing two servers and the survivor's Consul data", dead...)
	if !slices.Contains(v.joined, survivor) {
		t.Errorf("the survivor %s is not in the re-created cluster: %v", survivor, v)
	}
	if got := c.gossipKey(); got != key {
		t.Errorf("gossip key re-seeded into KV: %q, want the rotated one (the old one was %q)", got, old)
	}
	if keys, n := c.keyrings(); len(keys) != 1 || keys[key] != 3 || n != 3 {
		t.Errorf("keyrings after the recovery: %v on %d members; want the rotated key on all 3, alone", keys, n)
	}
}

// meshEntry is what a member publishes of the secrets it runs with.
type meshEntry struct {
	ListenSecret string   `json:"listen_secret"`
	DialSecrets  []string `json:"dial_secrets"`
}

// meshEntries reads every member's mesh entry.
func (c *testCluster) meshEntries() map[string]meshEntry {
	c.t.Helper()
	pairs, _, err := c.client().KV().List(kvschema.MeshNodes, nil)
	if err != nil {
		c.t.Fatal(err)
	}
	out := map[string]meshEntry{}
	for _, p := range pairs {
		var e meshEntry
		if err := json.Unmarshal(p.Value, &e); err != nil {
			c.t.Fatalf("%s: %v", p.Key, err)
		}
		out[strings.TrimPrefix(p.Key, kvschema.MeshNodes)] = e
	}
	return out
}

// TestSecureRotateMesh: A and B share a network, B and C another, so that
// C's links all go through B; a laptop joined by hand with the cluster's
// secret is a member too. `rotate mesh` loses no member, and every member
// runs on the new secret alone; A still reaches C across B. The laptop
// restarted comes back on the new secret, though its node config holds the
// old one; a machine spawned afterwards joins; a machine with the old
// secret is refused, one with the new secret joins.
func TestSecureRotateMesh(t *testing.T) {
	t.Parallel()
	l := newMeshLab(t, "lan", "far")
	hosts := []meshHost{{name: "a", nets: []string{"lan"}, server: true}, {name: "b", nets: []string{"lan", "far"}}, {name: "c", nets: []string{"far"}}}
	platform := func(hosts ...meshHost) string {
		return l.platform("yggdrasil", "2m", hosts...) + "machine \"laptop\" {\n  min      = 0\n  max      = 3\n  backends = [\"a\"]\n}\n"
	}
	l.up(platform(hosts...))
	l.waitAgree(3, 4*time.Minute, "three machines over the mesh")
	a, cID := l.machine("a").ID, l.machine("c").ID
	aIP := l.ipOn(a, "lan")
	old, _, code := l.rf("mesh", "--secret")
	if code != 0 {
		t.Fatal("mesh --secret failed")
	}
	old = strings.TrimSpace(old)
	laptop := l.handMachine("laptop-restarted", old, 9651)
	if out, ok := inside(t, laptop, "join", aIP, "--timeout", "60s"); !ok {
		t.Fatalf("join the laptop: %s", out)
	}
	l.waitMember(laptop)
	v, err := l.view()
	if err != nil || len(v.joined) != 4 {
		t.Fatalf("before the rotation: %v, %v; want four members", v, err)
	}

	stop := watchAlive(l.client(), v.joined)
	begin := time.Now()
	out, errOut, code := l.rf("rotate", "mesh", "--timeout", "3m")
	took := time.Since(begin)
	if lost := stop(); len(lost) > 0 {
		t.Errorf("members were not alive during the rotation:\n%s", strings.Join(lost, "\n"))
	}
	if code != 0 {
		t.Fatalf("rotate mesh: exit %d\n%s%s", code, out, errOut)
	}
	t.Logf("rotate mesh took %s:\n%s", took.Round(time.Millisecond), out)
	secret, _, _ := l.rf("mesh", "--secret")
	secret = strings.TrimSpace(secret)
	if secret == old || len(secret) != mesh.SecretLen {
		t.Fatalf("mesh secret after the rotation: %q (was %q)", secret, old)
	}
	entries := l.meshEntries()
	for _, id := range v.joined {
		if e := entries[id]; e.ListenSecret != mesh.Fingerprint(secret) || len(e.DialSecrets) != 0 {
			t.Errorf("%s runs on %q and dials with %v, want the new secret (%s) alone", id, e.ListenSecret, e.DialSecrets, mesh.Fingerprint(secret))
		}
	}
	if out, ok := reaches(t, a, "["+l.overlayOf(cID)+"]:9551"); !ok {
		t.Errorf("A does not reach C across B after the rotation:\n%s", out)
	}

	// The laptop restarted: its node config holds the old secret, which
	// no member accepts any longer; it comes back with what it kept.
	dockerRun(t, "restart", laptop)
	waitOutput(t, laptop, "up     out", "mesh")
	l.waitMember(laptop)

	// A machine spawned after the rotation, on the far network: it reaches
	// the server through B.
	l.apply(platform(append(hosts, meshHost{name: "d", nets: []string{"far"}})...))
	var d string
	for end := time.Now().Add(2 * time.Minute); d == ""; time.Sleep(time.Second) {
		if recs := l.recordsOf("d"); len(recs) == 1 {
			d = recs[0].ID
		} else if time.Now().After(end) {
			t.Fatal("D was never spawned")
		}
	}
	l.waitMember(d)

	// The old secret is refused; the new one links.
	z := l.handMachine("laptop-old-secret", old, 9651)
	if out, ok := inside(t, z, "join", aIP, "--timeout", "20s"); ok || !strings.Contains(out, "password does not match") {
		t.Errorf("join with the old secret: ok=%v, want refused for the secret:\n%s", ok, out)
	}
	y := l.handMachine("laptop-new-secret", secret, 9651)
	if out, ok := inside(t, y, "join", aIP, "--timeout", "60s"); !ok || !strings.Contains(out, "link up") {
		t.Errorf("join with the new secret: ok=%v:\n%s", ok, out)
	}
	l.waitMember(y)
}
