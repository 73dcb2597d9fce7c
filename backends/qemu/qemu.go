// Package qemu is the compute backend whose machines are QEMU virtual
// machines on this host: Debian's kernel booted directly (no bootloader), a
// copy-on-write overlay of one cached root filesystem with the packaged
// agent in it (scripts/vmimage.sh makes it), and the agent running there
// under systemd from its package, as on any machine a user installs.
//
// A machine lives in <cluster dir>/vms/<machine id>/ (0700: its node config
// holds the machine's credentials):
//
//	vm.json       what List reports: ID, type, maker, address, MAC, tap
//	agent.json    the node config, handed to the VM through QEMU's firmware
//	              config (fw_cfg), which only that VM reads; removed once
//	              QEMU has read it
//	disk.qcow2    the VM's disk, an overlay of the image's disk.img
//	pid           QEMU's process ID and start time
//	qmp.sock      QEMU's monitor (QMP): paused start, power button, and the
//	              serial console's last MiB, which QEMU keeps (Console)
//	qga.sock      the guest agent inside: root on this host runs commands there
//	qemu.log      QEMU's own output
//
// QEMU runs under a seccomp sandbox and, once it has opened its devices
// and files, as nobody: a guest is not trusted.
//
// Networking is a Linux bridge on this host with the VMs' taps on it, and
// each VM's address set on its kernel command line (no DHCP server): the
// VMs reach this host, and every process on it, at the bridge's addresses,
// and whatever this host routes to; the host's members reach the VMs at
// theirs. A VM is reachable from elsewhere only through this host (or
// over the mesh, which needs no more). User-mode networking (slirp) was
// the alternative without root, and was not taken: it hides each VM
// behind NAT, and a Consul member's gossip needs an address others reach.
//
// QEMU runs in a session of its own, so a VM outlives the agent that
// spawned it, as the local backend's machines do.
package qemu

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"net/netip"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/raptiformica/raptiformica/backends"
	"github.com/raptiformica/raptiformica/internal/arch"
	"github.com/raptiformica/raptiformica/internal/clock"
	"github.com/raptiformica/raptiformica/internal/fsutil"
	"github.com/raptiformica/raptiformica/internal/nodeconfig"
	"github.com/raptiformica/raptiformica/internal/procenv"
)

var (
	_ backends.ClusterRemover = (*Backend)(nil)
	_ backends.Scoped         = (*Backend)(nil)
	_ backends.Detailer       = (*Backend)(nil)
)

// Paths in a VM folder, and what the image holds.
const (
	qmpSocket = "qmp.sock"
	qgaSocket = "qga.sock"
	// FirmwareConfigName is the fw_cfg item the VM's node config is
	// handed in as: /sys/firmware/qemu_fw_cfg/by_name/<it>/raw inside.
	FirmwareConfigName = "opt/raptiformica/agent.json"
	// Where the package puts its files, as the VM's node config says.
	vmDataDir = "/var/lib/raptiformica"
	vmConsul  = "/usr/lib/raptiformica/consul"
	// DefaultImageDir is where a host keeps the image when the
	// description does not say: beside the packaged agent's state.
	DefaultImageDir = "/var/lib/raptiformica/vm-image"
)

// Backend spawns machines as QEMU virtual machines on this host.
type Backend struct {
	name     string
	dir      string // <cluster dir>/vms
	kernel   string
	initrd   string
	disk     string
	memory   int // MiB
	cpus     int
	diskSize string
	bridge   string
	subnet   netip.Prefix
	accel    string // "auto", "kvm" or "tcg"
	qemu     string
	qemuImg  string
	append   string

	runAs string // the user QEMU runs as once started; "" keeps root

	accelMu    sync.Mutex
	accelFound string // what "auto" probed, once
}

// Settings are the backend's settings by name, with what each means; New
// refuses any other.
var Settings = map[string]string{
	"image_dir": "the folder scripts/vmimage.sh made: vmlinuz, initrd.img, disk.img (default " + DefaultImageDir + ")",
	"kernel":    "the kernel to boot, instead of the image folder's vmlinuz",
	"initrd":    "its initramfs, instead of the image folder's initrd.img",
	"disk":      "the root filesystem (raw ext4), instead of the image folder's disk.img",
	"memory":    "MiB of memory per VM (default 512)",
	"cpus":      "virtual CPUs per VM (default 1)",
	"disk_size": "each VM's disk size, at least the image's (default 4G)",
	"bridge":    "the bridge the VMs' taps join, made when missing (default rfq + a hash of the cluster folder)",
	"subnet":    "the VMs' IPv4 network, its first address the bridge's (default a /24 in 10.144.0.0/12 from the cluster folder)",
	"accel":     "kvm, tcg, or auto (default): KVM where a kernel boots under it here, else QEMU's TCG",
	"qemu":      "the QEMU binary (default qemu-system-x86_64 on PATH)",
	"append":    "more kernel command line arguments",
}

// New builds a qemu backend from its declaration.
func New(cfg backends.Config, env backends.Env) (backends.Backend, error) {
	if env.ClusterDir == "" {
		return nil, errors.New("qemu backend: this machine's node config has no cluster_dir, where its VMs are kept")
	}
	if len(cfg.Commands) > 0 {
		return nil, errors.New("commands are for exec backends; a qemu backend takes settings only")
	}
	for k := range cfg.Settings {
		if _, ok := Settings[k]; !ok {
			return nil, fmt.Errorf("unknown setting %q (known: %s)", k, strings.Join(settingNames(), ", "))
		}
	}
	s := func(k, def string) string {
		if v := strings.TrimSpace(cfg.Settings[k]); v != "" {
			return v
		}
		return def
	}
	imageDir := s("image_dir", DefaultImageDir)
	// A VM's paths reach QEMU's command line, where a comma separates
	// options, and its liveness is checked against that line: one
	// absolute spelling, without commas.
	clusterDir, err := filepath.Abs(env.ClusterDir)
	if err != nil {
		return nil, err
	}
	b := &Backend{
		name:     cfg.Name,
		dir:      filepath.Join(clusterDir, "vms"),
		kernel:   s("kernel", filepath.Join(imageDir, "vmlinuz")),
		initrd:   s("initrd", filepath.Join(imageDir, "initrd.img")),
		disk:     s("disk", filepath.Join(imageDir, "disk.img")),
		diskSize: s("disk_size", "4G"),
		bridge:   s("bridge", "rfq"+hashOf(env.ClusterDir)[:8]),
		accel:    s("accel", "auto"),
		qemu:     s("qemu", "qemu-system-x86_64"),
		append:   s("append", ""),
	}
	for _, f := range []struct{ what, path string }{{"cluster_dir", b.dir}, {"setting kernel", b.kernel}, {"setting initrd", b.initrd}, {"setting disk", b.disk}} {
		if strings.ContainsAny(f.path, ",\n") {
			return nil, fmt.Errorf("%s %q: QEMU's options take no comma in a path", f.what, f.path)
		}
	}
	if b.memory, err = positive(s("memory", "512"), "memory", 128, 1<<20); err != nil {
		return nil, err
	}
	if b.cpus, err = positive(s("cpus", "1"), "cpus", 1, 256); err != nil {
		return nil, err
	}
	if !validSize(b.diskSize) {
		return nil, fmt.Errorf("setting disk_size: want a size such as 4G or 8192M, got %q", b.diskSize)
	}
	if len(b.bridge) > 15 || strings.ContainsAny(b.bridge, "/ \t") || b.bridge == "" {
		return nil, fmt.Errorf("setting bridge: %q is not an interface name (at most 15 characters, no / or spaces)", b.bridge)
	}
	switch b.accel {
	case "auto", "kvm", "tcg":
	default:
		return nil, fmt.Errorf("setting accel: want kvm, tcg or auto, got %q", b.accel)
	}
	subnet := s("subnet", defaultSubnet(env.ClusterDir))
	if b.subnet, err = netip.ParsePrefix(subnet); err != nil || !b.subnet.Addr().Is4() || b.subnet.Bits() > 29 || b.subnet.Bits() < 16 {
		return nil, fmt.Errorf("setting subnet: want an IPv4 network from /16 to /29 such as 10.144.7.0/24, got %q", subnet)
	}
	b.subnet = b.subnet.Masked()
	if strings.ContainsAny(b.append, "\n\x00") {
		return nil, errors.New("setting append: one line of kernel arguments")
	}
	if p, err := exec.LookPath(b.qemu); err == nil {
		b.qemu = p
	}
	if _, err := user.Lookup("nobody"); err == nil && os.Geteuid() == 0 {
		b.runAs = "nobody"
	}
	b.qemuImg = filepath.Join(filepath.Dir(b.qemu), "qemu-img")
	if _, err := os.Stat(b.qemuImg); err != nil {
		if p, err := exec.LookPath("qemu-img"); err == nil {
			b.qemuImg = p
		}
	}
	return b, nil
}

func settingNames() []string {
	out := make([]string, 0, len(Settings))
	for k := range Settings {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func positive(v, field string, lo, hi int) (int, error) {
	n, err := strconv.Atoi(v)
	if err != nil || n < lo || n > hi {
		return 0, fmt.Errorf("setting %s: want a whole number from %d to %d, got %q", field, lo, hi, v)
	}
	return n, nil
}

func validSize(s string) bool {
	if len(s) < 2 {
		return false
	}
	n, err := strconv.ParseUint(s[:len(s)-1], 10, 32)
	return err == nil && n > 0 && strings.ContainsRune("MGT", rune(s[len(s)-1]))
}

func hashOf(s string) string {
	abs, err := filepath.Abs(s)
	if err != nil {
		abs = s
	}
	sum := sha256.Sum256([]byte(abs))
	return hex.EncodeToString(sum[:])
}

// defaultSubnet derives a cluster's /24 in 10.144.0.0/12 from its folder,
// so that two clusters on one host do not share a network.
func defaultSubnet(clusterDir string) string {
	h := fnv.New32a()
	abs, _ := filepath.Abs(clusterDir)
	h.Write([]byte(abs))
	v := h.Sum32()
	return fmt.Sprintf("10.%d.%d.0/24", 144+v%16, (v>>8)%256)
}

// gateway is the bridge's address on the VMs' network: its first.
func (b *Backend) gateway() netip.Prefix {
	return netip.PrefixFrom(b.subnet.Addr().Next(), b.subnet.Bits())
}

// MachineArch is this host's architecture: its machines are VMs (qemu-system of this host's architecture)
// that run on it (backends.Archer).
func (b *Backend) MachineArch() string { return arch.Native() }

// Available says what this host lacks to run VMs, naming it: QEMU, the
// image's kernel, initramfs or disk, the tun device, or root (taps and
// bridges need it).
func (b *Backend) Available(ctx context.Context) error {
	var missing []string
	if _, err := os.Stat(b.qemu); err != nil {
		missing = append(missing, "QEMU ("+b.qemu+": apt-get install qemu-system-x86)")
	}
	if _, err := os.Stat(b.qemuImg); err != nil {
		missing = append(missing, "qemu-img (apt-get install qemu-utils)")
	}
	for _, f := range []struct{ what, path string }{{"kernel", b.kernel}, {"initramfs", b.initrd}, {"root filesystem", b.disk}} {
		if _, err := os.Stat(f.path); err != nil {
			missing = append(missing, "the "+f.what+" "+f.path)
		}
	}
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		missing = append(missing, "/dev/net/tun")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		missing = append(missing, "ip (apt-get install iproute2)")
	}
	if len(missing) > 0 {
		return fmt.Errorf("qemu backend: missing %s (scripts/vmimage.sh makes an image)", strings.Join(missing, ", "))
	}
	if os.Geteuid() != 0 {
		return errors.New("qemu backend: making bridges and taps needs root")
	}
	_, err := b.accelerator(ctx)
	return err
}

// Detail says which accelerator this host's VMs run on: what `members`
// shows beside the backend.
func (b *Backend) Detail(ctx context.Context) string {
	a, err := b.accelerator(ctx)
	if err != nil {
		return ""
	}
	return a
}

// Scope names this machine's kernel (its boot) and the folder of VMs:
// the VMs are processes here, listable and destroyable exactly from here.
func (b *Backend) Scope(context.Context) (string, error) {
	boot, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return "", err
	}
	return "qemu:" + strings.TrimSpace(string(boot)) + ":" + b.dir, nil
}

// vmRecord is what a VM folder says of its machine, without secrets.
type vmRecord struct {
	MachineID   string    `json:"machine_id"`
	MachineType string    `json:"machine_type"`
	MadeBy      string    `json:"made_by,omitempty"`
	Address     string    `json:"address"`
	MAC         string    `json:"mac"`
	Tap         string    `json:"tap"`
	Accel       string    `json:"accel"`
	Created     time.Time `json:"created"`
}

// Spawn allocates an address on the VMs' network, writes the machine's
// folder, and starts its VM paused; once its tap is on the bridge, the VM
// runs. On error nothing is left: no process, no folder.
func (b *Backend) Spawn(ctx context.Context, spec backends.Spec) (backends.Instance, error) {
	node := spec.Node
	if err := validID(node.MachineID); err != nil {
		return backends.Instance{}, fmt.Errorf("qemu backend: %w", err)
	}
	accel, err := b.accelerator(ctx)
	if err != nil {
		return backends.Instance{}, err
	}
	if err := os.MkdirAll(b.dir, 0o700); err != nil {
		return backends.Instance{}, err
	}
	// The lock makes address allocation atomic across spawners.
	unlock, err := fsutil.LockDir(ctx, b.dir, 0o600)
	if err != nil {
		return backends.Instance{}, err
	}
	defer unlock()
	addr, err := b.freeAddress()
	if err != nil {
		return backends.Instance{}, err
	}
	vdir := filepath.Join(b.dir, node.MachineID)
	if err := os.Mkdir(vdir, 0o700); err != nil {
		return backends.Instance{}, fmt.Errorf("machine %s: %w", node.MachineID, err)
	}
	inst, err := b.start(ctx, vdir, node, addr, accel)
	if err != nil {
		b.kill(vdir)
		os.RemoveAll(vdir)
		return backends.Instance{}, fmt.Errorf("machine %s: %w", node.MachineID, err)
	}
	return inst, nil
}

func (b *Backend) start(ctx context.Context, vdir string, node nodeconfig.Config, addr netip.Addr, accel string) (backends.Instance, error) {
	node.Backend = b.name
	node.BindAddr = addr.String()
	node.DataDir = vmDataDir
	node.ConsulBinary = vmConsul
	node.ClusterDir = ""
	node.LoopbackAddr = ""
	// On a bridge, failures are found in about a second; over the mesh,
	// Consul's own timing stays (as for containers).
	node.FastGossip = node.Mesh == nil
	sum := sha256.Sum256([]byte(vdir))
	rec := vmRecord{
		MachineID:   node.MachineID,
		MachineType: node.MachineType,
		MadeBy:      node.MadeBy,
		Address:     addr.String(),
		MAC:         fmt.Sprintf("52:54:00:%02x:%02x:%02x", sum[0], sum[1], sum[2]),
		Tap:         "rfq" + hex.EncodeToString(sum[:])[:11],
		Accel:       accel,
		Created:     time.Now().UTC(),
	}
	raw, err := json.MarshalIndent(rec, "", "  ")
	if err != nil {
		return backends.Instance{}, err
	}
	// The record first: a folder List sees is one Destroy removes, with
	// whatever a crash left in it.
	if err := fsutil.WriteFileAtomic(filepath.Join(vdir, "vm.json"), append(raw, '\n'), 0o600); err != nil {
		return backends.Instance{}, err
	}
	if err := nodeconfig.Write(filepath.Join(vdir, "agent.json"), node.WithDefaults()); err != nil {
		return backends.Instance{}, err
	}
	if err := b.run(ctx, b.qemuImg, "create", "-q", "-f", "qcow2", "-b", b.disk, "-F", "raw", filepath.Join(vdir, "disk.qcow2"), b.diskSize); err != nil {
		return backends.Instance{}, err
	}
	made, err := ensureBridge(ctx, b.bridge, b.gateway())
	if made {
		// Noted, so that `down` removes what the backend made and no
		// bridge an operator made.
		if werr := os.WriteFile(filepath.Join(b.dir, ".bridge"), []byte(b.bridge+"\n"), 0o600); werr != nil && err == nil {
			err = werr
		}
	}
	if err != nil {
		return backends.Instance{}, err
	}
	cmd := exec.Command(b.qemu, b.args(vdir, rec, accel)...)
	cmd.Dir = vdir // the sockets' paths are relative: a deep folder's would be too long
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	cmd.Env = procenv.Child()
	logf, err := os.OpenFile(filepath.Join(vdir, "qemu.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return backends.Instance{}, err
	}
	defer logf.Close()
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		return backends.Instance{}, fmt.Errorf("start QEMU: %w", err)
	}
	// Its start time is read before anything reaps it: until then, even a
	// QEMU that exited at once is a zombie whose /proc entry stays.
	if err := writePID(vdir, cmd.Process.Pid); err != nil {
		cmd.Process.Kill()
		cmd.Wait()
		return backends.Instance{}, err
	}
	exited := make(chan struct{})
	var waitErr error // read once exited is closed
	// Reap QEMU if it exits while we live; after we die, init does.
	go func() { waitErr = cmd.Wait(); close(exited) }()
	// Started paused (-S): the tap exists once QEMU runs, and joins the
	// bridge before the guest sends its first packet.
	var q *qmp
	err = clock.Poll(ctx, clock.Real{}, 50*time.Millisecond, func() (bool, error) {
		select {
		case <-exited:
			return false, fmt.Errorf("QEMU exited at start (%v): %s", waitErr, tail(filepath.Join(vdir, "qemu.log")))
		default:
		}
		var err error
		q, err = dialQMP(ctx, vdir)
		return err == nil, nil
	})
	if err != nil {
		return backends.Instance{}, err
	}
	defer q.Close()
	if err := attachTap(ctx, rec.Tap, b.bridge); err != nil {
		return backends.Instance{}, err
	}
	if _, err := q.execute(ctx, "cont", nil); err != nil {
		return backends.Instance{}, err
	}
	// QEMU read the node config as it started, and the VM never reboots
	// (-no-reboot): its credentials need not stay on this disk.
	if err := os.Remove(filepath.Join(vdir, "agent.json")); err != nil {
		return backends.Instance{}, err
	}
	return backends.Instance{MachineID: node.MachineID, MachineType: node.MachineType, Address: rec.Address, Running: true, Created: rec.Created, MadeBy: node.MadeBy}, nil
}

// args is QEMU's command line for a VM: no display, no defaults, Debian's
// kernel booted directly, the disk and the network as virtio devices, the
// node config as a firmware config item, the monitor and the guest agent
// on unix sockets in the folder.
func (b *Backend) args(vdir string, rec vmRecord, accel string) []string {
	cmdline := []string{
		"root=/dev/vda", "rw", "console=ttyS0", "net.ifnames=0", "panic=-1",
		// Under TCG the serial port is emulated a character at a
		// time: the kernel's and systemd's chatter costs seconds of a
		// boot. Errors still reach the console, and the journal has
		// the rest.
		"quiet",
		// systemd-network-generator turns this into the VM's network.
		fmt.Sprintf("ip=%s::%s:%s:%s:eth0:off", rec.Address, b.gateway().Addr(), netmask(b.subnet.Bits()), rec.MachineID),
		"systemd.hostname=" + rec.MachineID,
	}
	if b.append != "" {
		cmdline = append(cmdline, b.append)
	}
	cpu := "max"
	if accel == "kvm" {
		cpu = "host"
	}
	args := []string{
		"-name", "guest=" + rec.MachineID,
		"-machine", "q35,accel=" + accel,
		"-cpu", cpu,
		"-m", strconv.Itoa(b.memory), "-smp", strconv.Itoa(b.cpus),
		"-nodefaults", "-no-user-config", "-display", "none",
		// The console in a ring buffer QEMU holds (read over QMP:
		// Console): a guest that writes without end fills no disk.
		"-chardev", "ringbuf,id=console,size=" + strconv.Itoa(consoleSize),
		"-serial", "chardev:console",
		// A guest is not trusted: QEMU runs without the system calls
		// an escape would want, and as nobody once it has opened its
		// devices and files.
		"-sandbox", "on,obsolete=deny,elevateprivileges=" + b.elevate() + ",spawn=deny,resourcecontrol=deny",
		"-kernel", b.kernel, "-initrd", b.initrd, "-append", strings.Join(cmdline, " "),
		"-drive", "file=" + filepath.Join(vdir, "disk.qcow2") + ",format=qcow2,if=virtio",
		"-netdev", "tap,id=net0,ifname=" + rec.Tap + ",script=no,downscript=no",
		"-device", "virtio-net-pci,netdev=net0,mac=" + rec.MAC,
		"-device", "virtio-rng-pci",
		"-fw_cfg", "name=" + FirmwareConfigName + ",file=" + filepath.Join(vdir, "agent.json"),
		"-qmp", "unix:" + qmpSocket + ",server=on,wait=off",
		"-chardev", "socket,id=qga0,path=" + qgaSocket + ",server=on,wait=off",
		"-device", "virtio-serial-pci",
		"-device", "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0",
		"-S", "-no-reboot",
	}
	if b.runAs != "" {
		args = append(args, "-runas", b.runAs)
	}
	return args
}

// elevate is the sandbox's rule for set*uid calls: QEMU that drops to
// nobody needs one call to do so (the sandbox would kill it), and as
// nobody can never take root back; QEMU that stays root gets none.
func (b *Backend) elevate() string {
	if b.runAs != "" {
		return "allow"
	}
	return "deny"
}

// consoleSize is how much of a VM's console QEMU keeps, in bytes.
const consoleSize = 1 << 20

func netmask(bits int) string {
	m := uint32(0xffffffff) << (32 - bits)
	return fmt.Sprintf("%d.%d.%d.%d", m>>24, (m>>16)&0xff, (m>>8)&0xff, m&0xff)
}

// run runs a helper program (qemu-img) with a deadline.
func (b *Backend) run(ctx context.Context, name string, args ...string) error {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w: %s", filepath.Base(name), strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// tail is the last lines of a log, for an error.
func tail(path string) string {
	raw, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	s := strings.TrimSpace(string(raw))
	if len(s) > 2000 {
		s = "…" + s[len(s)-2000:]
	}
	return s
}

// freeAddress is the lowest address of the subnet that is neither the
// bridge's, nor this host's, nor a VM's (running or not: a stopped VM's
// folder holds its address until it is destroyed).
func (b *Backend) freeAddress() (netip.Addr, error) {
	used, err := hostAddrs()
	if err != nil {
		return netip.Addr{}, err
	}
	recs, err := b.records()
	if err != nil {
		return netip.Addr{}, err
	}
	for _, r := range recs {
		if a, err := netip.ParseAddr(r.rec.Address); err == nil {
			used[a] = true
		}
	}
	gw := b.gateway().Addr()
	for a := gw.Next(); b.subnet.Contains(a); a = a.Next() {
		if !b.subnet.Contains(a.Next()) {
			break // the broadcast address
		}
		if !used[a] {
			return a, nil
		}
	}
	return netip.Addr{}, fmt.Errorf("qemu backend %s: every address of %s is taken", b.name, b.subnet)
}

type vmFolder struct {
	dir string
	rec vmRecord
}

// records reads every VM folder's vm.json; a folder without one is being
// made under the lock and is not a machine yet.
func (b *Backend) records() ([]vmFolder, error) {
	ents, err := os.ReadDir(b.dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("qemu backend: %w", err)
	}
	var out []vmFolder
	for _, e := range ents {
		if !e.IsDir() {
			continue
		}
		vdir := filepath.Join(b.dir, e.Name())
		raw, err := os.ReadFile(filepath.Join(vdir, "vm.json"))
		if err != nil {
			continue
		}
		var rec vmRecord
		if err := json.Unmarshal(raw, &rec); err != nil || rec.MachineID != e.Name() {
			continue
		}
		out = append(out, vmFolder{dir: vdir, rec: rec})
	}
	return out, nil
}

// List reads every VM folder; a VM runs while its QEMU process does.
func (b *Backend) List(ctx context.Context) ([]backends.Instance, error) {
	recs, err := b.records()
	if err != nil {
		return nil, err
	}
	out := make([]backends.Instance, 0, len(recs))
	for _, r := range recs {
		p, err := findVM(r.dir)
		running := err == nil
		if p != nil {
			p.Close()
		}
		out = append(out, backends.Instance{MachineID: r.rec.MachineID, MachineType: r.rec.MachineType, Address: r.rec.Address, Running: running, Created: r.rec.Created, MadeBy: r.rec.MadeBy})
	}
	return out, nil
}

// Destroy presses the VM's power button (its agent leaves the cluster as
// systemd stops it), waits for QEMU to exit, kills it when it has not
// within a grace period or when ctx ends, and removes its folder.
func (b *Backend) Destroy(ctx context.Context, machineID string) error {
	if err := validID(machineID); err != nil {
		return fmt.Errorf("qemu backend: %w", err)
	}
	vdir := filepath.Join(b.dir, machineID)
	if err := stopVM(ctx, vdir, destroyGrace); err != nil {
		return err
	}
	if err := os.RemoveAll(vdir); err != nil {
		return fmt.Errorf("machine %s: %w", machineID, err)
	}
	return nil
}

// destroyGrace is how long a VM has to shut down after its power button:
// systemd stops the agent, which leaves Consul (under TCG, seconds).
const destroyGrace = 30 * time.Second

// RemoveAll kills every VM of the cluster folder at once (the cluster is
// being torn down: nobody is left to leave to) and removes their folders.
func (b *Backend) RemoveAll(ctx context.Context) (int, error) {
	recs, err := b.records()
	if err != nil {
		return 0, err
	}
	n := 0
	for _, r := range recs {
		if p, err := findVM(r.dir); err == nil {
			n++
			p.Close()
		}
		if err := stopVM(ctx, r.dir, 0); err != nil {
			return n, err
		}
		if err := os.RemoveAll(r.dir); err != nil {
			return n, err
		}
	}
	marker := filepath.Join(b.dir, ".bridge")
	if raw, err := os.ReadFile(marker); err == nil && strings.TrimSpace(string(raw)) == b.bridge {
		if _, err := ip(ctx, "link", "del", "dev", b.bridge); err != nil && !strings.Contains(err.Error(), "Cannot find device") {
			return n, err
		}
		os.Remove(marker)
	}
	return n, nil
}

func (b *Backend) kill(vdir string) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_ = stopVM(ctx, vdir, 0)
}

// validID accepts a machine ID that is safe as a folder name, a host name
// and a word of the kernel command line: what the leader makes (a type and
// hex), never a path or a space.
func validID(id string) error {
	if id == "" || len(id) > 63 {
		return fmt.Errorf("bad machine id %q: want 1 to 63 characters", id)
	}
	for _, r := range id {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
			return fmt.Errorf("bad machine id %q: want letters, digits, - and _", id)
		}
	}
	return nil
}
