package e2e

// End-to-end tests on the docker backend: every machine is a container with
// its own address on a bridge network of its cluster, built from the node
// image the backend makes FROM scratch. They need the Docker engine: on a
// machine without one they fail, saying so.

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os/exec"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/client"

	"github.com/raptiformica/raptiformica/backends"
	"github.com/raptiformica/raptiformica/backends/docker"
	"github.com/raptiformica/raptiformica/internal/nodeconfig"
)

type dockerCluster struct {
	*testCluster
	name string
	be   *docker.Backend
}

func newDockerCluster(t testing.TB) *dockerCluster {
	t.Helper()
	if testing.Short() {
		t.Skip("end-to-end test (run without -short)")
	}
	needDocker(t)
	name := fmt.Sprintf("e2e-%06x", rand.IntN(1<<24))
	be, err := docker.New(backends.Config{Name: "docker"}, backends.Env{Cluster: name})
	if err != nil {
		t.Fatalf("no Docker client (%v); the docker chaos tests need a Docker engine", err)
	}
	if err := be.Available(context.Background()); err != nil {
		t.Fatalf("the docker backend is not available: %v; the docker chaos tests need a Docker engine", err)
	}
	c := &dockerCluster{testCluster: newCluster(t), name: name, be: be.(*docker.Backend)}
	c.testCluster.addrs, c.testCluster.instances, c.testCluster.killer = c.addresses, c.containers, c.dockerKill
	t.Cleanup(func() {
		if t.Failed() {
			c.dumpContainerLogs()
		}
		if n, err := c.be.RemoveAll(context.Background()); err != nil {
			t.Errorf("remove the cluster's containers: %v (removed %d)", err, n)
		}
	})
	return c
}

// fromDocker says where the docker command and engine come from.
const fromDocker = "Debian's docker.io package; scripts/testdeps.sh installs it"

// needDocker returns the path of the docker command, and fails the test
// unless a Docker engine answers it. With -short the test is skipped.
func needDocker(t testing.TB) string {
	t.Helper()
	docker := needTool(t, "docker", fromDocker)
	if out, err := exec.Command(docker, "version", "--format", "{{.Server.Version}}").CombinedOutput(); err != nil {
		t.Fatalf("no Docker engine answers `docker version` (%v: %s): this test needs one running (%s)", err, strings.TrimSpace(string(out)), fromDocker)
	}
	return docker
}

// dockerPlatform is a description of three servers on the docker backend,
// whose containers get the engine's socket (so that the seed spawns the
// others). settings, if set, are more of the backend's settings, as HCL
// object entries (`subnet = "…"`).
func dockerPlatform(cluster, settings string) string {
	if settings != "" {
		settings = ", " + settings
	}
	return fmt.Sprintf(`cluster = %q
policy {
  grace_period      = "2s"
  cooldown          = "1s"
  provision_timeout = "90s"
  resync_interval   = "2s"
  backoff_initial   = "2s"
  backoff_max       = "10s"
}
backend "docker" {
  type     = "docker"
  settings = { share_socket = "servers"%s }
}
machine "server" {
  min           = 3
  consul_server = true
  backends      = ["docker"]
}
`, cluster, settings)
}

// containers lists the cluster's containers for the view.
func (c *dockerCluster) containers() ([]string, int, error) {
	insts, err := c.be.List(context.Background())
	if err != nil {
		return nil, 0, err
	}
	var running []string
	for _, in := range insts {
		if in.Running {
			running = append(running, in.MachineID)
		}
	}
	sort.Strings(running)
	return running, len(insts), nil
}

func (c *dockerCluster) addresses() []string {
	insts, _ := c.be.List(context.Background())
	var out []string
	for _, in := range insts {
		if in.Running && in.Address != "" {
			out = append(out, in.Address)
		}
	}
	return out
}

// dockerKill is `docker kill`, through the engine's API.
func (c *dockerCluster) dockerKill(id string) {
	c.t.Helper()
	if err := c.be.Client().ContainerKill(context.Background(), id, "KILL"); err != nil {
		c.t.Fatalf("docker kill %s: %v", id, err)
	}
}

// dumpContainerLogs prints, for a failed test, every container of the
// cluster, exited ones included: the agent logs to the container's output.
func (c *dockerCluster) dumpContainerLogs() {
	dumpContainers(c.t, "label="+docker.LabelCluster+"="+c.name)
}

func (c *dockerCluster) up(src string) {
	c.t.Helper()
	out, errOut, code := c.rf("up", "--platform", c.writePlatform("platform.hcl", src), "--timeout", "3m")
	if code != 0 {
		c.t.Fatalf("up: exit %d\n%s\n%s", code, out, errOut)
	}
}

func TestDockerSelfHealing(t *testing.T) {
	t.Parallel()
	c := newDockerCluster(t)
	c.up(dockerPlatform(c.name, ""))
	c.killFollowerThenLeader(c.waitAgree(3, 2*time.Minute, "after up"))
}

func TestDockerBackendFailure(t *testing.T) {
	t.Parallel()
	c := newDockerCluster(t)
	c.up(dockerPlatform(c.name, ""))
	v := c.waitAgree(3, 2*time.Minute, "after up")

	// The engine refuses: the description names an image that is not there.
	bad := c.writePlatform("bad-image.hcl", dockerPlatform(c.name, `image = "raptiformica-node:missing"`))
	if out, errOut, code := c.rf("platform", "apply", bad); code != 0 {
		t.Fatalf("apply: %s %s", out, errOut)
	}
	victim := v.follower()
	c.kill(victim)
	// The loop backs off and says why, in status.
	c.waitWaiting(2*time.Minute, `backend "docker" skipped: backing off`)
	// No half-made machine is left: failed spawns are recorded and removed.
	insts, _ := c.be.List(context.Background())
	if len(insts) != 2 {
		t.Errorf("containers while the backend fails: got %d want the 2 survivors", len(insts))
	}

	// The description is fixed: the loop recovers and heals.
	good := c.writePlatform("good.hcl", dockerPlatform(c.name, ""))
	if out, errOut, code := c.rf("platform", "apply", good); code != 0 {
		t.Fatalf("apply: %s %s", out, errOut)
	}
	c.waitAgree(3, 2*time.Minute, "after fixing the image", victim)
}

// removeNodeImages removes the node images the tests built, so that runs
// from different checkouts (different binaries, different images) do not
// pile up on the machine. Images still in use stay.
func removeNodeImages() {
	cli, err := client.NewClientWithOpts(client.FromEnv, client.WithAPIVersionNegotiation())
	if err != nil {
		return
	}
	defer cli.Close()
	ctx := context.Background()
	imgs, err := cli.ImageList(ctx, image.ListOptions{Filters: filters.NewArgs(filters.Arg("label", "raptiformica.node-image=1"))})
	if err != nil {
		return
	}
	for _, img := range imgs {
		_, _ = cli.ImageRemove(ctx, img.ID, image.RemoveOptions{PruneChildren: true})
	}
}

// TestDockerPartition cuts machines off the cluster's network with `docker
// network disconnect` (through the engine's API), first the leader's for a
// short while, then a follower's for longer than the grace period.
func TestDockerPartition(t *testing.T) {
	t.Parallel()
	c := newDockerCluster(t)
	// A configured subnet lets a reconnected container keep its address,
	// as a machine whose link came back would.
	subnet := fmt.Sprintf(`subnet = "10.213.%d.0/24"`, 1+rand.IntN(250))
	patient := strings.Replace(dockerPlatform(c.name, subnet), `grace_period      = "2s"`, `grace_period      = "60s"`, 1)
	c.up(patient)
	v := c.waitAgree(3, 2*time.Minute, "after up")
	before := append([]string(nil), v.joined...)
	ctx := context.Background()
	cli, net := c.be.Client(), c.be.Network()

	// The leader's machine is the minority of one. The majority elects a new
	// leader; the minority, without quorum, can write no intent, so nobody
	// spawns while the cut machine is within its grace period.
	old := v.leader
	addr := c.address(old)
	if err := cli.NetworkDisconnect(ctx, net, old, true); err != nil {
		t.Fatalf("docker network disconnect %s: %v", old, err)
	}
	deadline := time.Now().Add(90 * time.Second)
	for {
		v, err := c.view()
		if err == nil && v.leader != "" && v.leader != old {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the majority elected no new leader: %v (%v)", v, err)
		}
		if _, total, _ := c.containers(); total != 3 {
			t.Fatalf("%d containers during the partition: someone spawned", total)
		}
		time.Sleep(250 * time.Millisecond)
	}
	for range 20 { // and still nothing spawns under the new leader
		if v, err := c.view(); err == nil && (v.total != 3 || len(v.records) != 3 || v.leader == old) {
			t.Fatalf("during the partition: %v, total %d", v, v.total)
		}
		time.Sleep(250 * time.Millisecond)
	}

	// The link comes back: the same three machines, one leader, no duplicate.
	if err := cli.NetworkConnect(ctx, net, old, &network.EndpointSettings{IPAMConfig: &network.EndpointIPAMConfig{IPv4Address: addr}}); err != nil {
		t.Fatalf("docker network connect %s: %v", old, err)
	}
	v = c.waitAgree(3, 2*time.Minute, "after the partition healed")
	if !equal(v.joined, before) {
		t.Errorf("after a partition shorter than the grace period the machines changed: %v, were %v", v.joined, before)
	}

	// A longer cut: the follower is judged dead, destroyed and replaced.
	short := c.writePlatform("short-grace.hcl", dockerPlatform(c.name, subnet))
	if out, errOut, code := c.rf("platform", "apply", short); code != 0 {
		t.Fatalf("apply: %s %s", out, errOut)
	}
	victim := v.follower()
	if err := cli.NetworkDisconnect(ctx, net, victim, true); err != nil {
		t.Fatalf("docker network disconnect %s: %v", victim, err)
	}
	c.waitAgree(3, 2*time.Minute, "after cutting "+victim+" off for good", victim)
	// Its container went with it: healing the link finds nothing to
	// reconnect, and no orphan is left (waitAgree counted every container).
	if err := cli.NetworkConnect(ctx, net, victim, nil); err == nil {
		t.Errorf("the cut-off machine %s still had a container", victim)
	}
}

func (c *dockerCluster) address(id string) string {
	c.t.Helper()
	insts, err := c.be.List(context.Background())
	if err != nil {
		c.t.Fatal(err)
	}
	for _, in := range insts {
		if in.MachineID == id && in.Address != "" {
			return in.Address
		}
	}
	c.t.Fatalf("no address for %s", id)
	return ""
}

// fiveServers is dockerPlatform with five servers and lost quorum declared
// after 3 s.
func fiveServers(c *dockerCluster, settings, grace string) string {
	src := strings.Replace(dockerPlatform(c.name, settings), "min           = 3", "min           = 5", 1)
	src = strings.Replace(src, `grace_period      = "2s"`, fmt.Sprintf("grace_period      = %q", grace), 1)
	return strings.Replace(src, `resync_interval   = "2s"`, "resync_interval   = \"2s\"\n  quorum_lost_after = \"3s\"", 1)
}

// TestDockerLastMachineStanding: `docker kill` four of five containers. The
// survivor asks the engine, which says they are not running, recovers alone
// and the cluster is back to five.
func TestDockerLastMachineStanding(t *testing.T) {
	t.Parallel()
	c := newDockerCluster(t)
	c.up(fiveServers(c, "", "2s"))
	v := c.waitAgree(5, 3*time.Minute, "after up")
	before, _, _ := c.rf("platform", "get")
	dead := v.joined[1:]
	for _, id := range dead {
		c.kill(id)
	}
	c.waitAgree(5, 3*time.Minute, "after killing four of five containers", dead...)
	c.samePlatform(before)
}

// TestDockerMajorityCutOff cuts three of five containers off the network:
// they keep running, so neither side may recover. When the links come back
// one cluster remains, with the same five machines.
func TestDockerMajorityCutOff(t *testing.T) {
	t.Parallel()
	c := newDockerCluster(t)
	subnet := fmt.Sprintf(`subnet = "10.214.%d.0/24"`, 1+rand.IntN(250))
	c.up(fiveServers(c, subnet, "60s"))
	v := c.waitAgree(5, 3*time.Minute, "after up")
	before := append([]string(nil), v.joined...)
	ctx := context.Background()
	cli, net := c.be.Client(), c.be.Network()
	cut, kept := v.joined[:3], v.joined[3:]
	addrs := map[string]string{}
	for _, id := range v.joined {
		addrs[id] = c.address(id)
	}
	reader := c.memberTLS()
	for _, id := range cut {
		if err := cli.NetworkDisconnect(ctx, net, id, true); err != nil {
			t.Fatalf("docker network disconnect %s: %v", id, err)
		}
	}
	// The two still connected lose quorum, see the three are still running,
	// and say they wait.
	deadline := time.Now().Add(time.Minute)
	for _, id := range kept {
		for {
			st, err := agentStatus(nodeconfig.Config{BindAddr: addrs[id], TLS: reader})
			if err == nil && st.Quorum != nil && st.Quorum.Lost && strings.Contains(st.Quorum.Recovery, "a partition, not a death") {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s never said it waits out a partition: %+v (%v)", id, st.Quorum, err)
			}
			time.Sleep(300 * time.Millisecond)
		}
	}
	time.Sleep(5 * time.Second) // and nobody recovers or spawns meanwhile
	if _, total, _ := c.containers(); total != 5 {
		t.Fatalf("%d containers during the partition", total)
	}
	for _, id := range kept {
		st, err := agentStatus(nodeconfig.Config{BindAddr: addrs[id], TLS: reader})
		if err != nil || st.Quorum == nil {
			t.Fatalf("%s regained quorum while three of five were cut off: %+v (%v)", id, st, err)
		}
	}
	for _, id := range cut {
		if err := cli.NetworkConnect(ctx, net, id, &network.EndpointSettings{IPAMConfig: &network.EndpointIPAMConfig{IPv4Address: addrs[id]}}); err != nil {
			t.Fatalf("docker network connect %s: %v", id, err)
		}
	}
	v = c.waitAgree(5, 3*time.Minute, "after the partition healed")
	if !equal(v.joined, before) {
		t.Errorf("the machines changed: %v, were %v", v.joined, before)
	}
}
