package main

// Adoption over SSH, against real OpenSSH servers: containers of the Debian
// root filesystem the project makes with debootstrap (openssh-server and
// sudo included), on a Docker network of the test's own. The cluster's
// server is a process on this host bound to that network's gateway, so the
// adopted machines reach it and it reaches them.

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"fmt"
	mrand "math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/raptiformica/raptiformica/reconcile"
)

type sshLab struct {
	*testCluster
	network, subnet, gateway string
	key                      string // private key file
	pub                      string // authorized_keys line
}

func dockerRun(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command("docker", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("docker %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(string(out))
}

// newSSHLab makes a network, a key pair and a one-server cluster bound to
// the network's gateway, with a "worker" type to adopt machines as.
func newSSHLab(t *testing.T) *sshLab {
	t.Helper()
	needDebianImage(t)
	n := 1 + mrand.IntN(250)
	l := &sshLab{
		network: fmt.Sprintf("rf-adopt-%06x", mrand.IntN(1<<24)),
		subnet:  fmt.Sprintf("10.216.%d.0/24", n), gateway: fmt.Sprintf("10.216.%d.1", n),
	}
	dockerRun(t, "network", "create", "--subnet", l.subnet, "--gateway", l.gateway, "--label", "raptiformica.test=1", l.network)
	t.Cleanup(func() {
		ids, _ := exec.Command("docker", "ps", "-aq", "--filter", "network="+l.network).Output()
		for _, id := range strings.Fields(string(ids)) {
			_ = exec.Command("docker", "rm", "-f", id).Run()
		}
		_ = exec.Command("docker", "network", "rm", l.network).Run()
	})
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	block, err := ssh.MarshalPrivateKey(priv, "")
	if err != nil {
		t.Fatal(err)
	}
	l.key = filepath.Join(t.TempDir(), "id_ed25519")
	if err := os.WriteFile(l.key, pem.EncodeToMemory(block), 0o600); err != nil {
		t.Fatal(err)
	}
	sp, _ := ssh.NewPublicKey(pub)
	l.pub = strings.TrimSpace(string(ssh.MarshalAuthorizedKey(sp)))

	l.testCluster = newCluster(t)
	l.up(l.writePlatform("platform.hcl", fmt.Sprintf(`cluster = "%s"
policy {
  grace_period = "5s"
  cooldown     = "1s"
}
backend "host" {
  type     = "local"
  settings = { addresses = "%s" }
}
machine "server" {
  min           = 1
  max           = 1
  consul_server = true
  backends      = ["host"]
}
machine "worker" {
  min      = 0
  max      = 5
  backends = ["host"]
}
`, l.network, l.gateway)))
	return l
}

// host starts an sshd container at .last of the network and returns its
// address. Its host keys are made at start; root logs in with the lab key.
func (l *sshLab) host(t *testing.T, last int) string {
	t.Helper()
	ip := strings.TrimSuffix(l.gateway, ".1") + fmt.Sprintf(".%d", last)
	script := `set -e
ssh-keygen -A >/dev/null
mkdir -p /run/sshd /root/.ssh
echo "$PUB" > /root/.ssh/authorized_keys
chmod 700 /root/.ssh && chmod 600 /root/.ssh/authorized_keys
exec /usr/sbin/sshd -D -e`
	dockerRun(t, "run", "-d", "--name", fmt.Sprintf("%s-%d", l.network, last), "--hostname", fmt.Sprintf("host%d", last),
		"--network", l.network, "--ip", ip, "-e", "PUB="+l.pub, "--label", "raptiformica.test=1", debianImage, "/bin/sh", "-c", script)
	deadline := time.Now().Add(30 * time.Second)
	for {
		if out, err := exec.Command("docker", "exec", fmt.Sprintf("%s-%d", l.network, last), "sh", "-c", "test -s /run/sshd.pid && echo up").Output(); err == nil && strings.Contains(string(out), "up") {
			return ip
		}
		if time.Now().After(deadline) {
			logs, _ := exec.Command("docker", "logs", fmt.Sprintf("%s-%d", l.network, last)).CombinedOutput()
			t.Fatalf("sshd at %s did not start:\n%s", ip, logs)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func (l *sshLab) adopt(target string, extra ...string) (string, string, int) {
	return l.rf(append([]string{"adopt", target, "--type", "worker", "--identity", l.key, "--known-hosts", os.DevNull, "--timeout", "90s"}, extra...)...)
}

func TestAdopt(t *testing.T) {
	t.Parallel()
	l := newSSHLab(t)
	ip := l.host(t, 10)
	name := fmt.Sprintf("%s-%d", l.network, 10)

	// First adoption: every step runs, the machine joins as a worker.
	out, errOut, code := l.adopt("root@" + ip)
	if code != 0 {
		t.Fatalf("adopt: exit %d\n%s\n%s", code, out, errOut)
	}
	t.Logf("first adoption:\n%s", out)
	for _, step := range []string{"connect", "detect", "disk", "upload", "config", "service", "join"} {
		if !regexp.MustCompile(`(?m)^root@` + regexp.QuoteMeta(ip) + ` ` + step + ` `).MatchString(out) {
			t.Errorf("no progress line for step %s:\n%s", step, out)
		}
	}
	if !strings.Contains(out, "no systemd (supervisor fallback)") || !strings.Contains(out, "Debian GNU/Linux 12") {
		t.Errorf("detect did not describe the machine:\n%s", out)
	}
	m := regexp.MustCompile(`adopted root@\S+ as (worker-[0-9a-f]+) \(worker\)`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("adopt did not name the machine:\n%s", out)
	}
	id := m[1]
	waitUntil(t, time.Minute, id+" is an alive member, recorded as joined", func() bool {
		v, err := l.view()
		return err == nil && contains(v.alive, id) && v.records[id].State == reconcile.StateJoined && v.records[id].Backend == "ssh"
	})
	pid := dockerRun(t, "exec", name, "cat", "/var/lib/raptiformica/agent.pid")

	// Adopting it again changes nothing: same ID, same agent process.
	out, errOut, code = l.adopt("root@" + ip)
	if code != 0 {
		t.Fatalf("second adopt: exit %d\n%s\n%s", code, out, errOut)
	}
	if !strings.Contains(out, "already adopted, nothing changed: root@"+ip+" as "+id) || strings.Contains(out, " changed") {
		t.Errorf("second adoption changed something:\n%s", out)
	}
	if again := dockerRun(t, "exec", name, "cat", "/var/lib/raptiformica/agent.pid"); again != pid {
		t.Errorf("the agent was restarted by a no-op adoption: pid %s, then %s", pid, again)
	}

	// The machine's host key changes (reinstalled, or someone in between):
	// refused, naming the host, with the running node untouched.
	dockerRun(t, "exec", name, "sh", "-c", "rm -f /etc/ssh/ssh_host_* && ssh-keygen -A >/dev/null && kill -HUP $(cat /run/sshd.pid)")
	time.Sleep(500 * time.Millisecond)
	out, errOut, code = l.adopt("root@" + ip)
	if code != 1 || !strings.Contains(errOut, "adopt root@"+ip+": connect:") || !strings.Contains(errOut, "host key refused") || !strings.Contains(errOut, "was recorded when it was first adopted") {
		t.Errorf("adopt with a changed host key: exit %d\n%s\n%s", code, out, errOut)
	}
	if again := dockerRun(t, "exec", name, "cat", "/var/lib/raptiformica/agent.pid"); again != pid {
		t.Errorf("a refused adoption touched the node: pid %s, then %s", pid, again)
	}

	// A host nobody answers at: a clear error, at once, naming it.
	begin := time.Now()
	unreachable := strings.TrimSuffix(l.gateway, ".1") + ".99"
	out, errOut, code = l.adopt("root@"+unreachable, "--timeout", "10s")
	if code != 1 || !strings.Contains(errOut, "adopt root@"+unreachable+": connect:") {
		t.Errorf("adopt of an unreachable host: exit %d in %s\n%s\n%s", code, time.Since(begin), out, errOut)
	}
	if recs := l.recordsOf("worker"); len(recs) != 1 || recs[0].ID != id {
		t.Errorf("inventory after the failed adoptions holds %v, want only %s", recs, id)
	}
}

// recordsOf lists the inventory records of one machine type that are not
// being removed.
func (c *testCluster) recordsOf(typ string) []reconcile.Record {
	v, err := c.view()
	if err != nil {
		c.t.Fatal(err)
	}
	var out []reconcile.Record
	for _, r := range v.records {
		if r.Type == typ && r.State != reconcile.StateDestroying {
			out = append(out, r)
		}
	}
	return out
}
