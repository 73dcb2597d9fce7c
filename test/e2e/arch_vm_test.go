package e2e

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/raptiformica/raptiformica/internal/arch"
	"github.com/raptiformica/raptiformica/provision"
	"github.com/raptiformica/raptiformica/reconcile"
)

// The arm64 machine's image and the agent built for arm64 are made once per
// run, by the first test that needs them.
var (
	armImageOnce sync.Once
	armImageDir  string
	armImageErr  error
	armAgentOnce sync.Once
	armAgent     string
	armAgentErr  error
)

// needArmImage returns the folder of the bare arm64 VM image: Debian for
// arm64 with its kernel and an OpenSSH server (scripts/vmimage.sh, VM_ARCH=arm64).
func needArmImage(t testing.TB) string {
	t.Helper()
	needTool(t, "qemu-system-aarch64", "Debian's qemu-system-arm, installed by scripts/testdeps.sh")
	needTool(t, "qemu-img", "Debian's qemu-utils, installed by scripts/testdeps.sh")
	needTool(t, "debootstrap", "Debian's debootstrap, installed by scripts/testdeps.sh")
	armImageOnce.Do(func() {
		cmd := exec.Command("../../scripts/vmimage.sh")
		cmd.Env = append(os.Environ(), "VM_ARCH=arm64")
		out, err := cmd.Output()
		if err != nil {
			if ee, ok := err.(*exec.ExitError); ok {
				err = &scriptError{"VM_ARCH=arm64 scripts/vmimage.sh", string(ee.Stderr)}
			}
			armImageErr = err
			return
		}
		armImageDir = strings.TrimSpace(string(out))
	})
	if armImageErr != nil {
		t.Fatal(armImageErr)
	}
	return armImageDir
}

// needArmAgent cross-builds the agent under test for arm64 into
// linux-arm64/ beside the binary under test, where a member adopting an
// arm64 machine looks for it (arch.Artifacts); the arm64 Consul is in the
// cache beside the pinned one (`make test` builds it).
func needArmAgent(t testing.TB) string {
	t.Helper()
	armAgentOnce.Do(func() {
		root, err := moduleRoot()
		if err != nil {
			armAgentErr = err
			return
		}
		armAgent = filepath.Join(filepath.Dir(binary), arch.Dir("arm64"), "raptiformica")
		build := exec.Command("go", "build", "-o", armAgent, "./cmd/raptiformica")
		build.Dir = root
		build.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=arm64")
		if out, err := build.CombinedOutput(); err != nil {
			armAgentErr = fmt.Errorf("go build for arm64: %v\n%s", err, out)
		}
	})
	if armAgentErr != nil {
		t.Fatal(armAgentErr)
	}
	return armAgent
}

// armLab is a bridge lab whose exec backend "pi" makes arm64 VMs in the
// SSH contract (testdata/arm64vm.sh), adopted by the member that runs it.
type armLab struct {
	bridgeLab
	image string
	key   string // root's private key on the VMs
	net   string // the addresses handed out
}

func newArmLab(t *testing.T, image string) *armLab {
	t.Helper()
	l := &armLab{bridgeLab: newBridgeLab(t), image: image}
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	block, err := ssh.MarshalPrivateKey(priv, "")
	if err != nil {
		t.Fatal(err)
	}
	keys := t.TempDir()
	l.key = filepath.Join(keys, "id_ed25519")
	if err := os.WriteFile(l.key, pem.EncodeToMemory(block), 0o600); err != nil {
		t.Fatal(err)
	}
	sp, err := ssh.NewPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(l.key+".pub", ssh.MarshalAuthorizedKey(sp), 0o644); err != nil {
		t.Fatal(err)
	}
	l.net = t.TempDir()
	t.Cleanup(func() {
		// Whatever VMs are left: their QEMU, found by the lab's bridge.
		_ = exec.Command("pkill", "-9", "-f", "qemu-system-aarch64.*"+l.prefix+`\.`).Run()
		if t.Failed() {
			l.dumpArm()
		}
	})
	return l
}

// platform is the lab's description: its servers, the arm64 VM backend
// and a type of arm64 machines, each of which provisions itself.
func (l *armLab) platform() string {
	script, err := filepath.Abs("testdata/arm64vm.sh")
	if err != nil {
		l.t.Fatal(err)
	}
	return fmt.Sprintf(`cluster = "%[1]s"
policy {
  grace_period      = "20s"
  cooldown          = "1s"
  provision_timeout = "15m"
}
backend "pi" {
  type = "exec"
  settings = {
    contract = "ssh"
    arch     = "arm64"
    identity = %[2]q
    image    = %[3]q
    bridge   = %[1]q
    prefix   = %[4]q
    pubkey   = "%[2]s.pub"
    net      = %[5]q
    timeout  = "12m"
  }
  commands = {
    start_instance            = [%[6]q, "start"]
    get_hostname              = [%[6]q, "hostname"]
    detect_stale_instance     = [%[6]q, "running"]
    clean_up_instance_command = [%[6]q, "clean"]
  }
}
machine "pi" {
  min       = 1
  max       = 1
  archs     = ["arm64"]
  backends  = ["pi"]
  bootstrap = [["sh", "-c", "uname -m > /var/lib/raptiformica/provisioned-on"]]
}
`, l.bridge, l.key, l.image, l.prefix, l.net, script) + l.serversHCL()
}

// joinedPi waits for a machine of type pi other than those in not to be
// recorded joined and be an alive member, and returns its record.
func (l *armLab) joinedPi(t *testing.T, timeout time.Duration, not ...string) reconcile.Record {
	t.Helper()
	var found reconcile.Record
	waitUntil(t, timeout, "an arm64 machine adopted and joined", func() bool {
		alive := map[string]bool{}
		for _, m := range l.members() {
			alive[m.Name] = m.Status == "alive"
		}
		for _, r := range l.recordsOf("pi") {
			if r.State == reconcile.StateJoined && alive[r.ID] && !contains(not, r.ID) {
				found = r
				return true
			}
		}
		return false
	})
	return found
}

// ssh runs a command as root on the machine at addr.
func (l *armLab) ssh(addr, command string) (string, error) {
	out, err := exec.Command("ssh", "-i", l.key, "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
		"-o", "ConnectTimeout=30", "-o", "LogLevel=ERROR", "root@"+addr, command).CombinedOutput()
	return string(out), err
}

// dumpArm logs what the lab's VMs printed: their consoles and the exec
// backend's log of each machine's commands, wherever a member keeps them.
func (l *armLab) dumpArm() {
	_ = filepath.WalkDir(l.dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.Contains(p, "/exec/pi/") || (d.Name() != "console.log" && d.Name() != "commands.log") {
			return nil
		}
		b, _ := os.ReadFile(p)
		if len(b) > 8<<10 {
			b = b[len(b)-8<<10:]
		}
		l.t.Logf("--- %s:\n%s", p, b)
		return nil
	})
}

// TestArchARM64Adopted: an arm64 Debian machine, emulated by QEMU with its
// own kernel, made by an exec backend in the original's SSH contract on an
// amd64 cluster. The member that runs the backend adopts it as a worker:
// the agent and Consul it installs there are arm64 builds (read with
// uname -m and file(1) over SSH), the machine joins, runs its provisioner,
// and members says linux/arm64. The arm64 package installs and runs there.
// Killed, it is replaced per its description by another arm64 machine.
func TestArchARM64Adopted(t *testing.T) {
	t.Parallel()
	needTool(t, "ssh", "Debian's openssh-client, installed by scripts/testdeps.sh")
	image := needArmImage(t)
	agent := needArmAgent(t)
	vmSlot.Lock()
	defer vmSlot.Unlock()
	l := newArmLab(t, image)
	l.up(l.writePlatform("platform.hcl", l.platform()))
	start := time.Now()
	pi := l.joinedPi(t, 15*time.Minute)
	t.Logf("%s (%s) adopted and joined %v after up", pi.ID, pi.Address, time.Since(start).Round(time.Second))

	out, err := l.ssh(pi.Address, "uname -m; file -L "+provision.RemoteBinary+" "+provision.RemoteConsul)
	if err != nil {
		t.Fatalf("ssh %s: %v\n%s", pi.Address, err, out)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 3 || lines[0] != "aarch64" || !strings.Contains(lines[1], "ARM aarch64") || !strings.Contains(lines[2], "ARM aarch64") {
		t.Errorf("the adopted machine and its binaries, want aarch64 throughout:\n%s", out)
	}
	var provisioned string
	if !poll(5*time.Minute, func() bool {
		time.Sleep(2 * time.Second)
		provisioned, _ = l.ssh(pi.Address, "cat /var/lib/raptiformica/provisioned-on")
		return strings.TrimSpace(provisioned) == "aarch64"
	}) {
		t.Errorf("the provisioner did not run on %s: %q", pi.ID, provisioned)
	}
	// The footprint on a machine of 1 GiB, at rest: what the README's
	// table of architectures says.
	if out, err := l.ssh(pi.Address, "sleep 30; ps -o rss=,comm= -C raptiformica,consul; free -m | sed -n 2p"); err == nil {
		t.Logf("at rest on the arm64 machine (RSS in KiB; free -m):\n%s", out)
	}
	for _, m := range l.members() {
		if m.Name == pi.ID && m.Arch != "linux/arm64" {
			t.Errorf("members says %s is %q, want linux/arm64", m.Name, m.Arch)
		}
	}

	// The arm64 package, as `make package` makes it, on the arm64 machine.
	deb, err := buildDeb("arm64", agent)
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(filepath.Dir(deb))
	copyIn := exec.Command("ssh", "-i", l.key, "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
		"-o", "LogLevel=ERROR", "root@"+pi.Address, "cat > /tmp/raptiformica.deb")
	if copyIn.Stdin, err = os.Open(deb); err != nil {
		t.Fatal(err)
	}
	if out, err := copyIn.CombinedOutput(); err != nil {
		t.Fatalf("copy the arm64 package in: %v\n%s", err, out)
	}
	out, err = l.ssh(pi.Address, "dpkg -i /tmp/raptiformica.deb >/dev/null && dpkg --print-architecture && /usr/bin/raptiformica version && /usr/lib/raptiformica/consul version | head -n 1")
	if err != nil || !strings.HasPrefix(out, "arm64\n") || !strings.Contains(out, "raptiformica ") || !strings.Contains(out, "Consul v1.22") {
		t.Errorf("the arm64 package on the arm64 machine: %v\n%s", err, out)
	}

	// A power cut: replaced per its description, by another arm64 machine.
	if out, err := exec.Command("pkill", "-9", "-f", "qemu-system-aarch64.*"+pi.Address+"::").CombinedOutput(); err != nil {
		t.Fatalf("kill the VM of %s: %v %s", pi.ID, err, out)
	}
	start = time.Now()
	next := l.joinedPi(t, 15*time.Minute, pi.ID)
	t.Logf("%s replaced by %s in %v", pi.ID, next.ID, time.Since(start).Round(time.Second))
	if out, err := l.ssh(next.Address, "uname -m"); err != nil || strings.TrimSpace(out) != "aarch64" {
		t.Errorf("the replacement: %v %q", err, out)
	}
	waitUntil(t, 5*time.Minute, "the killed machine's record removed", func() bool {
		for _, r := range l.recordsOf("pi") {
			if r.ID == pi.ID {
				return false
			}
		}
		return true
	})
}
