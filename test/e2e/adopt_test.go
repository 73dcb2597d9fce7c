package e2e

// Adoption over SSH, against real OpenSSH servers: containers of the Debian
// root filesystem the project makes with debootstrap (openssh-server and
// sudo included), on a Docker network of the test's own. The cluster's
// server is a process on this host bound to that network's gateway, so the
// adopted machines reach it and it reaches them.

import (
	"context"
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

	"github.com/raptiformica/raptiformica/internal/arch"
	"github.com/raptiformica/raptiformica/internal/kvschema"
	"github.com/raptiformica/raptiformica/internal/nodeconfig"
	"github.com/raptiformica/raptiformica/internal/state"
	"github.com/raptiformica/raptiformica/provision"
	"github.com/raptiformica/raptiformica/reconcile"
)

type sshLab struct {
	*testCluster
	network, subnet, gateway string
	key                      string // private key file
	pub                      string // authorized_keys line
}

func dockerRun(t testing.TB, args ...string) string {
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
	return newSSHLabEnv(t, nil)
}

// newSSHLabEnv is newSSHLab with env(the lab's key file) added to the
// environment of the cluster's commands, and so of its local machines'
// agents.
func newSSHLabEnv(t *testing.T, env func(key string) []string) *sshLab {
	t.Helper()
	needDebianImage(t)
	l := &sshLab{network: fmt.Sprintf("rf-adopt-%06x", mrand.IntN(1<<24))}
	// A subnet of its own; another test may hold the one drawn first.
	for attempt := 1; ; attempt++ {
		n := 1 + mrand.IntN(250)
		l.subnet, l.gateway = fmt.Sprintf("10.216.%d.0/24", n), fmt.Sprintf("10.216.%d.1", n)
		out, err := exec.Command("docker", "network", "create", "--subnet", l.subnet, "--gateway", l.gateway, "--label", "raptiformica.test=1", l.network).CombinedOutput()
		if err == nil {
			break
		}
		if attempt == 5 {
			t.Fatalf("docker network create %s: %v\n%s", l.subnet, err, out)
		}
	}
	t.Cleanup(func() {
		if t.Failed() {
			// The adopted machines: sshd's output, and the agent's
			// and Consul's logs in the data folder.
			dumpContainers(t, "network="+l.network)
		}
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
	if env != nil {
		l.env = env(l.key)
	}
	l.up(l.writePlatform("platform.hcl", l.platform(`machine "worker" {
  min      = 0
  max      = 5
  backends = ["host"]
}
`)))
	return l
}

// platform is the lab's description: the server on this host, and the
// given worker type and backends.
func (l *sshLab) platform(rest string) string {
	return fmt.Sprintf(`cluster = "%s"
policy {
  grace_period      = "5s"
  cooldown          = "1s"
  provision_timeout = "3m"
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
`, l.network, l.gateway) + rest
}

// apply stores a new description in the lab's cluster.
func (l *sshLab) apply(t *testing.T, name, src string) {
	t.Helper()
	if out, errOut, code := l.rf("platform", "apply", l.writePlatform(name, src)); code != 0 {
		t.Fatalf("platform apply: exit %d\n%s%s", code, out, errOut)
	}
}

// host starts an sshd container at .last of the network and returns its
// address. Its host keys are made at start; root logs in with the lab key.
func (l *sshLab) host(t *testing.T, last int) string {
	t.Helper()
	return l.hostWith(t, last, "")
}

// hostWith is host with a setup script run before sshd starts and extra
// arguments for docker run.
func (l *sshLab) hostWith(t *testing.T, last int, setup string, dockerArgs ...string) string {
	t.Helper()
	ip := strings.TrimSuffix(l.gateway, ".1") + fmt.Sprintf(".%d", last)
	script := `set -e
ssh-keygen -A >/dev/null
mkdir -p /run/sshd /root/.ssh
echo "$PUB" > /root/.ssh/authorized_keys
chmod 700 /root/.ssh && chmod 600 /root/.ssh/authorized_keys
` + setup + `
exec /usr/sbin/sshd -D -e`
	args := append([]string{"run", "-d", "--name", fmt.Sprintf("%s-%d", l.network, last), "--hostname", fmt.Sprintf("host%d", last),
		"--network", l.network, "--ip", ip, "-e", "PUB=" + l.pub, "--label", "raptiformica.test=1"}, dockerArgs...)
	dockerRun(t, append(args, debianImage, "/bin/sh", "-c", script)...)
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
	const fromOpenSSH = "Debian's openssh-client package; scripts/testdeps.sh installs it"
	sshAgent, sshAdd := needTool(t, "ssh-agent", fromOpenSSH), needTool(t, "ssh-add", fromOpenSSH)
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
	if !strings.Contains(out, "already adopted, nothing changed: root@"+ip+" as "+id) || regexp.MustCompile(`(?m)^root@\S+ \S+ +changed:`).MatchString(out) {
		t.Errorf("second adoption changed something:\n%s", out)
	}
	if again := dockerRun(t, "exec", name, "cat", "/var/lib/raptiformica/agent.pid"); again != pid {
		t.Errorf("the agent was restarted by a no-op adoption: pid %s, then %s", pid, again)
	}

	// Logging in with the SSH agent's key alone (no key file in reach):
	// the same machine, adopted again, nothing changed.
	agentDir := t.TempDir()
	sock := filepath.Join(agentDir, "agent.sock")
	agent := exec.Command(sshAgent, "-D", "-a", sock)
	if err := agent.Start(); err != nil {
		t.Fatalf("ssh-agent: %v", err)
	}
	t.Cleanup(func() { _ = agent.Process.Kill(); _ = agent.Wait() })
	waitUntil(t, 10*time.Second, "ssh-agent listens", func() bool { _, err := os.Stat(sock); return err == nil })
	if out, err := exec.Command("env", "SSH_AUTH_SOCK="+sock, sshAdd, l.key).CombinedOutput(); err != nil {
		t.Fatalf("ssh-add: %v\n%s", err, out)
	}
	cache, _ := os.UserCacheDir() // where the pinned Consul is, whatever HOME says
	l.env = []string{"SSH_AUTH_SOCK=" + sock, "HOME=" + agentDir, "XDG_CACHE_HOME=" + cache}
	out, errOut, code = l.rf("adopt", "root@"+ip, "--type", "worker", "--known-hosts", os.DevNull)
	l.env = nil
	if code != 0 || !strings.Contains(out, "already adopted, nothing changed: root@"+ip+" as "+id) {
		t.Errorf("adopt with the agent's key: exit %d\n%s\n%s", code, out, errOut)
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
	// A name that does not resolve.
	out, errOut, code = l.adopt("root@no-such-host.invalid")
	if code != 1 || !strings.Contains(errOut, "adopt root@no-such-host.invalid: connect:") || !strings.Contains(errOut, "no such host") {
		t.Errorf("adopt of an unknown host: exit %d\n%s\n%s", code, out, errOut)
	}

	// A machine of an architecture the binaries are not built for (here:
	// binaries said to be arm64, and no amd64 pair in the folder searched):
	// refused when detected, nothing installed.
	consul, err := nodeconfig.FindConsul()
	if err != nil {
		t.Fatal(err)
	}
	none := t.TempDir()
	foreign := &provision.Adopter{
		Dialer:    provision.Dialer{Auth: provision.Auth{KeyFiles: []string{l.key}}, Trust: provision.Trust{Store: provision.StoreHostKeys{Store: kvschema.New(l.client()).TrustedHostKeys()}}},
		Artifacts: arch.Artifacts{Binary: binary, Consul: consul, Arch: "arm64", Dirs: []string{none}},
	}
	ip3 := l.host(t, 12)
	_, err = foreign.Adopt(context.Background(), provision.AdoptSpec{Host: provision.Host{User: "root", Addr: ip3, Port: 22}, Node: nodeconfig.Config{MachineID: "worker-arm", MachineType: "worker"}})
	if want := "adopt root@" + ip3 + ": detect: architecture x86_64: no build for linux/amd64 at hand: no raptiformica (looked for " + none + "/linux-amd64/raptiformica) and no consul (looked for " + none + "/linux-amd64/consul); `make package ARCHS=amd64` builds them; nothing was installed"; err == nil || err.Error() != want {
		t.Errorf("adopt of an x86_64 machine with arm64 binaries:\n got %v\nwant %s", err, want)
	}
	if left := dockerRun(t, "exec", fmt.Sprintf("%s-%d", l.network, 12), "sh", "-c", "ls -A /usr/local/bin 2>/dev/null; test -e /etc/raptiformica && echo /etc/raptiformica; true"); left != "" {
		t.Errorf("a refused adoption left files behind: %s", left)
	}

	if recs := l.recordsOf("worker"); len(recs) != 1 || recs[0].ID != id {
		t.Errorf("inventory after the failed adoptions holds %v, want only %s", recs, id)
	}

	// The type's provisioners run on the adopted machine itself, from a
	// git repository there, as on any other.
	dockerRun(t, "exec", name, "sh", "-c", `set -e
git init --quiet --initial-branch=main /srv/motd.git
cd /srv/motd.git
echo "provisioned on an adopted machine" > motd
git add motd
git -c user.name=e2e -c user.email=e2e@example.org commit --quiet -m motd`)
	l.apply(t, "provision.hcl", l.platform(`machine "worker" {
  min      = 0
  max      = 5
  backends = ["host"]
  provisioner "motd" {
    source = "file:///srv/motd.git"
    steps  = [["cp", "motd", "/etc/motd"]]
  }
}
`))
	waitUntil(t, time.Minute, id+" provisions itself from the repository", func() bool {
		out, _ := exec.Command("docker", "exec", name, "cat", "/etc/motd").Output()
		return string(out) == "provisioned on an adopted machine\n"
	})

	// A bootstrap step fails. Bootstrap steps are the type's first
	// provisioner, which the machine runs on itself once it has joined: the
	// adoption succeeds, and status shows the failure with the step's
	// output.
	l.apply(t, "bootstrap.hcl", l.platform(`machine "worker" {
  min       = 0
  max       = 5
  backends  = ["host"]
  bootstrap = [["/bin/sh", "-c", "echo preparing the disks; exit 3"]]
}
`))
	ip2 := l.host(t, 11)
	out, errOut, code = l.adopt("root@" + ip2)
	m2 := regexp.MustCompile(`adopted root@\S+ as (worker-[0-9a-f]+) \(worker\)`).FindStringSubmatch(out)
	if code != 0 || m2 == nil {
		t.Fatalf("adopt with a failing bootstrap step: exit %d\n%s\n%s", code, out, errOut)
	}
	id2 := m2[1]
	waitUntil(t, 2*time.Minute, "status shows "+id2+"'s bootstrap failed, with its output", func() bool {
		out, _, _ := l.rf("status")
		return regexp.MustCompile(`provisioning `+id2+` +FAILED \(attempt \d+\): provisioner "bootstrap" step 1 \(/bin/sh\): exit status 3`).MatchString(out) &&
			strings.Contains(out, "| preparing the disks")
	})
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

// TestAdoptPool: the leader adopts machines from a pool of hosts listed in
// the description, and replaces a dead one with the next free host.
func TestAdoptPool(t *testing.T) {
	t.Parallel()
	l := newSSHLab(t)
	a, b := l.host(t, 20), l.host(t, 21)
	l.apply(t, "pool.hcl", l.platform(fmt.Sprintf(`backend "pool" {
  type     = "ssh"
  settings = {
    hosts        = "root@%s, root@%s"
    identity     = "%s"
    join_timeout = "60s"
  }
}
machine "worker" {
  min      = 1
  max      = 1
  backends = ["pool"]
}
`, a, b, l.key)))
	worker := func(addr string) string {
		v, err := l.view()
		if err != nil {
			return ""
		}
		for id, r := range v.records {
			if r.Type == "worker" && r.Backend == "pool" && r.Address == addr && r.State == reconcile.StateJoined && contains(v.alive, id) {
				return id
			}
		}
		return ""
	}
	var first string
	waitUntil(t, 2*time.Minute, "the leader adopts the pool's first host "+a, func() bool { first = worker(a); return first != "" })

	// The machine dies: the leader reaps it and adopts the next free host.
	dockerRun(t, "stop", "-t", "0", fmt.Sprintf("%s-%d", l.network, 20))
	var second string
	waitUntil(t, 3*time.Minute, "the leader replaces "+first+" with a machine on "+b, func() bool {
		second = worker(b)
		v, err := l.view()
		_, old := v.records[first]
		return err == nil && second != "" && !old
	})
	if second == first {
		t.Errorf("the replacement kept the dead machine's ID %s", first)
	}
	// The pool's record of which host runs what names only the live one.
	kv := l.client().KV()
	pairs, _, err := kv.List("raptiformica/ssh-pool/pool/", nil)
	if err != nil || len(pairs) != 1 || !strings.Contains(string(pairs[0].Value), second) {
		var got []string
		for _, p := range pairs {
			got = append(got, p.Key+"="+string(p.Value))
		}
		t.Errorf("pool assignments: %v (err %v), want only %s on %s", got, err, second, b)
	}
}

// TestAdoptThroughJumpAsSudoUser: a machine that accepts SSH only from
// another machine is adopted through it (ssh -J), logging in as a user with
// sudo; and a machine whose disk cannot take the binaries is refused
// before anything is written.
func TestAdoptThroughJumpAsSudoUser(t *testing.T) {
	t.Parallel()
	l := newSSHLab(t)
	jump := l.host(t, 30)
	target := l.hostWith(t, 31, `useradd -m -s /bin/sh deploy
mkdir -p /home/deploy/.ssh && echo "$PUB" > /home/deploy/.ssh/authorized_keys
chown -R deploy /home/deploy/.ssh && chmod 700 /home/deploy/.ssh
echo 'deploy ALL=(ALL) NOPASSWD:ALL' > /etc/sudoers.d/deploy
echo "AllowUsers *@`+jump+`" >> /etc/ssh/sshd_config`)

	// Straight from here the target refuses us.
	begin := time.Now()
	out, errOut, code := l.adopt("deploy@"+target, "--timeout", "10s")
	t.Logf("refused in %s", time.Since(begin))
	if code != 1 || !strings.Contains(errOut, "adopt deploy@"+target+": connect:") {
		t.Fatalf("direct adopt of a machine that only lets the jump host in: exit %d\n%s\n%s", code, out, errOut)
	}
	// Through the jump host it works, as deploy with sudo.
	begin = time.Now()
	out, errOut, code = l.adopt("deploy@"+target, "--jump", "root@"+jump)
	t.Logf("adopted through the jump host in %s:\n%s", time.Since(begin), out)
	if code != 0 {
		t.Fatalf("adopt through the jump host: exit %d\n%s\n%s", code, out, errOut)
	}
	m := regexp.MustCompile(`adopted deploy@\S+ as (worker-[0-9a-f]+)`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("adopt did not name the machine:\n%s", out)
	}
	waitUntil(t, time.Minute, m[1]+" is an alive member", func() bool {
		v, err := l.view()
		return err == nil && contains(v.alive, m[1])
	})
	if owner := dockerRun(t, "exec", fmt.Sprintf("%s-%d", l.network, 31), "stat", "-c", "%U %a", "/etc/raptiformica/agent.json"); owner != "root 600" {
		t.Errorf("the config written through sudo is %q, want root 600", owner)
	}

	// A full disk: refused at the disk step, nothing installed.
	small := l.hostWith(t, 32, "", "--tmpfs", "/usr/local:size=32m")
	out, errOut, code = l.adopt("root@" + small)
	if code != 1 || !strings.Contains(errOut, "adopt root@"+small+": disk: disk full: /usr/local has 32 MiB free") {
		t.Errorf("adopt onto a full disk: exit %d\n%s\n%s", code, out, errOut)
	}
	if left := dockerRun(t, "exec", fmt.Sprintf("%s-%d", l.network, 32), "sh", "-c", "ls -A /usr/local/bin 2>/dev/null; test -e /etc/raptiformica && echo /etc/raptiformica; true"); left != "" {
		t.Errorf("a refused adoption left files behind: %s", left)
	}

	// Host keys vouched for by the operator: a fingerprint, then a
	// known_hosts file. A wrong one is refused, naming the key shown.
	fp := l.host(t, 35)
	out, errOut, code = l.adopt("root@"+fp, "--fingerprint", "SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")
	shown := regexp.MustCompile(`presents \S+ (SHA256:\S+), but SHA256:A+ was given`).FindStringSubmatch(errOut)
	if code != 1 || shown == nil {
		t.Fatalf("adopt with a wrong fingerprint: exit %d\n%s\n%s", code, out, errOut)
	}
	keys := dockerRun(t, "exec", fmt.Sprintf("%s-%d", l.network, 35), "sh", "-c", "for k in /etc/ssh/ssh_host_*_key.pub; do ssh-keygen -lf $k; done")
	if !strings.Contains(keys, shown[1]) {
		t.Errorf("the refused key %s is none of the host's keys:\n%s", shown[1], keys)
	}
	if out, errOut, code := l.adopt("root@"+fp, "--fingerprint", shown[1]); code != 0 {
		t.Errorf("adopt with the right fingerprint: exit %d\n%s\n%s", code, out, errOut)
	}
	kh := l.host(t, 36)
	pubs := dockerRun(t, "exec", fmt.Sprintf("%s-%d", l.network, 36), "sh", "-c", "cat /etc/ssh/ssh_host_*_key.pub")
	other := dockerRun(t, "exec", fmt.Sprintf("%s-%d", l.network, 35), "sh", "-c", "cat /etc/ssh/ssh_host_*_key.pub")
	khFile := filepath.Join(t.TempDir(), "known_hosts")
	knownHosts := func(keys string) {
		var b strings.Builder
		for _, line := range strings.Split(keys, "\n") {
			if f := strings.Fields(line); len(f) >= 2 {
				fmt.Fprintf(&b, "%s %s %s\n", kh, f[0], f[1])
			}
		}
		if err := os.WriteFile(khFile, []byte(b.String()), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	knownHosts(other) // another machine's keys under this one's address
	out, errOut, code = l.rf("adopt", "root@"+kh, "--type", "worker", "--identity", l.key, "--known-hosts", khFile)
	if code != 1 || !strings.Contains(errOut, "which is not the key known_hosts has for it ("+khFile+" line") {
		t.Errorf("adopt against a known_hosts with other keys: exit %d\n%s\n%s", code, out, errOut)
	}
	knownHosts(pubs)
	if out, errOut, code := l.rf("adopt", "root@"+kh, "--type", "worker", "--identity", l.key, "--known-hosts", khFile); code != 0 {
		t.Errorf("adopt against the right known_hosts: exit %d\n%s\n%s", code, out, errOut)
	}

	// Many at once from an inventory file: a bad line is refused before
	// anything happens, naming file and line; then the good machines are
	// adopted and the summary says which failed and why.
	inv := filepath.Join(t.TempDir(), "machines.txt")
	a, b := l.host(t, 33), l.host(t, 34)
	gone := strings.TrimSuffix(l.gateway, ".1") + ".97"
	write := func(src string) {
		if err := os.WriteFile(inv, []byte(src), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("root@" + a + "\nroot@" + b + " nosuchtype\n")
	out, errOut, code = l.rf("adopt", "--inventory", inv, "--type", "worker", "--identity", l.key, "--known-hosts", os.DevNull)
	if code != 2 || !strings.Contains(errOut, inv+`:2: machine type "nosuchtype" is not in the description`) {
		t.Errorf("inventory with an unknown type: exit %d\n%s\n%s", code, out, errOut)
	}
	write("# two machines and one that is gone\nroot@" + a + "\nroot@" + b + "  worker\nroot@" + gone + "\n")
	out, errOut, code = l.rf("adopt", "--inventory", inv, "--type", "worker", "--identity", l.key, "--known-hosts", os.DevNull, "--parallel", "2", "--timeout", "90s")
	if code != 1 || !strings.Contains(out, "adopted 2 of 3 machines from "+inv) ||
		!strings.Contains(out, "FAILED root@"+gone+" ("+inv+":4): adopt root@"+gone+": connect:") {
		t.Errorf("inventory adoption: exit %d\n%s\n%s", code, out, errOut)
	}
	for _, ip := range []string{a, b} {
		if !regexp.MustCompile(`adopted root@` + regexp.QuoteMeta(ip) + ` as worker-`).MatchString(out) {
			t.Errorf("inventory adoption did not adopt %s:\n%s", ip, out)
		}
	}
}

// systemdHost starts a container that boots systemd as PID 1, with sshd as
// its service, at .last of the network.
func (l *sshLab) systemdHost(t *testing.T, last int) string {
	t.Helper()
	ip := strings.TrimSuffix(l.gateway, ".1") + fmt.Sprintf(".%d", last)
	name := fmt.Sprintf("%s-%d", l.network, last)
	script := `set -e
ssh-keygen -A >/dev/null
mkdir -p /root/.ssh && echo "$PUB" > /root/.ssh/authorized_keys
chmod 700 /root/.ssh && chmod 600 /root/.ssh/authorized_keys
exec /lib/systemd/systemd`
	dockerRun(t, "run", "-d", "--name", name, "--hostname", fmt.Sprintf("host%d", last), "--network", l.network, "--ip", ip,
		"-e", "PUB="+l.pub, "--label", "raptiformica.test=1", "-v", "/sys/fs/cgroup:/sys/fs/cgroup:ro", "--tmpfs", "/run", "--tmpfs", "/run/lock",
		debianImage, "/bin/sh", "-c", script)
	waitUntil(t, time.Minute, "systemd starts sshd in "+name, func() bool {
		out, _ := exec.Command("docker", "exec", name, "systemctl", "is-active", "ssh").Output()
		return strings.TrimSpace(string(out)) == "active"
	})
	return ip
}

// TestAdoptSystemd: on a machine that runs systemd the agent is installed as
// the shipped unit: Type=notify (systemctl returns once the agent says
// READY), sandboxed, and stopped gracefully (the node leaves Consul).
func TestAdoptSystemd(t *testing.T) {
	t.Parallel()
	l := newSSHLab(t)
	ip := l.systemdHost(t, 40)
	name := fmt.Sprintf("%s-%d", l.network, 40)
	out, errOut, code := l.adopt("root@" + ip)
	if code != 0 {
		logs, _ := exec.Command("docker", "exec", name, "journalctl", "-u", "raptiformica", "-n", "30", "--no-pager").CombinedOutput()
		t.Fatalf("adopt: exit %d\n%s\n%s\njournal:\n%s", code, out, errOut, logs)
	}
	if !strings.Contains(out, "linux/amd64, Debian GNU/Linux 12 (bookworm), systemd") || !strings.Contains(out, "service    changed: systemd unit raptiformica.service") {
		t.Errorf("adopt did not install the systemd unit:\n%s", out)
	}
	id := regexp.MustCompile(`adopted root@\S+ as (worker-[0-9a-f]+)`).FindStringSubmatch(out)
	if id == nil {
		t.Fatalf("adopt did not name the machine:\n%s", out)
	}
	show := func() string {
		return dockerRun(t, "exec", name, "systemctl", "show", "raptiformica", "-p", "ActiveState,SubState,MainPID,Type,NRestarts")
	}
	before := show()
	if !strings.Contains(before, "ActiveState=active") || !strings.Contains(before, "Type=notify") {
		t.Errorf("the unit is not an active notify service: %s", before)
	}
	// Again: nothing changes, the agent is not restarted.
	if out, errOut, code := l.adopt("root@" + ip); code != 0 || regexp.MustCompile(`(?m)^root@\S+ \S+ +changed:`).MatchString(out) {
		t.Errorf("second adoption: exit %d\n%s\n%s", code, out, errOut)
	}
	if after := show(); after != before {
		t.Errorf("a no-op adoption touched the service: %s, then %s", before, after)
	}
	// systemctl stop: SIGTERM, and the node leaves the cluster gracefully.
	dockerRun(t, "exec", name, "systemctl", "stop", "raptiformica")
	waitUntil(t, 30*time.Second, id[1]+" has left (not failed)", func() bool {
		c := l.client()
		if c == nil {
			return false
		}
		ms, err := c.Agent().Members(false)
		if err != nil {
			return false
		}
		for _, m := range ms {
			if m.Name == id[1] {
				return reconcile.SerfStatus(m.Status) == state.MemberLeft
			}
		}
		return false
	})
}
