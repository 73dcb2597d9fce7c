package e2e

// End-to-end tests of the overlay mesh on real containers, each on Docker
// networks of its own: the engine isolates networks from each other, so a
// container reaches only the containers that share one of its networks.
// A machine "between" two networks is a container attached to both.

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"

	"github.com/raptiformica/raptiformica/backends/docker"
	"github.com/raptiformica/raptiformica/internal/kvschema"
	"github.com/raptiformica/raptiformica/internal/nodeconfig"
	"github.com/raptiformica/raptiformica/reconcile"
)

// meshLab is a docker cluster whose machines sit on networks made for it.
type meshLab struct {
	*dockerCluster
	nets map[string]string // short name ("ab") -> network name
}

// meshHost is one machine type of a lab: its networks, first the one its
// address is on, and whether it is the Consul server.
type meshHost struct {
	name   string
	nets   []string
	server bool
}

func newMeshLab(t testing.TB, nets ...string) *meshLab {
	t.Helper()
	l := &meshLab{dockerCluster: newDockerCluster(t), nets: map[string]string{}}
	l.testCluster.addrs = l.consulAddresses
	for _, n := range nets {
		name := l.name + "-" + n
		// A subnet of its own; another test may hold the one drawn first.
		for attempt := 1; ; attempt++ {
			subnet := fmt.Sprintf("10.217.%d.0/24", rand.IntN(250))
			out, err := exec.Command("docker", "network", "create", "--subnet", subnet, "--label", docker.LabelCluster+"="+l.name, name).CombinedOutput()
			if err == nil {
				break
			}
			if attempt == 5 {
				t.Fatalf("docker network create %s: %v\n%s", subnet, err, out)
			}
		}
		l.nets[n] = name
	}
	t.Cleanup(func() {
		// The networks go after the containers, which the cluster's own
		// clean-up removes later: remove them here first.
		if t.Failed() {
			l.dumpContainerLogs()
			// And the machines the test made by hand.
			dumpContainers(t, "label=raptiformica.test="+l.name)
		}
		for _, id := range l.extraContainers() {
			_ = exec.Command("docker", "rm", "-f", id).Run()
		}
		if _, err := l.be.RemoveAll(context.Background()); err != nil {
			t.Errorf("remove the cluster: %v", err)
		}
		// They carry the cluster's label, so RemoveAll took them: check.
		for _, name := range l.nets {
			if exec.Command("docker", "network", "inspect", name).Run() == nil {
				t.Errorf("network %s is still there after the cluster was removed", name)
				_ = exec.Command("docker", "network", "rm", name).Run()
			}
		}
	})
	return l
}

// platform is a description with one machine type per host, each on a
// docker backend attached to the host's networks.
func (l *meshLab) platform(mode, grace string, hosts ...meshHost) string {
	var b strings.Builder
	fmt.Fprintf(&b, `cluster = %q
mesh    = %q
policy {
  grace_period      = %q
  cooldown          = "1s"
  provision_timeout = "2m"
  resync_interval   = "2s"
  backoff_initial   = "2s"
  backoff_max       = "10s"
  max_unhealthy     = 3
  # All at once: a machine whose only neighbour is not spawned yet cannot
  # join, and one spawned at a time, an end of the chain could wait for a
  # neighbour queued behind it.
  max_concurrent_spawns = 4
}
`, l.name, mode, grace)
	for _, h := range hosts {
		var nets []string
		for _, n := range h.nets {
			nets = append(nets, l.nets[n])
		}
		// The servers' containers get the engine's socket: the seed spawns
		// the others.
		fmt.Fprintf(&b, "backend %q {\n  type     = \"docker\"\n  settings = { network = %q, share_socket = \"servers\" }\n}\n", h.name, strings.Join(nets, ","))
		fmt.Fprintf(&b, "machine %q {\n  min           = 1\n  consul_server = %v\n  backends      = [%q]\n}\n", h.name, h.server, h.name)
	}
	return b.String()
}

// consulAddresses are the Consul hosts of the lab's containers, on
// every network they are on (the test runs on the host, which reaches all).
func (l *meshLab) consulAddresses() []string {
	list, err := l.be.Client().ContainerList(context.Background(), container.ListOptions{
		Filters: filters.NewArgs(filters.Arg("label", docker.LabelCluster+"="+l.name))})
	if err != nil {
		return nil
	}
	var out []string
	for _, c := range list {
		if c.State != "running" || c.NetworkSettings == nil {
			continue
		}
		for _, ep := range c.NetworkSettings.Networks {
			if ep.IPAddress != "" {
				out = append(out, ep.IPAddress)
			}
		}
	}
	sort.Strings(out)
	return out
}

// extraContainers are containers the test started itself (not through a
// backend), labelled with the lab's test label.
func (l *meshLab) extraContainers() []string {
	out, _ := exec.Command("docker", "ps", "-aq", "--filter", "label=raptiformica.test="+l.name).Output()
	return strings.Fields(string(out))
}

// machine returns the one machine of type typ.
func (l *meshLab) machine(typ string) reconcile.Record {
	l.t.Helper()
	recs := l.recordsOf(typ)
	if len(recs) != 1 {
		l.t.Fatalf("machine type %s: %d records, want 1", typ, len(recs))
	}
	return recs[0]
}

// ipOn returns a container's address on one of the lab's networks.
func (l *meshLab) ipOn(id, net string) string {
	l.t.Helper()
	out := dockerRun(l.t, "inspect", "-f", fmt.Sprintf("{{(index .NetworkSettings.Networks %q).IPAddress}}", l.nets[net]), id)
	if out == "" {
		l.t.Fatalf("container %s has no address on %s", id, net)
	}
	return out
}

// inside runs the raptiformica CLI in a container and returns its output
// and whether it succeeded.
func inside(t testing.TB, id string, args ...string) (string, bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "docker", append([]string{"exec", id, "/usr/local/bin/raptiformica"}, args...)...).CombinedOutput()
	return string(out), err == nil
}

// overlayOf is a member's address as Consul knows it: on the mesh, its
// overlay address.
func (l *meshLab) overlayOf(id string) string {
	l.t.Helper()
	members, err := l.client().Agent().Members(false)
	if err != nil {
		l.t.Fatal(err)
	}
	for _, m := range members {
		if m.Name == id {
			return m.Addr
		}
	}
	l.t.Fatalf("%s is not a member", id)
	return ""
}

// reaches reports whether the agent in container from answers an agent at
// addr (host:port) within a few seconds, and what it printed.
func reaches(t testing.TB, from, addr string) (string, bool) {
	t.Helper()
	return inside(t, from, "mesh", "--agent", addr, "--timeout", "5s")
}

// TestMeshBridgesTwoNetworks: A and B share one network, B and C another;
// A and C have no route to each other. Over the mesh, the three form one
// cluster and A reaches C's agent at its overlay address, while C's own
// address stays out of A's reach.
func TestMeshBridgesTwoNetworks(t *testing.T) {
	t.Parallel()
	l := newMeshLab(t, "ab", "bc")
	l.up(l.platform("yggdrasil", "30s",
		meshHost{name: "a", nets: []string{"ab"}, server: true},
		meshHost{name: "b", nets: []string{"ab", "bc"}},
		meshHost{name: "c", nets: []string{"bc"}}))
	l.waitAgree(3, 4*time.Minute, "three machines over the mesh")
	a, c := l.machine("a").ID, l.machine("c").ID

	cOverlay := l.overlayOf(c)
	out, ok := reaches(t, a, "["+cOverlay+"]:9551")
	if !ok || !strings.Contains(out, "machine "+c+": overlay "+cOverlay) {
		t.Fatalf("A asking C's agent over the overlay (%s): ok=%v\n%s", cOverlay, ok, out)
	}
	if out, ok := reaches(t, a, l.ipOn(c, "bc")+":9551"); ok {
		t.Fatalf("A reached C at its own address, which the test needs unreachable:\n%s", out)
	}
	// A has no link to C: the path is through B.
	out, _ = inside(t, a, "mesh")
	if strings.Contains(out, cOverlay) {
		t.Fatalf("A has a direct link to C:\n%s", out)
	}
	t.Logf("A's mesh:\n%s", out)

	// The mode is the cluster's from its creation: a description without
	// the mesh could add no machine to it, so it is refused.
	next := l.writePlatform("none.hcl", l.platform("none", "30s", meshHost{name: "a", nets: []string{"ab"}, server: true}))
	if out, errOut, code := l.rf("platform", "apply", next); code != 1 || !strings.Contains(errOut, "none.hcl: mesh: the cluster runs the overlay mesh") {
		t.Fatalf("apply mesh = none to a mesh cluster: exit %d, want 1 naming the file and field\n%s%s", code, out, errOut)
	}
}

// TestMeshNoneCannotBridge is the same three machines without the mesh: C
// cannot reach the server, so it never joins, and A cannot reach C.
func TestMeshNoneCannotBridge(t *testing.T) {
	t.Parallel()
	l := newMeshLab(t, "ab", "bc")
	hosts := []meshHost{{name: "a", nets: []string{"ab"}, server: true}, {name: "b", nets: []string{"ab", "bc"}}}
	l.up(l.platform("none", "30s", hosts...))
	l.waitAgree(2, 3*time.Minute, "A and B without the mesh")
	next := l.writePlatform("mesh.hcl", l.platform("yggdrasil", "30s", hosts...))
	if out, errOut, code := l.rf("platform", "apply", next); code != 1 || !strings.Contains(errOut, "mesh.hcl: mesh: the cluster runs without the mesh") {
		t.Fatalf("apply mesh = yggdrasil to a cluster without it: exit %d, want 1 naming the file and field\n%s%s", code, out, errOut)
	}
	l.apply(l.platform("none", "30s", append(hosts, meshHost{name: "c", nets: []string{"bc"}})...))

	var c string
	deadline := time.Now().Add(2 * time.Minute)
	for c == "" {
		if time.Now().After(deadline) {
			t.Fatal("C was never spawned")
		}
		if recs := l.recordsOf("c"); len(recs) == 1 {
			if running, _, _ := l.containers(); contains(running, recs[0].ID) {
				c = recs[0].ID
			}
		}
		time.Sleep(500 * time.Millisecond)
	}
	a := l.machine("a").ID
	// C runs for 40 s and is never a member: it has no route to the server.
	for end := time.Now().Add(40 * time.Second); time.Now().Before(end); time.Sleep(2 * time.Second) {
		v, err := l.view()
		if err != nil {
			t.Fatal(err)
		}
		if contains(v.alive, c) {
			t.Fatalf("C joined without the mesh: %v", v)
		}
	}
	if out, ok := reaches(t, a, l.ipOn(c, "bc")+":9551"); ok || !strings.Contains(out, "deadline exceeded") {
		t.Fatalf("A asking C's agent at C's address: ok=%v, want no answer:\n%s", ok, out)
	}
}

func (l *meshLab) apply(src string) {
	l.t.Helper()
	out, errOut, code := l.rf("platform", "apply", l.writePlatform("next.hcl", src))
	if code != 0 {
		l.t.Fatalf("platform apply: exit %d\n%s\n%s", code, out, errOut)
	}
}

// TestMeshChainHealsItsMiddle: four hosts in a chain, each reaching only
// its neighbours, form one cluster. Killing a middle host cuts the chain;
// the leader (on the server's side) replaces it, and the new machine,
// attached to the same two networks, restores the path: the machine cut off
// behind it is back in the cluster, not replaced.
func TestMeshChainHealsItsMiddle(t *testing.T) {
	t.Parallel()
	l := newMeshLab(t, "ab", "bc", "cd")
	l.up(l.platform("yggdrasil", "90s",
		meshHost{name: "a", nets: []string{"ab"}},
		meshHost{name: "b", nets: []string{"ab", "bc"}},
		meshHost{name: "c", nets: []string{"bc", "cd"}},
		meshHost{name: "d", nets: []string{"cd"}, server: true}))
	l.waitAgree(4, 5*time.Minute, "a chain of four over the mesh")
	a, b, d := l.machine("a").ID, l.machine("b").ID, l.machine("d").ID

	dOverlay := l.overlayOf(d)
	l.kill(b)
	killed := time.Now()
	// A is cut off until the replacement links to it: its Consul is seen
	// failed meanwhile, so the cluster agrees only once A is back.
	var out string
	for ok := false; !ok; {
		if time.Since(killed) > 3*time.Minute {
			t.Fatalf("A never reached D over a restored path:\n%s", out)
		}
		out, ok = reaches(t, a, "["+dOverlay+"]:9551")
	}
	t.Logf("A reached D again %s after the middle of the chain was killed", time.Since(killed).Round(time.Second))
	v := l.waitAgree(4, 3*time.Minute, "after the middle of the chain died", b)
	t.Logf("the cluster agreed on four machines again after %s", time.Since(killed).Round(time.Second))
	if _, ok := v.records[a]; !ok {
		t.Fatalf("A, cut off behind the dead machine, was replaced rather than reconnected: %v", v)
	}
	if !contains(v.alive, a) {
		t.Fatalf("A is not alive: %v", v)
	}
}

// TestMeshJoinByHand: machines started outside the control loop join by
// hand. One only dials out (it accepts no links): it says it has no peer,
// then joins through the member it dials. Another is dialled by a member
// told to (the original's inject). A third, with a secret not the
// cluster's, cannot peer and says why.
func TestMeshJoinByHand(t *testing.T) {
	t.Parallel()
	l := newMeshLab(t, "lan")
	l.up(l.platform("yggdrasil", "30s", meshHost{name: "s", nets: []string{"lan"}, server: true}) + `machine "laptop" {
  min      = 0
  max      = 3
  backends = ["s"]
}
`)
	l.waitAgree(1, 3*time.Minute, "the seed")
	s := l.machine("s").ID
	sIP := l.ipOn(s, "lan")
	secret, errOut, code := l.rf("mesh", "--secret")
	if code != 0 {
		t.Fatalf("mesh --secret: exit %d: %s", code, errOut)
	}
	secret = strings.TrimSpace(secret)
	if len(secret) != 64 {
		t.Fatalf("mesh --secret printed %q, want the 64-character secret", secret)
	}

	// A machine that only dials out.
	x := l.handMachine("laptop-dialonly", secret, 0)
	waitOutput(t, x, "no mesh peer: this node is dial-only", "mesh")
	waitOutput(t, x, "this machine: no mesh peer: this node is dial-only", "status")
	if out, ok := inside(t, x, "join", sIP); !ok || !strings.Contains(out, "link up to "+sIP+":9651") {
		t.Fatalf("join from the dial-only machine: ok=%v\n%s", ok, out)
	}
	l.waitMember("laptop-dialonly")

	// Restarted, it finds the mesh again without help (the member it was
	// told to dial is in its mirror), at the same overlay address (its key
	// is kept).
	before := l.overlayOf("laptop-dialonly")
	dockerRun(t, "restart", x)
	waitOutput(t, x, "up     out", "mesh")
	l.waitMember("laptop-dialonly")
	if after := l.overlayOf("laptop-dialonly"); after != before {
		t.Fatalf("overlay address after a restart %s, want %s", after, before)
	}

	// A machine a member is told to dial.
	y := l.handMachine("laptop-dialled", secret, 9651)
	// From the operator's host: the cluster's token is in its folder.
	if out, err := exec.Command(binary, "join", l.ipOn(y, "lan"), "--agent", sIP, "--dir", l.dir).CombinedOutput(); err != nil || !strings.Contains(string(out), "link up") {
		t.Fatalf("join --agent (the member dials): %v\n%s", err, out)
	}
	l.waitMember("laptop-dialled")

	// A machine without the cluster's secret.
	z := l.handMachine("laptop-stranger", strings.Repeat("0", 64), 9651)
	// join waits for the agent just started to answer.
	out, ok := inside(t, z, "join", sIP, "--timeout", "20s")
	if ok || !strings.Contains(out, "password does not match") {
		t.Fatalf("join with another secret: ok=%v, want a refusal saying the secret does not match:\n%s", ok, out)
	}
	waitOutput(t, z, "is not the cluster's", "mesh")
	logs, _ := exec.Command("docker", "logs", s).CombinedOutput()
	if !strings.Contains(string(logs), "mesh link refused") {
		t.Errorf("the member's log does not say it refused the stranger's link")
	}
	if v, err := l.view(); err != nil || contains(v.alive, "laptop-stranger") {
		t.Fatalf("the stranger is a member: %v %v", v, err)
	}
}

// handMachine starts a node in a container of the lab's network from a
// node config written by hand, as an operator installing a laptop would:
// the cluster's gossip key, mesh secret and token, a certificate of its CA,
// no peers.
func (l *meshLab) handMachine(id, secret string, listenPort int) string {
	l.t.Helper()
	t := l.t
	pair, _, err := l.client().KV().Get(kvschema.GossipKey, nil)
	if err != nil || pair == nil {
		t.Fatalf("gossip key: %v", err)
	}
	ident := l.identity()
	cert, err := ident.CA().Issue(id, false)
	if err != nil {
		t.Fatal(err)
	}
	cfg := nodeconfig.Config{
		MachineID: id, MachineType: "laptop", Cluster: l.name, Backend: "by-hand", DataDir: "/var/lib/raptiformica",
		BindAddr: nodeconfig.BindAuto, ConsulBinary: "/usr/local/bin/consul", Encrypt: string(pair.Value), ACLToken: ident.ManagementToken,
		TLS:  &nodeconfig.TLS{CACert: ident.CACert, Cert: cert.CertPEM, Key: cert.KeyPEM},
		Mesh: &nodeconfig.Mesh{ListenPort: listenPort, Secret: secret},
	}.WithDefaults()
	b, _ := json.MarshalIndent(cfg, "", "  ")
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "etc", "raptiformica"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "etc", "raptiformica", "agent.json"), b, 0o600); err != nil {
		t.Fatal(err)
	}
	consul, err := nodeconfig.FindConsul()
	if err != nil {
		t.Fatal(err)
	}
	img, err := docker.BuildImage(context.Background(), l.be.Client(), binary, consul)
	if err != nil {
		t.Fatal(err)
	}
	dockerRun(t, "create", "--name", id, "--label", "raptiformica.test="+l.name, "--network", l.nets["lan"],
		"--cap-add", "NET_ADMIN", "--device", "/dev/net/tun", "--sysctl", "net.ipv6.conf.all.disable_ipv6=0",
		img, "agent", "-config", "/etc/raptiformica/agent.json")
	// The image is FROM scratch: the folders come with the copy.
	dockerRun(t, "cp", filepath.Join(dir, "etc"), id+":/")
	dockerRun(t, "start", id)
	return id
}

// waitOutput runs the CLI in a container until its output holds want.
func waitOutput(t *testing.T, id, want string, args ...string) {
	t.Helper()
	var out string
	for end := time.Now().Add(time.Minute); time.Now().Before(end); time.Sleep(time.Second) {
		if out, _ = inside(t, id, args...); strings.Contains(out, want) {
			return
		}
	}
	logs, _ := exec.Command("docker", "logs", "--tail", "30", id).CombinedOutput()
	t.Fatalf("%s %v never printed %q; last:\n%s\nits agent's last log lines:\n%s", id, args, want, out, logs)
}

// waitMember waits until id is an alive member whose record is joined.
func (l *meshLab) waitMember(id string) {
	l.t.Helper()
	var v view
	for end := time.Now().Add(2 * time.Minute); time.Now().Before(end); time.Sleep(500 * time.Millisecond) {
		var err error
		if v, err = l.view(); err == nil && contains(v.alive, id) && contains(v.joined, id) {
			return
		}
	}
	l.t.Fatalf("%s never joined: %v", id, v)
}

// BenchmarkMesh measures the overlay between two containers on one network
// beside the same path on the bare network, in one run: round-trip time
// (median and 99th percentile of small echoes) and TCP throughput, with
// `raptiformica probe`. The bare figures are the floor the overlay cannot
// beat: it rides on that network, adding encryption and a TUN hop.
func BenchmarkMesh(b *testing.B) {
	l := newMeshLab(b, "lan")
	l.up(l.platform("yggdrasil", "30s",
		meshHost{name: "a", nets: []string{"lan"}, server: true},
		meshHost{name: "b", nets: []string{"lan"}}))
	l.waitAgree(2, 3*time.Minute, "two machines")
	a, peer := l.machine("a").ID, l.machine("b").ID
	dockerRun(b, "exec", "-d", peer, "/usr/local/bin/raptiformica", "probe", "--serve")
	targets := map[string]string{"overlay": "[" + l.overlayOf(peer) + "]:9700", "bare": l.ipOn(peer, "lan") + ":9700"}
	sums := map[string]float64{}
	b.ResetTimer()
	for range b.N {
		for _, path := range []string{"bare", "overlay"} {
			var out string
			var ok bool
			for try := 0; try < 20; try++ { // the server may still be starting
				if out, ok = inside(b, a, "probe", targets[path]); ok {
					break
				}
				time.Sleep(500 * time.Millisecond)
			}
			if !ok {
				b.Fatalf("probe %s: %s", path, out)
			}
			for _, f := range strings.Fields(out)[1:] {
				k, v, _ := strings.Cut(f, "=")
				n, err := strconv.ParseFloat(v, 64)
				if err != nil {
					b.Fatalf("probe output %q", out)
				}
				sums[path+"_"+k] += n
			}
		}
	}
	b.StopTimer()
	keys := make([]string, 0, len(sums))
	for k := range sums {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		b.ReportMetric(sums[k]/float64(b.N), k)
	}
}
