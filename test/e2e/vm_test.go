package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	mrand "math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/raptiformica/raptiformica/backends"
	"github.com/raptiformica/raptiformica/backends/qemu"
	"github.com/raptiformica/raptiformica/cluster"
	"github.com/raptiformica/raptiformica/reconcile"
)

// The VM tests share one image, made once per run from the binary under
// test: its .deb (nfpm, as `make package` makes it), installed into the
// cached Debian by scripts/vmimage.sh.
var (
	vmImageOnce sync.Once
	vmImageDir  string
	vmImageErr  error
	// vmSlot lets one VM test run at a time: this machine has two cores,
	// and each test runs at most two VMs of one vCPU.
	vmSlot sync.Mutex
)

// needVMImage returns the qemu backend's image folder for this build.
func needVMImage(t testing.TB) string {
	t.Helper()
	if testing.Short() {
		t.Skip("end-to-end test (run without -short)")
	}
	needTool(t, "qemu-system-x86_64", "Debian's qemu-system-x86, installed by scripts/testdeps.sh")
	needTool(t, "qemu-img", "Debian's qemu-utils, installed by scripts/testdeps.sh")
	needTool(t, "debootstrap", "Debian's debootstrap, installed by scripts/testdeps.sh")
	vmImageOnce.Do(func() {
		var deb string
		if deb, vmImageErr = buildDeb(runtime.GOARCH, binary); vmImageErr != nil {
			return
		}
		defer os.RemoveAll(filepath.Dir(deb))
		out, err := exec.Command("../../scripts/vmimage.sh", deb).Output()
		if err != nil {
			if ee, ok := err.(*exec.ExitError); ok {
				err = &scriptError{"scripts/vmimage.sh", string(ee.Stderr)}
			}
			vmImageErr = err
			return
		}
		vmImageDir = strings.TrimSpace(string(out))
	})
	if vmImageErr != nil {
		t.Fatal(vmImageErr)
	}
	return vmImageDir
}

// buildDeb packs agent, the binary under test built for goarch, and the
// pinned Consul for goarch into a .deb with the project's nfpm description,
// in a folder of its own (not dist/, which TestDebPackage's `make package`
// empties).
func buildDeb(goarch, agent string) (string, error) {
	root, err := moduleRoot()
	if err != nil {
		return "", err
	}
	consul, err := exec.Command(filepath.Join(root, "scripts/consul.sh"), goarch).Output()
	if err != nil {
		return "", fmt.Errorf("scripts/consul.sh: %w", err)
	}
	nfpm, err := exec.Command(filepath.Join(root, "scripts/nfpm.sh")).Output()
	if err != nil {
		return "", fmt.Errorf("scripts/nfpm.sh: %w", err)
	}
	dir, err := os.MkdirTemp("", "rf-vm-deb")
	if err != nil {
		return "", err
	}
	// nfpm reads its sources relative to where it runs: the staged
	// binaries, and the repository's unit, defaults and examples.
	stage := filepath.Join(dir, "dist", "stage")
	if err := os.MkdirAll(stage, 0o755); err != nil {
		return "", err
	}
	for _, f := range []struct{ from, to string }{{agent, "raptiformica"}, {strings.TrimSpace(string(consul)), "consul"}} {
		if out, err := exec.Command("cp", f.from, filepath.Join(stage, f.to)).CombinedOutput(); err != nil {
			return "", fmt.Errorf("cp %s: %v: %s", f.from, err, out)
		}
	}
	for _, d := range []string{"deploy", "packaging"} {
		if err := os.Symlink(filepath.Join(root, d), filepath.Join(dir, d)); err != nil {
			return "", err
		}
	}
	cmd := exec.Command(strings.TrimSpace(string(nfpm)), "package", "--config", filepath.Join(root, "packaging/nfpm.yaml"), "--packager", "deb", "--target", dir+"/")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "PKG_ARCH="+goarch, "PKG_VERSION=0.1.0+e2e")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("nfpm: %v\n%s", err, out)
	}
	return filepath.Join(dir, "raptiformica_0.1.0+e2e_"+goarch+".deb"), nil
}

// vmLab is a bridge lab with a qemu backend whose VMs join the bridge.
type vmLab struct {
	bridgeLab
	image string
	vms   backends.Backend // the lab's view of the VM folder
}

// bridgeLab is a local cluster of three servers on addresses of a bridge of
// its own (.11 to .13; this host is .1): machines on the bridge reach the
// servers, and the servers them.
type bridgeLab struct {
	*testCluster
	bridge string
	prefix string // the bridge's /24 without its last octet
}

func newBridgeLab(t testing.TB) bridgeLab {
	t.Helper()
	l := bridgeLab{bridge: fmt.Sprintf("rfqe%06x", mrand.IntN(1<<24))}
	own, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	taken := map[string]bool{}
	for _, a := range own {
		if p, err := netip.ParsePrefix(a.String()); err == nil && p.Addr().Is4() {
			b := p.Addr().As4()
			taken[fmt.Sprintf("%d.%d.%d", b[0], b[1], b[2])] = true
		}
	}
	for {
		l.prefix = fmt.Sprintf("10.218.%d", 1+mrand.IntN(250))
		if !taken[l.prefix] {
			break
		}
	}
	ipc := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v\n%s", args, err, out)
		}
	}
	ipc("link", "add", "name", l.bridge, "type", "bridge")
	t.Cleanup(func() { _ = exec.Command("ip", "link", "del", l.bridge).Run() })
	for _, last := range []int{1, 11, 12, 13} {
		ipc("addr", "add", fmt.Sprintf("%s.%d/24", l.prefix, last), "dev", l.bridge)
	}
	ipc("link", "set", "dev", l.bridge, "up")
	l.testCluster = newCluster(t)
	return l
}

// serversHCL is the description of the lab's three servers, on the bridge.
func (l bridgeLab) serversHCL() string {
	return fmt.Sprintf(`backend "host" {
  type     = "local"
  settings = { addresses = "%[1]s.11,%[1]s.12,%[1]s.13" }
}
machine "server" {
  min           = 3
  max           = 3
  consul_server = true
  backends      = ["host"]
}
`, l.prefix)
}

func newVMLab(t testing.TB, image string) *vmLab {
	t.Helper()
	l := &vmLab{bridgeLab: newBridgeLab(t), image: image}
	var err error
	l.vms, err = qemu.New(backends.Config{Name: "vm", Type: "qemu", Settings: l.vmSettings()}, backends.Env{ClusterDir: l.dir})
	if err != nil {
		t.Fatal(err)
	}
	// The lab's machines are the servers' processes and the VMs.
	l.instances = func() ([]string, int, error) {
		running, total, err := l.testCluster.localInstances()
		if err != nil {
			return nil, 0, err
		}
		vms, err := l.vms.List(context.Background())
		if err != nil {
			return nil, 0, err
		}
		for _, v := range vms {
			if v.Running {
				running = append(running, v.MachineID)
			}
		}
		sort.Strings(running)
		return running, total + len(vms), nil
	}
	t.Cleanup(func() {
		if t.Failed() {
			l.dumpVMs()
		}
	})
	return l
}

// localInstances is listInstances over the local machines alone.
func (c *testCluster) localInstances() ([]string, int, error) {
	var running []string
	ms := c.machines()
	for _, m := range ms {
		if m.Running {
			running = append(running, m.Config.MachineID)
		}
	}
	return running, len(ms), nil
}

func (l *vmLab) vmSettings() map[string]string {
	return map[string]string{"image_dir": l.image, "bridge": l.bridge, "subnet": l.prefix + ".0/24", "memory": "512"}
}

// platform is the lab's description: three servers on the bridge, the
// qemu backend, and the given types.
func (l *vmLab) platform(grace, rest string) string {
	s := l.vmSettings()
	return fmt.Sprintf(`cluster = "%[1]s"
policy {
  grace_period      = %[2]q
  cooldown          = "1s"
  provision_timeout = "5m"
}
backend "vm" {
  type     = "qemu"
  settings = { image_dir = %[3]q, bridge = %[4]q, subnet = %[5]q, memory = %[6]q }
}
`, l.bridge, grace, s["image_dir"], s["bridge"], s["subnet"], s["memory"]) + l.serversHCL() + rest
}

// workers are the joined records of type worker, by ID.
func (l *vmLab) workers() map[string]reconcile.Record {
	out := map[string]reconcile.Record{}
	for _, r := range l.recordsOf("worker") {
		if r.State == reconcile.StateJoined {
			out[r.ID] = r
		}
	}
	return out
}

func (l *vmLab) vmDir(id string) string { return filepath.Join(l.dir, "vms", id) }

// guest runs a command in a VM through its guest agent.
func (l *vmLab) guest(id string, argv ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	res, err := qemu.GuestExecIn(ctx, l.vmDir(id), argv...)
	if err != nil {
		return "", err
	}
	if res.ExitCode != 0 {
		return string(res.Stdout), fmt.Errorf("%v: exit %d: %s", argv, res.ExitCode, res.Stderr)
	}
	return string(res.Stdout), nil
}

// qmp sends one command to a VM's QEMU monitor, as an operator's socat
// would.
func (l *vmLab) qmp(id, command string) error {
	conn, err := net.DialTimeout("unix", filepath.Join(l.vmDir(id), "qmp.sock"), 5*time.Second)
	if err != nil {
		return err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	r := bufio.NewReader(conn)
	if _, err := r.ReadString('\n'); err != nil { // the greeting
		return err
	}
	for _, c := range []string{"qmp_capabilities", command} {
		if _, err := fmt.Fprintf(conn, `{"execute":%q}`+"\n", c); err != nil {
			return err
		}
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				return err
			}
			var reply map[string]json.RawMessage
			if json.Unmarshal([]byte(line), &reply) != nil {
				return fmt.Errorf("qmp: %q", line)
			}
			if e, ok := reply["error"]; ok {
				return fmt.Errorf("qmp %s: %s", c, e)
			}
			if _, ok := reply["return"]; ok {
				break
			}
		}
	}
	return nil
}

// qemuPID is the PID of a VM's QEMU.
func (l *vmLab) qemuPID(id string) int {
	raw, err := os.ReadFile(filepath.Join(l.vmDir(id), "pid"))
	if err != nil {
		l.t.Fatal(err)
	}
	// "PID START-TIME"
	pid, err := strconv.Atoi(strings.Fields(string(raw) + " ")[0])
	if err != nil {
		l.t.Fatal(err)
	}
	return pid
}

// dumpVMs logs the end of each VM's console and QEMU's output.
func (l *vmLab) dumpVMs() {
	ents, _ := os.ReadDir(filepath.Join(l.dir, "vms"))
	for _, e := range ents {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		if out, err := qemu.Console(ctx, filepath.Join(l.dir, "vms", e.Name())); err == nil {
			if len(out) > 4000 {
				out = out[len(out)-4000:]
			}
			l.t.Logf("--- %s console:\n%s", e.Name(), out)
		}
		cancel()
		for _, f := range []string{"qemu.log"} {
			raw, err := os.ReadFile(filepath.Join(l.dir, "vms", e.Name(), f))
			if err != nil {
				continue
			}
			s := string(raw)
			if len(s) > 4000 {
				s = s[len(s)-4000:]
			}
			l.t.Logf("--- %s %s:\n%s", e.Name(), f, s)
		}
		if out, err := l.guest(e.Name(), "journalctl", "-u", "raptiformica", "--no-pager", "-n", "40"); err == nil {
			l.t.Logf("--- %s journal:\n%s", e.Name(), out)
		}
	}
}

// members reads `members --json`.
func (l bridgeLab) members() []cluster.Member {
	out, errOut, code := l.rf("members", "--json")
	if code != 0 {
		l.t.Fatalf("members: exit %d\n%s", code, errOut)
	}
	var ms []cluster.Member
	if err := json.Unmarshal([]byte(out), &ms); err != nil {
		l.t.Fatalf("members --json: %v\n%s", err, out)
	}
	return ms
}

// TestVMWorkers: a three-server local cluster whose workers are QEMU VMs.
// Both VMs boot Debian's kernel, run the agent from its package under its
// shipped unit (Type=notify, active, read inside the VM), and join; members
// says which accelerator the hosts offer. A VM whose QEMU is killed is
// replaced; one whose power button is pressed leaves and is replaced at
// once, long before its grace period; the leader's agent restarted finds
// its VMs again, none made twice and none left over; a VM made by hand
// joins with a token (JoinByHand). One lab for all of it: a VM boots in
// about half a minute under TCG, and a second lab's VMs would wait for
// this one's (at most two VMs at once on two cores).
func TestVMWorkers(t *testing.T) {
	t.Parallel()
	image := needVMImage(t)
	vmSlot.Lock()
	defer vmSlot.Unlock()
	l := newVMLab(t, image)
	l.up(l.writePlatform("platform.hcl", l.platform("20s", workerType(2, 2))))
	start := time.Now()
	if !poll(6*time.Minute, func() bool { return len(l.workers()) == 2 }) {
		t.Fatalf("two VM workers did not join: %v", l.workers())
	}
	v := l.waitAgree(5, 2*time.Minute, "three servers and two VMs")
	for id := range l.workers() {
		// Joined comes a moment before ready: READY=1 waits for the
		// description too.
		var out string
		poll(time.Minute, func() bool {
			time.Sleep(500 * time.Millisecond)
			var err error
			out, err = l.guest(id, "systemctl", "show", "raptiformica", "-p", "ActiveState", "-p", "Type", "-p", "FragmentPath", "-p", "WatchdogUSec")
			return err == nil && strings.Contains(out, "ActiveState=active")
		})
		for _, want := range []string{"ActiveState=active", "Type=notify", "/systemd/system/raptiformica.service\n", "WatchdogUSec=1min"} {
			if !strings.Contains(out, want) {
				t.Errorf("%s: systemctl show raptiformica has no %s:\n%s", id, want, out)
			}
		}
		// Only the agent notifies systemd: its Consul once found
		// $NOTIFY_SOCKET too, and systemd logged its refusal.
		journal, err := l.guest(id, "journalctl", "-u", "raptiformica", "--no-pager")
		if err != nil {
			t.Fatalf("%s: %v", id, err)
		}
		if strings.Contains(journal, "reception only permitted for main PID") {
			t.Errorf("%s: a process other than the agent notified systemd:\n%s", id, journal)
		}
	}
	accel := map[string]string{}
	for _, m := range l.members() {
		// Every member says what it runs on and which versions.
		if m.Arch != runtime.GOOS+"/"+runtime.GOARCH || m.Version == "" || !strings.HasPrefix(m.ConsulVersion, "1.") {
			t.Errorf("member %s: arch %q, version %q, Consul %q", m.Name, m.Arch, m.Version, m.ConsulVersion)
		}
		if m.Role == "server" {
			if !contains(m.Offers, "vm") {
				t.Errorf("server %s does not offer vm: %v (not offered: %v)", m.Name, m.Offers, m.NotOffered)
			}
			accel[m.Name] = m.OfferDetails["vm"]
		}
	}
	for name, a := range accel {
		if a != "kvm" && a != "tcg" {
			t.Errorf("server %s offers vm with accelerator %q, want kvm or tcg", name, a)
		}
	}
	t.Logf("%v; accelerators %v; two VMs joined %v after up", v, accel, time.Since(start).Round(time.Second))

	// A power cut: QEMU killed.
	ids := sortedKeys(l.workers())
	cut := ids[0]
	if err := syscall.Kill(l.qemuPID(cut), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	v = l.waitAgree(5, 6*time.Minute, "the VM whose QEMU was killed is replaced", cut)
	t.Logf("the VM whose QEMU was killed was replaced in %v", time.Since(start).Round(time.Second))

	// The power button, with a grace period no test waits out: a VM whose
	// agent left is replaced without it.
	l.apply(t, l.platform("1h", workerType(2, 2)))
	ids = sortedKeys(l.workers())
	pressed := ids[0]
	start = time.Now()
	if err := l.qmp(pressed, "system_powerdown"); err != nil {
		t.Fatal(err)
	}
	if !poll(2*time.Minute, func() bool {
		time.Sleep(time.Second)
		for _, m := range l.members() {
			if m.Name == pressed {
				return m.Status == "left"
			}
		}
		return false
	}) {
		t.Errorf("%s did not leave after its power button", pressed)
	}
	v = l.waitAgree(5, 6*time.Minute, "the VM powered down is replaced within its hour of grace", pressed)
	t.Logf("the VM powered down was replaced in %v", time.Since(start).Round(time.Second))

	// The leader's agent restarted: the VMs are found again.
	before := sortedKeys(l.workers())
	l.restartLocal(v.leader)
	time.Sleep(10 * time.Second)
	v = l.waitAgree(5, 3*time.Minute, "the VMs are found again after the leader's restart")
	if after := sortedKeys(l.workers()); strings.Join(after, ",") != strings.Join(before, ",") {
		t.Errorf("workers after the leader's restart: %v, want the same VMs %v", after, before)
	}

	// Minutes on, the agents' watchdog has been fed: systemd restarted
	// none of them.
	for _, id := range before {
		if out, err := l.guest(id, "systemctl", "show", "raptiformica", "-p", "NRestarts", "-p", "ActiveState"); err != nil || !strings.Contains(out, "NRestarts=0") || !strings.Contains(out, "ActiveState=active") {
			t.Errorf("%s: the agent under systemd: %v\n%s", id, err, out)
		}
	}

	// One VM worker left, and one VM made by hand beside it: two VMs.
	l.apply(t, l.platform("1h", workerType(1, 1)))
	l.waitAgree(4, 3*time.Minute, "one VM worker removed")
	l.apply(t, l.platform("1h", workerType(1, 2)))
	t.Run("JoinByHand", l.joinByHand)
}

func workerType(min, max int) string {
	return fmt.Sprintf(`
machine "worker" {
  min      = %d
  max      = %d
  backends = ["vm"]
}
`, min, max)
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// apply stores a new description in the lab's cluster.
func (l *vmLab) apply(t testing.TB, src string) {
	t.Helper()
	if out, errOut, code := l.rf("platform", "apply", l.writePlatform("platform.hcl", src)); code != 0 {
		t.Fatalf("platform apply: exit %d\n%s%s", code, out, errOut)
	}
}

// TestVMNotOffered: a qemu backend whose image is missing is offered by
// no member, and `members` says what is missing.
func TestVMNotOffered(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	missing := filepath.Join(t.TempDir(), "no-image")
	c.up(c.writePlatform("platform.hcl", platformWith(1, 1, "2s", fmt.Sprintf(`
backend "vm" {
  type     = "qemu"
  settings = { image_dir = %q }
}
`, missing), false)))
	var out string
	if !poll(time.Minute, func() bool {
		time.Sleep(500 * time.Millisecond)
		out, _, _ = c.rf("members")
		return strings.Contains(out, "vm is not offered by")
	}) {
		t.Fatalf("members does not say why vm is not offered:\n%s", out)
	}
	for _, want := range []string{"the kernel " + filepath.Join(missing, "vmlinuz"), "the root filesystem " + filepath.Join(missing, "disk.img")} {
		if !strings.Contains(out, want) {
			t.Errorf("members does not name %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "local,vm") {
		t.Errorf("members shows vm offered:\n%s", out)
	}
}

// joinByHand: a VM made by hand from the cached image, as the docs show
// (an overlay of its disk, a tap on the bridge, Debian's kernel with its
// address on the command line), boots with no node config and its agent
// waits; `raptiformica join --token` inside makes it a member, and the
// agent then runs under systemd. The lab runs one VM worker beside it.
func (l *vmLab) joinByHand(t *testing.T) {
	// The lab's helpers fail the test they run in: this one.
	parent := l.t
	l.t = t
	defer func() { l.t = parent }()
	image := l.image
	// The commands of docs/backends.md, with the lab's bridge.
	vm := filepath.Join(l.dir, "byhand")
	if err := os.MkdirAll(vm, 0o700); err != nil {
		t.Fatal(err)
	}
	tap := "rfqh" + l.bridge[4:]
	addr := l.prefix + ".50"
	run := func(name string, args ...string) {
		t.Helper()
		if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
			t.Fatalf("%s %v: %v\n%s", name, args, err, out)
		}
	}
	run("qemu-img", "create", "-q", "-f", "qcow2", "-b", filepath.Join(image, "disk.img"), "-F", "raw", filepath.Join(vm, "disk.qcow2"), "4G")
	run("ip", "tuntap", "add", "dev", tap, "mode", "tap")
	t.Cleanup(func() { _ = exec.Command("ip", "link", "del", tap).Run() })
	run("ip", "link", "set", "dev", tap, "master", l.bridge, "up")
	qemuCmd := exec.Command("qemu-system-x86_64", "-machine", "q35,accel=tcg", "-m", "512", "-nodefaults", "-display", "none",
		"-serial", "file:"+filepath.Join(vm, "console.log"),
		"-kernel", filepath.Join(image, "vmlinuz"), "-initrd", filepath.Join(image, "initrd.img"),
		"-append", fmt.Sprintf("root=/dev/vda rw console=ttyS0 net.ifnames=0 ip=%s::%s.1:255.255.255.0:byhand:eth0:off", addr, l.prefix),
		"-drive", "file="+filepath.Join(vm, "disk.qcow2")+",if=virtio,format=qcow2",
		"-netdev", "tap,id=n0,ifname="+tap+",script=no,downscript=no", "-device", "virtio-net-pci,netdev=n0",
		"-chardev", "socket,id=qga,path=qga.sock,server=on,wait=off", "-device", "virtio-serial-pci",
		"-device", "virtserialport,chardev=qga,name=org.qemu.guest_agent.0")
	qemuCmd.Dir = vm
	if err := qemuCmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { qemuCmd.Process.Kill(); qemuCmd.Wait() })
	inside := func(argv ...string) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		res, err := qemu.GuestExecIn(ctx, vm, argv...)
		if err != nil {
			return "", err
		}
		if res.ExitCode != 0 {
			return string(res.Stdout) + string(res.Stderr), fmt.Errorf("%v: exit %d", argv, res.ExitCode)
		}
		return string(res.Stdout), nil
	}
	// Booted, with no node config: the agent's unit is skipped, not failed.
	var state string
	if !poll(4*time.Minute, func() bool {
		time.Sleep(time.Second)
		state, _ = inside("systemctl", "show", "raptiformica", "-p", "ActiveState", "-p", "ConditionResult")
		return strings.Contains(state, "ConditionResult=no")
	}) {
		raw, _ := os.ReadFile(filepath.Join(vm, "console.log"))
		t.Fatalf("the VM made by hand did not boot to a skipped agent: %q\n%s", state, raw)
	}

	// The console's login prompt can come before networkd has set the
	// address from the command line.
	if !poll(time.Minute, func() bool {
		time.Sleep(500 * time.Millisecond)
		out, _ := inside("ip", "-o", "-4", "addr", "show", "dev", "eth0")
		return strings.Contains(out, addr+"/24")
	}) {
		t.Fatalf("the VM made by hand never had its address %s", addr)
	}
	tok, errOut, code := l.rf("token", "create", "--type", "worker")
	if code != 0 {
		t.Fatalf("token create: exit %d\n%s", code, errOut)
	}
	server := l.machines()[0].Config
	out, err := inside("raptiformica", "join", "--token", strings.TrimSpace(tok), fmt.Sprintf("%s:%d", server.BindAddr, server.HTTPSPort), "--type", "worker", "--bind", addr, "--timeout", "60s")
	if err != nil {
		t.Fatalf("join inside the VM: %v\n%s", err, out)
	}
	m := regexp.MustCompile(`joined as (\S+) \(type worker\)`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("join did not name the machine:\n%s", out)
	}
	id := m[1]
	if out, err := inside("systemctl", "start", "raptiformica"); err != nil {
		t.Fatalf("systemctl start raptiformica: %v\n%s", err, out)
	}
	if !poll(3*time.Minute, func() bool {
		time.Sleep(time.Second)
		for _, mb := range l.members() {
			if mb.Name == id && mb.Status == "alive" {
				return true
			}
		}
		return false
	}) {
		journal, _ := inside("journalctl", "-u", "raptiformica", "--no-pager", "-n", "40")
		t.Fatalf("%s did not join:\n%s", id, journal)
	}
	if state, err = inside("systemctl", "show", "raptiformica", "-p", "ActiveState", "-p", "Type"); err != nil || !strings.Contains(state, "ActiveState=active") || !strings.Contains(state, "Type=notify") {
		t.Errorf("the agent of the VM joined by hand: %v\n%s", err, state)
	}
}
