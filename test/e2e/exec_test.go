package e2e

// End-to-end test of the exec backend with the shipped example,
// deploy/examples/exec-docker.hcl: a Consul server that is a process on this
// host leads, and its workers are containers made by the docker command line.

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/client"

	"github.com/raptiformica/raptiformica/backends/docker"
)

type execCluster struct {
	*testCluster
	name string
	cli  *client.Client
}

func newExecCluster(t *testing.T) (*execCluster, string) {
	t.Helper()
	if testing.Short() {
		t.Skip("end-to-end test (run without -short)")
	}
	needDocker(t) // the example drives the docker command line
	cli, err := client.NewClientWithOpts(client.FromEnv, client.WithAPIVersionNegotiation())
	if err != nil {
		t.Fatalf("no Docker client: %v", err)
	}
	gateway, err := bridgeAddress(cli)
	if err != nil {
		t.Fatalf("no address of this host on Docker's default bridge to serve containers from: %v", err)
	}
	c := &execCluster{testCluster: newCluster(t), name: fmt.Sprintf("exec-%06x", rand.IntN(1<<24)), cli: cli}
	c.testCluster.instances, c.testCluster.killer = c.machinesAndContainers, c.killEither
	t.Cleanup(func() {
		if t.Failed() {
			dumpContainers(t, "label=raptiformica.exec="+c.name)
			dumpContainers(t, "label="+docker.LabelCluster+"="+c.name)
		}
		// down removes them; this is for a test that failed before it.
		for _, ct := range c.containers(t) {
			_ = cli.ContainerRemove(context.Background(), ct.ID, container.RemoveOptions{Force: true})
		}
	})
	return c, gateway
}

// bridgeAddress is this host's address on Docker's default bridge: the
// gateway the engine reports, or else the bridge interface's own address.
func bridgeAddress(cli *client.Client) (string, error) {
	bridge, err := cli.NetworkInspect(context.Background(), "bridge", network.InspectOptions{})
	if err != nil {
		return "", err
	}
	if len(bridge.IPAM.Config) > 0 && bridge.IPAM.Config[0].Gateway != "" {
		return bridge.IPAM.Config[0].Gateway, nil
	}
	name := bridge.Options["com.docker.network.bridge.name"]
	ifc, err := net.InterfaceByName(name)
	if err != nil {
		return "", fmt.Errorf("bridge interface %q: %w", name, err)
	}
	addrs, err := ifc.Addrs()
	if err != nil {
		return "", err
	}
	for _, a := range addrs {
		if ipn, ok := a.(*net.IPNet); ok && ipn.IP.To4() != nil {
			return ipn.IP.String(), nil
		}
	}
	return "", fmt.Errorf("bridge interface %q has no IPv4 address", name)
}

// examplePlatform is the shipped example, for this test's cluster and this
// host's bridge address, with edit applied to its text.
func (c *execCluster) examplePlatform(t *testing.T, gateway string, edit func(string) string) string {
	src, err := os.ReadFile("../../deploy/examples/exec-docker.hcl")
	if err != nil {
		t.Fatal(err)
	}
	s := strings.Replace(string(src), `cluster = "exec-dc"`, fmt.Sprintf("cluster = %q", c.name), 1)
	s = strings.Replace(s, `addresses = "172.17.0.1"`, fmt.Sprintf("addresses = %q", gateway), 1)
	if edit != nil {
		s = edit(s)
	}
	// Beside the exec workers, a machine of the docker backend on the same
	// bridge: a host-process leader serves both kinds of container.
	return s + `
backend "docker" {
  type     = "docker"
  settings = { network = "bridge" }
}

machine "box" {
  min      = 1
  backends = ["docker"]
}
`
}

// containers are the exec backend's and the docker backend's containers of
// the cluster, each with its machine ID.
func (c *execCluster) containers(t testing.TB) map[string]container.Summary {
	out := map[string]container.Summary{}
	for label, idLabel := range map[string]string{"raptiformica.exec": "raptiformica.exec_machine_id", docker.LabelCluster: docker.LabelMachineID} {
		list, err := c.cli.ContainerList(context.Background(), container.ListOptions{All: true,
			Filters: filters.NewArgs(filters.Arg("label", label+"="+c.name))})
		if err != nil {
			t.Fatalf("list containers: %v", err)
		}
		for _, ct := range list {
			out[ct.Labels[idLabel]] = ct
		}
	}
	return out
}

// machinesAndContainers is the backends' view: the host's machine folders
// and the containers with the example's labels.
func (c *execCluster) machinesAndContainers() ([]string, int, error) {
	var running []string
	ms := c.machines()
	for _, m := range ms {
		if m.Running {
			running = append(running, m.Config.MachineID)
		}
	}
	cts := c.containers(c.t)
	for id, ct := range cts {
		if ct.State == "running" {
			running = append(running, id)
		}
	}
	sort.Strings(running)
	return running, len(ms) + len(cts), nil
}

func (c *execCluster) killEither(id string) {
	c.t.Helper()
	if ct, ok := c.containers(c.t)[id]; ok {
		if err := c.cli.ContainerKill(context.Background(), ct.ID, "KILL"); err != nil {
			c.t.Fatalf("docker kill %s: %v", id, err)
		}
		return
	}
	c.killLocal(id)
}

func TestExecDockerExample(t *testing.T) {
	t.Parallel()
	c, gateway := newExecCluster(t)
	c.up(c.writePlatform("exec.hcl", c.examplePlatform(t, gateway, nil)))
	v := c.waitAgree(4, 2*time.Minute, "after up")
	server := v.leader
	if !strings.HasPrefix(server, "server-") {
		t.Fatalf("leader is %q, want the host's server: containers have never_lead", server)
	}

	// Containers die: the host's leader makes others, through the commands
	// for a worker and the engine's API for a box.
	for _, kind := range []string{"worker-", "box-"} {
		var victim string
		for _, id := range v.joined {
			if strings.HasPrefix(id, kind) {
				victim = id
				break
			}
		}
		c.kill(victim)
		v = c.waitAgree(4, 2*time.Minute, "after killing "+victim, victim)
		if v.leader != server {
			t.Errorf("leader moved to %s", v.leader)
		}
	}

	// start_instance hangs: it is killed at its timeout, the half-made
	// machine cleaned up, the backend backs off and status says why.
	hang := c.writePlatform("hang.hcl", c.examplePlatform(t, gateway, func(s string) string {
		s = strings.Replace(s, `timeout       = "2m"`, `timeout       = "3s"`, 1)
		return strings.Replace(s, "\"-euc\", <<-EOT\n", "\"-euc\", <<-EOT\n      sleep 600\n", 1)
	}))
	if out, errOut, code := c.rf("platform", "apply", hang); code != 0 {
		t.Fatalf("apply: %s %s", out, errOut)
	}
	var worker string
	for _, id := range v.joined {
		if strings.HasPrefix(id, "worker-") {
			worker = id
			break
		}
	}
	c.kill(worker)
	c.waitWaiting(2*time.Minute, `backend "containers" skipped: backing off`, "start_instance timed out after 3s and was killed")
	if _, total, _ := c.machinesAndContainers(); total > 4 {
		t.Errorf("%d machines while start_instance hangs: a half-made one was left", total)
	}

	// Fixed: the loop recovers and heals.
	good := c.writePlatform("good.hcl", c.examplePlatform(t, gateway, nil))
	if out, errOut, code := c.rf("platform", "apply", good); code != 0 {
		t.Fatalf("apply: %s %s", out, errOut)
	}
	c.waitAgree(4, 2*time.Minute, "after fixing start_instance", worker)

	// down removes the containers too, not only the host's processes.
	if out, errOut, code := c.rf("down"); code != 0 {
		t.Fatalf("down: %s %s", out, errOut)
	}
	if left := c.containers(t); len(left) != 0 {
		t.Errorf("down left %d containers", len(left))
	}
}
