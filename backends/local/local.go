// Package local is the embedded default compute backend: a machine is a set of
// processes on this host (its agent and the agent's Consul) bound to a
// loopback address of its own, 127.x.y.N, with a folder of its own. It needs
// no root.
//
// A machine lives in <cluster dir>/machines/<machine id>/:
//
//	agent.json   the node config the agent starts from
//	agent.log    the agent's and its Consul's output
//	pid          the agent's process ID, which is also its process group ID
//	data/        the node's Consul data and mirror
//
// The agent runs in a session of its own, so a machine outlives the agent that
// spawned it, as a real machine would; destroying it signals the whole process
// group.
package local

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
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
	"github.com/raptiformica/raptiformica/internal/procstat"
)

var (
	_ backends.Seeder         = (*Backend)(nil)
	_ backends.ClusterRemover = (*Backend)(nil)
)

// Backend spawns machines as local process groups.
type Backend struct {
	name      string
	dir       string   // <cluster dir>/machines
	addresses []string // the addresses machines may bind, in order
	explicit  bool     // addresses were configured: this host's own
	bindAddr  string   // the address the node running the backend binds
	binary    string
	consul    string
	rescan    time.Duration // how often Watch looks for folders no spawn told it of

	// nodes are the machines' configs as List last parsed them, by
	// folder: every host of a local cluster lists the whole folder once a
	// minute to publish its offer, and reading and parsing each machine's
	// config was nearly all of a list's cost (10 ms at 103 machines, on
	// each of a hundred hosts).
	nodesMu sync.Mutex
	nodes   map[string]parsedNode
}

// parsedNode is a machine's config and the file it was parsed from, known
// by its inode, size, and modification and change times: the config is
// written by rename, so a new one is a new inode, and its change time no
// tool can set back (cp -p and tar can set the modification time).
type parsedNode struct {
	ino, size int64
	mod, ctim time.Time
	node      nodeconfig.Config
}

// New builds a local backend. Settings: "subnet" (three octets such as
// "127.42.7"; by default derived from the cluster folder, so that clusters in
// different folders do not share addresses) or "addresses" (a comma-separated
// list of this host's addresses, one machine each: how host processes join
// machines that cannot reach this host's loopback, such as containers
// reaching a Docker bridge's gateway address; a list naming several hosts'
// addresses gives each host its own).
func New(cfg backends.Config, env backends.Env) (backends.Backend, error) {
	if env.ClusterDir == "" {
		return nil, errors.New("local backend: this machine's node config has no cluster_dir, where its machines are kept")
	}
	if len(cfg.Commands) > 0 {
		return nil, errors.New("commands are for exec backends; a local backend takes settings only")
	}
	for k := range cfg.Settings {
		if k != "subnet" && k != "addresses" {
			return nil, fmt.Errorf("unknown setting %q (known: subnet, addresses)", k)
		}
	}
	var addrs []string
	if list := cfg.Settings["addresses"]; list != "" {
		if cfg.Settings["subnet"] != "" {
			return nil, errors.New("settings subnet and addresses exclude each other")
		}
		for _, a := range strings.Split(list, ",") {
			ip, err := netip.ParseAddr(strings.TrimSpace(a))
			if err != nil || !ip.Is4() {
				return nil, fmt.Errorf("setting addresses: %q is not an IPv4 address", a)
			}
			addrs = append(addrs, ip.String())
		}
	} else {
		subnet := cfg.Settings["subnet"]
		if subnet == "" {
			subnet = subnetOf(env.ClusterDir)
		}
		if parts := strings.Split(subnet, "."); len(parts) != 3 || parts[0] != "127" {
			return nil, fmt.Errorf("setting subnet: want three octets in 127.0.0.0/8 such as \"127.42.7\", got %q", subnet)
		}
		for n := 2; n < 255; n++ {
			addrs = append(addrs, fmt.Sprintf("%s.%d", subnet, n))
		}
	}
	if cfg.Settings["addresses"] != "" {
		// Each machine's plain-HTTP listeners go to a loopback address
		// of its own (loopbackOf): two addresses that hash to one would
		// fail every spawn on the second, so they are refused here.
		seen := map[string]string{}
		for _, a := range addrs {
			l := loopbackOf(filepath.Clean(env.ClusterDir), a)
			if other, dup := seen[l]; dup {
				return nil, fmt.Errorf("setting addresses: %s and %s would share the loopback address %s: list one of them in another backend", other, a, l)
			}
			seen[l] = a
		}
	}
	return &Backend{
		name:      cfg.Name,
		dir:       filepath.Join(env.ClusterDir, "machines"),
		addresses: addrs,
		explicit:  cfg.Settings["addresses"] != "",
		bindAddr:  env.BindAddr,
		binary:    env.Binary,
		consul:    env.ConsulBinary,
		rescan:    watchRescan,
	}, nil
}

// subnetOf derives a cluster's /24 in 127.0.0.0/8 from its folder. It avoids
// 127.0.0.0/24, where other local services tend to listen.
func subnetOf(clusterDir string) string {
	abs, err := filepath.Abs(clusterDir)
	if err != nil {
		abs = clusterDir
	}
	h := fnv.New32a()
	h.Write([]byte(abs))
	v := h.Sum32()
	return fmt.Sprintf("127.%d.%d", 16+v%224, (v>>8)%256)
}

// loopbackOf is the loopback address of the machine on configured address
// addr: its plain-HTTP listeners' (nodeconfig.Config.LoopbackAddr), apart
// from the host's own agent's on 127.0.0.1 and from every other machine's.
// It is in 127.240.0.0 to 127.254.255.255, where subnetOf never puts a
// cluster's machines.
func loopbackOf(clusterDir, addr string) string {
	h := fnv.New32a()
	h.Write([]byte(clusterDir + "\x00" + addr))
	v := h.Sum32()
	return fmt.Sprintf("127.%d.%d.%d", 240+v%15, (v>>8)%256, 1+(v>>16)%254)
}

// machineDir returns the folder of a machine in a cluster folder.
func machineDir(clusterDir, machineID string) string {
	return filepath.Join(clusterDir, "machines", machineID)
}

// MachineArch is this host's architecture: its machines are processes
// that run on it (backends.Archer).
func (b *Backend) MachineArch() string { return arch.Native() }

// Available checks that the binaries a machine needs are there.
//
// It also says whether this machine is one the backend's machines are
// reachable from: every member may be asked to run a spawn (the leader
// places it on one that offers the backend), and a machine on loopback is
// reachable only from its host's own network. So configured addresses must
// be this machine's own, and loopback machines are made only by a node
// that itself lives on loopback (a local cluster's), never by one bound to
// a real network (an adopted server, a container).
func (b *Backend) Available(ctx context.Context) error {
	for _, bin := range []string{b.binary, b.consul} {
		if _, err := os.Stat(bin); err != nil {
			return fmt.Errorf("local backend: %w", err)
		}
	}
	if b.explicit {
		own, err := ownAddresses()
		if err != nil {
			return fmt.Errorf("local backend: list this machine's addresses: %w", err)
		}
		for _, a := range b.addresses {
			if own[a] {
				return nil
			}
		}
		return fmt.Errorf("local backend: none of its addresses (%s) is this machine's", strings.Join(b.addresses, ", "))
	}
	if b.bindAddr != "" {
		if ip, err := netip.ParseAddr(b.bindAddr); err != nil || !ip.IsLoopback() {
			return fmt.Errorf("local backend: its machines are on loopback, out of reach of this machine's network (%s)", b.bindAddr)
		}
	}
	return nil
}

// Scope names this machine's kernel (its boot) and network namespace, and
// the folder of machines: loopback machines are reachable, listable and
// destroyable exactly from there.
func (b *Backend) Scope(context.Context) (string, error) {
	boot, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return "", err
	}
	netns, err := os.Readlink("/proc/self/ns/net")
	if err != nil {
		return "", err
	}
	return "local:" + strings.TrimSpace(string(boot)) + "/" + netns + ":" + b.dir, nil
}

// FreeMemory is the kernel's estimate of the memory available to new
// processes (MemAvailable), in bytes.
func (b *Backend) FreeMemory(context.Context) (uint64, error) {
	return memAvailable("/proc/meminfo")
}

// memAvailable reads MemAvailable from a meminfo file, in bytes.
func memAvailable(path string) (uint64, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) == 3 && f[0] == "MemAvailable:" && f[2] == "kB" {
			kb, err := strconv.ParseUint(f[1], 10, 64)
			if err != nil {
				return 0, fmt.Errorf("%s: MemAvailable %q: %w", path, f[1], err)
			}
			return kb << 10, nil
		}
	}
	return 0, fmt.Errorf("%s: no MemAvailable line", path)
}

// ownAddresses are the IP addresses of this machine's interfaces.
func ownAddresses() (map[string]bool, error) {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return nil, err
	}
	own := map[string]bool{}
	for _, a := range addrs {
		if p, err := netip.ParsePrefix(a.String()); err == nil {
			own[p.Addr().String()] = true
		}
	}
	return own, nil
}

// Spawn allocates the lowest free address of the subnet, writes the machine's
// config and starts its agent in a new session.
func (b *Backend) Spawn(ctx context.Context, spec backends.Spec) (backends.Instance, error) {
	node := spec.Node
	if node.Mesh != nil {
		return backends.Instance{}, ErrNoMesh
	}
	if err := os.MkdirAll(b.dir, 0o755); err != nil {
		return backends.Instance{}, err
	}
	// The lock makes address allocation atomic across spawners, including an
	// old leader that has not noticed it lost the lock yet.
	unlock, err := fsutil.LockDir(ctx, b.dir, 0o644)
	if err != nil {
		return backends.Instance{}, err
	}
	defer unlock()
	addr, err := b.freeAddress()
	if err != nil {
		return backends.Instance{}, err
	}
	mdir := filepath.Join(b.dir, node.MachineID)
	if err := os.Mkdir(mdir, 0o755); err != nil {
		return backends.Instance{}, fmt.Errorf("machine %s: %w", node.MachineID, err)
	}
	node.Backend = b.name
	node.BindAddr = addr
	if b.explicit {
		node.LoopbackAddr = loopbackOf(filepath.Dir(b.dir), addr)
	}
	node.DataDir = filepath.Join(mdir, "data")
	node.ClusterDir = filepath.Dir(b.dir)
	node.ConsulBinary = b.consul
	node.FastGossip = true
	inst, err := b.start(mdir, node)
	if err != nil {
		os.RemoveAll(mdir)
		return backends.Instance{}, fmt.Errorf("machine %s: %w", node.MachineID, err)
	}
	return inst, nil
}

func (b *Backend) start(mdir string, node nodeconfig.Config) (backends.Instance, error) {
	cfgPath := filepath.Join(mdir, "agent.json")
	if err := nodeconfig.Write(cfgPath, node); err != nil {
		return backends.Instance{}, err
	}
	logf, err := os.OpenFile(filepath.Join(mdir, "agent.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return backends.Instance{}, err
	}
	defer logf.Close()
	cmd := exec.Command(b.binary, "agent", "-config", cfgPath)
	cmd.Dir = mdir
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = append(procenv.Child(), "RAPTIFORMICA_MACHINE_DIR="+mdir)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return backends.Instance{}, fmt.Errorf("start agent: %w", err)
	}
	pid := cmd.Process.Pid
	// Reap the child if it exits while we live; after we die, init does.
	go cmd.Wait()
	if err := os.WriteFile(filepath.Join(mdir, "pid"), []byte(strconv.Itoa(pid)+"\n"), 0o644); err != nil {
		killGroup(pid, syscall.SIGKILL)
		return backends.Instance{}, err
	}
	spawns.tell(b.dir)
	return backends.Instance{MachineID: node.MachineID, MachineType: node.MachineType, Address: node.BindAddr, Running: true, Created: time.Now()}, nil
}

// ErrNoMesh refuses a mesh machine: the local backend's machines share one
// host, and the overlay gives each machine an interface routing all of
// 200::/7, which only one per host can have.
var ErrNoMesh = errors.New(`the local backend runs every machine on this host and cannot give each its own overlay interface; set mesh = "none" in the description (its machines reach each other on loopback anyway)`)

// CanSeed says the backend can start the first machine of a new cluster:
// it keeps no state in the cluster's KV.
func (b *Backend) CanSeed() error { return nil }

// freeAddress is an address of the backend's for one more machine. Of
// configured addresses only this machine's own are handed out: one
// description lists the addresses of every host that may run the backend,
// and each host makes machines on its own.
func (b *Backend) freeAddress() (string, error) {
	used := map[string]bool{}
	insts, err := b.List(context.Background())
	if err != nil {
		return "", err
	}
	last := -1
	for _, in := range insts {
		used[in.Address] = true
	}
	for i, a := range b.addresses {
		if used[a] {
			last = i
		}
	}
	mine := len(b.addresses)
	if b.explicit {
		own, err := ownAddresses()
		if err != nil {
			return "", fmt.Errorf("local backend: list this machine's addresses: %w", err)
		}
		for _, a := range b.addresses {
			if !own[a] {
				used[a] = true // another host's
				mine--
			}
		}
	}
	// The first free address after the highest in use, then from the
	// start: an address freed a moment ago (a dead machine destroyed
	// while its replacement spawns) is not handed out again at once,
	// while Consul and Raft may still know the dead machine by it.
	for i := range b.addresses {
		if a := b.addresses[(last+1+i)%len(b.addresses)]; !used[a] {
			return a, nil
		}
	}
	if b.explicit {
		// The planner counts a host's room only by max_per_host.
		return "", fmt.Errorf("local backend %s: all %d of its addresses on this host are taken (its max_per_host tells the leader so: set it to %d)", b.name, mine, mine)
	}
	return "", fmt.Errorf("local backend %s: all %d addresses are taken", b.name, mine)
}

// Destroy signals the machine's process group, waits for it to exit (SIGKILL
// after a grace period) and removes its folder.
func (b *Backend) Destroy(ctx context.Context, machineID string) error {
	if machineID == "" || strings.ContainsAny(machineID, "/.") {
		return fmt.Errorf("local backend: bad machine id %q", machineID)
	}
	mdir := filepath.Join(b.dir, machineID)
	if err := stopMachine(ctx, mdir); err != nil {
		return err
	}
	if err := os.RemoveAll(mdir); err != nil {
		return fmt.Errorf("machine %s: %w", machineID, err)
	}
	return nil
}

// stopMachine ends the processes of the machine in mdir, if any: SIGTERM to
// its process group, then SIGKILL when it has not exited within 10 seconds or
// when ctx ends.
func stopMachine(ctx context.Context, mdir string) error {
	pid, alive := agentPID(mdir)
	if !alive {
		return nil
	}
	killGroup(pid, syscall.SIGTERM)
	deadline := time.NewTimer(10 * time.Second)
	defer deadline.Stop()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for groupAlive(pid) {
		select {
		case <-ctx.Done():
			killGroup(pid, syscall.SIGKILL)
			return ctx.Err()
		case <-deadline.C:
			killGroup(pid, syscall.SIGKILL)
		case <-tick.C:
		}
	}
	return nil
}

// List reads every machine folder.
func (b *Backend) List(ctx context.Context) ([]backends.Instance, error) {
	return b.list(func(nodeconfig.Config) bool { return true })
}

// ListMadeBy reads the folders of the machines maker made, and of those
// whose maker is not written (made before makers were): another maker's
// machine costs a stat of its config, not a look at its process.
func (b *Backend) ListMadeBy(ctx context.Context, maker string) ([]backends.Instance, error) {
	return b.list(func(n nodeconfig.Config) bool { return n.MadeBy == "" || n.MadeBy == maker })
}

// list reads the machine folders whose config want keeps.
func (b *Backend) list(want func(nodeconfig.Config) bool) ([]backends.Instance, error) {
	ents, err := os.ReadDir(b.dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("local backend: %w", err)
	}
	var out []backends.Instance
	b.nodesMu.Lock()
	seen := make(map[string]parsedNode, len(ents))
	defer func() {
		b.nodes = seen // forgets the machines that are gone
		b.nodesMu.Unlock()
	}()
	for _, e := range ents {
		if !e.IsDir() {
			continue
		}
		mdir := filepath.Join(b.dir, e.Name())
		node, err := b.node(mdir, seen)
		if err != nil {
			// A folder being created holds no config yet; it is not a
			// machine until Spawn finishes under the lock.
			continue
		}
		if !want(node) {
			continue
		}
		info, _ := e.Info()
		_, alive := agentPID(mdir)
		in := backends.Instance{MachineID: node.MachineID, MachineType: node.MachineType, Address: node.BindAddr, Running: alive, MadeBy: node.MadeBy}
		if info != nil {
			in.Created = info.ModTime()
		}
		out = append(out, in)
	}
	return out, nil
}

// node is the config of the machine in mdir, parsed again only when its
// file changed since the last List; it is noted in seen. b.nodesMu is held.
func (b *Backend) node(mdir string, seen map[string]parsedNode) (nodeconfig.Config, error) {
	fi, err := os.Stat(filepath.Join(mdir, "agent.json"))
	if err != nil {
		return nodeconfig.Config{}, err
	}
	p := parsedNode{size: fi.Size(), mod: fi.ModTime()}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		p.ino, p.ctim = int64(st.Ino), time.Unix(st.Ctim.Unix())
	}
	if was, ok := b.nodes[mdir]; ok && was.ino == p.ino && was.size == p.size && was.mod.Equal(p.mod) && was.ctim.Equal(p.ctim) {
		seen[mdir] = was
		return was.node, nil
	}
	if p.node, err = readNode(mdir); err != nil {
		return p.node, err
	}
	seen[mdir] = p
	return p.node, nil
}

func readNode(mdir string) (nodeconfig.Config, error) {
	var c nodeconfig.Config
	raw, err := os.ReadFile(filepath.Join(mdir, "agent.json"))
	if err != nil {
		return c, err
	}
	err = json.Unmarshal(raw, &c)
	return c, err
}

// agentPID returns the machine's agent PID and whether that process is alive
// and really this machine's agent (PIDs are reused).
func agentPID(mdir string) (int, bool) {
	raw, err := os.ReadFile(filepath.Join(mdir, "pid"))
	if err != nil {
		return 0, false
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(raw)))
	if err != nil || pid <= 1 {
		return 0, false
	}
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return pid, false
	}
	if !strings.Contains(string(cmdline), filepath.Join(mdir, "agent.json")) {
		return pid, false
	}
	if st, err := procstat.Of(pid); err == nil && st.State == 'Z' {
		return pid, false // exited, not yet reaped
	}
	return pid, true
}

func killGroup(pgid int, sig syscall.Signal) {
	_ = syscall.Kill(-pgid, sig)
}

// groupProcs returns the PIDs and states of a process group's members,
// zombies included.
func groupProcs(pgid int) map[int]byte {
	procs := map[int]byte{}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if st, err := procstat.Of(pid); err == nil && st.PGRP == pgid {
			procs[pid] = st.State
		}
	}
	return procs
}

// groupMembers counts the processes of a group, zombies included.
func groupMembers(pgid int) int { return len(groupProcs(pgid)) }

// groupAlive reports whether any process of the group has not exited.
func groupAlive(pgid int) bool {
	if syscall.Kill(-pgid, 0) != nil {
		return false
	}
	for pid, state := range groupProcs(pgid) {
		if state != 'Z' || threadsLive(pid) {
			return true
		}
	}
	return false
}

// threadsLive reports whether any thread of pid has not exited yet. The
// leader thread of an exiting multi-threaded process turns zombie before
// the others finish, and until they do its sockets are still open.
func threadsLive(pid int) bool {
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		return false
	}
	for _, t := range tasks {
		if st, err := procstat.Thread(pid, t.Name()); err == nil && !st.Exited() {
			return true
		}
	}
	return false
}

// Machine is a machine folder of a local cluster.
type Machine struct {
	Dir     string
	Config  nodeconfig.Config
	PID     int
	Running bool
}

// Machines lists the machines in a cluster folder, whether their agent runs
// or not.
func Machines(clusterDir string) ([]Machine, error) {
	dir := filepath.Join(clusterDir, "machines")
	ents, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []Machine
	for _, e := range ents {
		if !e.IsDir() {
			continue
		}
		mdir := filepath.Join(dir, e.Name())
		cfg, err := readNode(mdir)
		if err != nil {
			continue
		}
		pid, alive := agentPID(mdir)
		out = append(out, Machine{Dir: mdir, Config: cfg.WithDefaults(), PID: pid, Running: alive})
	}
	return out, nil
}

// RemoveAll ends every machine of the backend's cluster folder: KillAll.
func (b *Backend) RemoveAll(ctx context.Context) (int, error) {
	return KillAll(ctx, filepath.Dir(b.dir))
}

// KillAll ends every process of every machine in a cluster folder at once
// (SIGKILL: the cluster is being torn down, there is nobody to leave to),
// waits until none is left, and removes the machines.
func KillAll(ctx context.Context, clusterDir string) (int, error) {
	n := 0
	// A leader still running while its siblings die spawns replacements:
	// look again until no machine runs.
	for {
		ms, err := Machines(clusterDir)
		if err != nil {
			return n, err
		}
		killed := 0
		for _, m := range ms {
			if m.Running {
				killGroup(m.PID, syscall.SIGKILL)
				killed++
			}
		}
		for _, m := range ms {
			if !m.Running {
				continue
			}
			if err := clock.Poll(ctx, clock.Real{}, 50*time.Millisecond, func() (bool, error) { return !groupAlive(m.PID), nil }); err != nil {
				return n, err
			}
		}
		n += killed
		if killed == 0 {
			break
		}
		// Until init has reaped them, exiting processes may still hold
		// their sockets: give it a moment, so that `down` returns with
		// every port closed.
		settle, cancel := context.WithTimeout(ctx, 3*time.Second)
		for _, m := range ms {
			if m.Running {
				_ = clock.Poll(settle, clock.Real{}, 20*time.Millisecond, func() (bool, error) { return groupMembers(m.PID) == 0, nil })
			}
		}
		cancel()
	}
	return n, os.RemoveAll(filepath.Join(clusterDir, "machines"))
}
