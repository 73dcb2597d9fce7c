package qemu

import (
	"context"
	"encoding/json"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/raptiformica/raptiformica/backends"
)

func newTest(t *testing.T, settings map[string]string) *Backend {
	t.Helper()
	be, err := New(backends.Config{Name: "vm", Type: "qemu", Settings: settings}, backends.Env{ClusterDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	return be.(*Backend)
}

// TestVMSettingsRefused: each bad setting is refused by name, with what
// it takes.
func TestVMSettingsRefused(t *testing.T) {
	for _, tc := range []struct {
		settings map[string]string
		want     string
	}{
		{map[string]string{"memroy": "512"}, `unknown setting "memroy" (known: accel, append, bridge`},
		{map[string]string{"memory": "64"}, "setting memory: want a whole number from 128"},
		{map[string]string{"cpus": "0"}, "setting cpus: want a whole number from 1"},
		{map[string]string{"disk_size": "4 GB"}, "setting disk_size: want a size such as 4G"},
		{map[string]string{"subnet": "10.1.2.0/30"}, "setting subnet: want an IPv4 network from /16 to /29"},
		{map[string]string{"subnet": "fd00::/64"}, "setting subnet"},
		{map[string]string{"bridge": "a-name-far-too-long"}, "setting bridge"},
		{map[string]string{"accel": "hvf"}, "setting accel: want kvm, tcg or auto"},
		{map[string]string{"append": "a\nb"}, "setting append: one line"},
	} {
		_, err := New(backends.Config{Name: "vm", Type: "qemu", Settings: tc.settings}, backends.Env{ClusterDir: t.TempDir()})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("settings %v: error %v, want %q", tc.settings, err, tc.want)
		}
	}
}

// TestVMNotAvailableSaysWhatIsMissing: a host without the image is not
// offered the backend, and the reason names each missing file.
func TestVMNotAvailableSaysWhatIsMissing(t *testing.T) {
	dir := t.TempDir()
	b := newTest(t, map[string]string{"image_dir": dir, "qemu": "/nonexistent/qemu-system-x86_64"})
	err := b.Available(context.Background())
	if err == nil {
		t.Fatal("available without QEMU or an image")
	}
	for _, want := range []string{"QEMU (/nonexistent/qemu-system-x86_64", "the kernel " + filepath.Join(dir, "vmlinuz"), "the initramfs " + filepath.Join(dir, "initrd.img"), "the root filesystem " + filepath.Join(dir, "disk.img")} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("reason %q does not name %q", err, want)
		}
	}
}

// TestVMAddresses: a VM gets the lowest address of the subnet that is not
// the bridge's, not the host's, and not another VM's (running or not),
// and never the broadcast address.
func TestVMAddresses(t *testing.T) {
	b := newTest(t, map[string]string{"subnet": "10.250.9.0/29"})
	if got := b.gateway().String(); got != "10.250.9.1/29" {
		t.Fatalf("gateway %s", got)
	}
	write := func(id, addr string) {
		d := filepath.Join(b.dir, id)
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
		raw, _ := json.Marshal(vmRecord{MachineID: id, Address: addr})
		if err := os.WriteFile(filepath.Join(d, "vm.json"), raw, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	next := func() string {
		a, err := b.freeAddress()
		if err != nil {
			return err.Error()
		}
		return a.String()
	}
	if got := next(); got != "10.250.9.2" {
		t.Fatalf("first address %s", got)
	}
	write("a", "10.250.9.2")
	write("b", "10.250.9.4")
	if got := next(); got != "10.250.9.3" {
		t.Fatalf("after .2 and .4: %s", got)
	}
	write("c", "10.250.9.3")
	write("d", "10.250.9.5")
	write("e", "10.250.9.6")
	// .7 is the broadcast address of a /29.
	if got := next(); !strings.Contains(got, "every address of 10.250.9.0/29 is taken") {
		t.Fatalf("full subnet: %s", got)
	}
}

// TestVMKernelCommandLine: the VM's network and name come from its
// kernel command line, where systemd reads them.
func TestVMKernelCommandLine(t *testing.T) {
	b := newTest(t, map[string]string{"subnet": "10.250.8.0/24", "append": "quiet"})
	args := b.args("/v/worker-1", vmRecord{MachineID: "worker-1", Address: "10.250.8.5", MAC: "52:54:00:01:02:03", Tap: "rfqx"}, "tcg")
	line := strings.Join(args, " ")
	for _, want := range []string{
		"ip=10.250.8.5::10.250.8.1:255.255.255.0:worker-1:eth0:off",
		"systemd.hostname=worker-1",
		" quiet",
		"name=" + FirmwareConfigName + ",file=/v/worker-1/agent.json",
		"file=/v/worker-1/disk.qcow2,format=qcow2,if=virtio",
		"q35,accel=tcg",
	} {
		if !strings.Contains(line, want) {
			t.Errorf("QEMU's arguments lack %q:\n%s", want, line)
		}
	}
}

// TestVMMachineIDs: what reaches a folder name and the kernel command line
// is a plain name.
func TestVMMachineIDs(t *testing.T) {
	for _, id := range []string{"worker-1a2b", "w_1"} {
		if err := validID(id); err != nil {
			t.Errorf("%q: %v", id, err)
		}
	}
	for _, id := range []string{"", "../x", "a b", "a/b", "x.y", strings.Repeat("a", 64), "w init=/bin/sh"} {
		if err := validID(id); err == nil {
			t.Errorf("%q accepted", id)
		}
	}
}

// TestVMMonitorOfAStoppedQEMU: a real QEMU, stopped (SIGSTOP, as a host
// under memory pressure can leave it), accepts its monitor connection and
// never answers. The monitor call returns within its deadline, and the
// VM still counts as running: liveness comes from the process, not QMP.
func TestVMMonitorOfAStoppedQEMU(t *testing.T) {
	if testing.Short() {
		t.Skip("runs QEMU")
	}
	bin, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		t.Fatal("qemu-system-x86_64 is not on PATH: make test installs it (scripts/testdeps.sh)")
	}
	b := newTest(t, nil)
	vdir := filepath.Join(b.dir, "worker-1")
	if err := os.MkdirAll(vdir, 0o700); err != nil {
		t.Fatal(err)
	}
	// A VM without a kernel, paused: enough for a monitor, and its
	// command line names the folder's disk as a real VM's does.
	disk := filepath.Join(vdir, "disk.qcow2")
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", disk, "16M").CombinedOutput(); err != nil {
		t.Fatalf("qemu-img: %v\n%s", err, out)
	}
	cmd := exec.Command(bin, "-machine", "q35,accel=tcg", "-nodefaults", "-display", "none", "-S",
		"-drive", "file="+disk+",format=qcow2,if=virtio", "-qmp", "unix:"+qmpSocket+",server=on,wait=off")
	cmd.Dir = vdir
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	if err := writePID(vdir, cmd.Process.Pid); err != nil {
		t.Fatal(err)
	}

	ctx := context.Background()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := qmpCommand(ctx, vdir, "query-status", nil); err == nil {
			break
		} else if time.Now().After(deadline) {
			t.Fatalf("QEMU's monitor never answered: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_, err = qmpCommand(ctx, vdir, "query-status", nil)
	took := time.Since(start)
	if err == nil {
		t.Fatal("a stopped QEMU answered its monitor")
	}
	if took > qmpTimeout+3*time.Second {
		t.Errorf("the monitor call to a stopped QEMU took %v, past its deadline of %v", took, qmpTimeout)
	}
	p, err := findVM(vdir)
	if err != nil {
		t.Fatalf("a stopped QEMU counts as not running: %v", err)
	}
	p.Close()
	// The same PID with another start time is another process: a PID
	// reused since, with a command line that may well look alike.
	good, err := os.ReadFile(filepath.Join(vdir, "pid"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(vdir, "pid"), []byte(strconv.Itoa(cmd.Process.Pid)+" 1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if p, err := findVM(vdir); err == nil {
		p.Close()
		t.Error("a process that started at another time counts as the VM")
	}
	if err := os.WriteFile(filepath.Join(vdir, "pid"), good, 0o600); err != nil {
		t.Fatal(err)
	}
	// Killed, it no longer runs, though its socket file stays.
	cmd.Process.Signal(syscall.SIGCONT)
	cmd.Process.Kill()
	cmd.Wait()
	if p, err := findVM(vdir); err == nil {
		p.Close()
		t.Fatal("a killed QEMU counts as running")
	}
}

// TestVMGatewayIsFirstAddress: the bridge's address is the subnet's first,
// whatever address the setting was written with.
func TestVMGatewayIsFirstAddress(t *testing.T) {
	b := newTest(t, map[string]string{"subnet": "10.250.7.99/24"})
	if b.subnet != netip.MustParsePrefix("10.250.7.0/24") || b.gateway().Addr() != netip.MustParseAddr("10.250.7.1") {
		t.Fatalf("subnet %s gateway %s", b.subnet, b.gateway())
	}
}

// TestVMSpawnFailureLeavesNothing: a QEMU that exits at start fails the
// spawn with what it said, and leaves no folder (and so no credentials),
// no process and nothing List reports; down then removes the bridge the
// backend made, and only that.
func TestVMSpawnFailureLeavesNothing(t *testing.T) {
	if testing.Short() {
		t.Skip("makes a bridge")
	}
	if os.Geteuid() != 0 {
		t.Fatal("the qemu backend needs root (bridges and taps): run make test as root")
	}
	img := t.TempDir()
	for _, f := range []string{"vmlinuz", "initrd.img"} {
		if err := os.WriteFile(filepath.Join(img, f), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(img, "disk.img"), make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	fake := filepath.Join(t.TempDir(), "qemu-system-x86_64")
	if err := os.WriteFile(fake, []byte("#!/bin/sh\necho 'qemu: could not load kernel' >&2\nexit 1\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	bridge := "rfqt" + strconv.Itoa(os.Getpid()%100000)
	t.Cleanup(func() { exec.Command("ip", "link", "del", bridge).Run() })
	b := newTest(t, map[string]string{"image_dir": img, "qemu": fake, "accel": "tcg", "bridge": bridge, "subnet": "10.251.77.0/24"})
	b.qemuImg, _ = exec.LookPath("qemu-img")
	_, err := b.Spawn(context.Background(), backends.Spec{})
	if err == nil || !strings.Contains(err.Error(), "bad machine id") {
		t.Fatalf("a spawn without a machine ID: %v", err)
	}
	spec := backends.Spec{}
	spec.Node.MachineID, spec.Node.MachineType = "worker-1", "worker"
	_, err = b.Spawn(context.Background(), spec)
	if err == nil || !strings.Contains(err.Error(), "QEMU exited at start") || !strings.Contains(err.Error(), "could not load kernel") {
		t.Fatalf("spawn with a QEMU that exits: %v", err)
	}
	if _, err := os.Stat(filepath.Join(b.dir, "worker-1")); !os.IsNotExist(err) {
		t.Errorf("the failed VM's folder is left: %v", err)
	}
	if insts, err := b.List(context.Background()); err != nil || len(insts) != 0 {
		t.Errorf("List after a failed spawn: %v %v", insts, err)
	}
	if out, err := exec.Command("ip", "link", "show", bridge).CombinedOutput(); err != nil {
		t.Fatalf("the bridge was not made: %v %s", err, out)
	}
	if _, err := b.RemoveAll(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := exec.Command("ip", "link", "show", bridge).Run(); err == nil {
		t.Error("down left the bridge the backend made")
	}
}
