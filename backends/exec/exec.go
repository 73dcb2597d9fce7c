// Package exec is the backend whose machines are made by commands the user
// writes: the original project's compute modules (Docker, Vagrant, anything
// with a command line), with the same command names and meaning.
//
// Every command is an argv list run with a timeout, in its own process group
// (a timeout kills the whole group), with the machine's data in environment
// variables and never interpolated into the command:
//
//	RAPTIFORMICA_CLUSTER         the cluster name
//	RAPTIFORMICA_BACKEND         this backend's name
//	RAPTIFORMICA_MACHINE_ID      the machine (not set for available and list_instances)
//	RAPTIFORMICA_MACHINE_TYPE    its type (start_instance only)
//	RAPTIFORMICA_WORKDIR         the machine's working folder, also the command's
//	RAPTIFORMICA_AGENT_CONFIG    the agent config to start the machine with
//	RAPTIFORMICA_BINARY          this node's raptiformica binary
//	RAPTIFORMICA_CONSUL_BINARY   this node's Consul binary
//	RAPTIFORMICA_SETTING_<NAME>  each setting this package does not read itself
//
// A backend whose setting contract is "ssh" follows the original project's
// contract instead: start_instance makes a machine that root can log into
// over SSH at get_hostname:get_port, and the backend then adopts it (an
// Adopter, which package provision implements: builtin wires it in).
//
// A machine's working folder is <cluster dir>/exec/<backend>/<machine id>. It
// holds agent.json, instance.json (what get_hostname and get_port printed)
// and commands.log (every command's output). It lives on the node that
// spawned the machine; commands that find their machine by
// RAPTIFORMICA_MACHINE_ID rather than by files in the folder work from any
// leader.
package exec

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"os"
	osexec "os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/raptiformica/raptiformica/backends"
	"github.com/raptiformica/raptiformica/internal/arch"
	"github.com/raptiformica/raptiformica/internal/capped"
	"github.com/raptiformica/raptiformica/internal/fsutil"
	"github.com/raptiformica/raptiformica/internal/logfile"
	"github.com/raptiformica/raptiformica/internal/nodeconfig"
	"github.com/raptiformica/raptiformica/internal/procenv"
	"github.com/raptiformica/raptiformica/internal/source"
)

var (
	_ backends.Seeder    = (*Backend)(nil)
	_ backends.LocalView = (*Backend)(nil)
)

// Type is the name the exec backend is registered under.
const Type = "exec"

// The commands of an exec backend. The names and their meaning are those of
// the original project's JSON compute modules, plus CmdList.
const (
	// CmdAvailable exits 0 when the backend can make machines now.
	CmdAvailable = "available"
	// CmdStart makes the machine and starts its agent.
	CmdStart = "start_instance"
	// CmdHostname prints the machine's address.
	CmdHostname = "get_hostname"
	// CmdPort prints the machine's SSH port.
	CmdPort = "get_port"
	// CmdRunning exits 0 while the machine still runs.
	CmdRunning = "detect_stale_instance"
	// CmdCleanUp stops the machine and removes it.
	CmdCleanUp = "clean_up_instance_command"
	// CmdList prints every machine of the cluster the backend holds, one
	// per line: "<machine id> <state> [<address>]", the state "running" for
	// a running one. Without it the backend knows only the machines spawned
	// from the node it runs on.
	CmdList = "list_instances"
)

// Commands are the command names an exec backend accepts.
var Commands = []string{CmdAvailable, CmdStart, CmdHostname, CmdPort, CmdRunning, CmdCleanUp, CmdList}

// Required are the commands every exec backend must have.
var Required = []string{CmdStart, CmdHostname, CmdCleanUp}

// What start_instance makes, the setting contract.
const (
	// ContractAgent (the default): start_instance starts our agent on the
	// machine with $RAPTIFORMICA_AGENT_CONFIG.
	ContractAgent = "agent"
	// ContractSSH, the original project's: start_instance makes a machine
	// that root can log into over SSH at get_hostname:get_port (22 without
	// get_port), and the backend adopts it. The original's compute modules
	// are all in this contract.
	ContractSSH = "ssh"
)

// Settings this package reads for the SSH contract.
const (
	// SettingContract is ContractAgent or ContractSSH.
	SettingContract = "contract"
	// SettingIdentity is the private key file root's login uses (on the
	// node that runs the backend); without it, the agent's own keys:
	// ~/.ssh/id_ed25519, id_ecdsa or id_rsa of the user it runs as, or
	// its SSH agent (SSH_AUTH_SOCK), as `raptiformica adopt` uses.
	SettingIdentity = "identity"
	// SettingArch is the architecture of the machines the backend makes
	// (backends.Archer). In the agent contract, RAPTIFORMICA_BINARY and
	// RAPTIFORMICA_CONSUL_BINARY are then the pair built for it; in the
	// SSH contract, a machine of another is refused when adopted.
	SettingArch = "arch"
)

// SSHMachine is a machine made in the SSH contract, for an Adopter.
type SSHMachine struct {
	// Addr and Port are what get_hostname and get_port printed.
	Addr string
	Port int
	// Identity is the private key file to log in with; empty: the
	// agent's own keys.
	Identity string
	// Node is the agent config the machine is to run: its ID, type,
	// backend and credentials.
	Node nodeconfig.Config
	// Binary and Consul are this node's binaries: the pair installed
	// there when it is of this node's architecture (see arch.Artifacts).
	Binary, Consul string
	// Arch, when set, is the architecture the machine must be (the
	// backend's arch setting).
	Arch string
	// Progress, when set, is told each adoption step as it ends, as one
	// line.
	Progress func(step string)
}

// Adopter turns a machine made in the SSH contract into a node. Package
// provision implements it with the SSH adoption `raptiformica adopt` uses;
// it lives there so that this package does not depend on SSH.
type Adopter interface {
	// Adopt installs and starts the agent on m as root over SSH. It
	// blocks until done or ctx ends, and trusts the host key m presents
	// for this call only.
	Adopt(ctx context.Context, m SSHMachine) error
	// CheckIdentity says why no SSH identity can be used to log in
	// (identity empty: the agent's own keys), nil when one can.
	CheckIdentity(identity string) error
}

// Check reports what is wrong in an exec backend's commands and source: a
// required command missing, an unknown name, an argv list without a
// program, a source or ref that the rule for code that is cloned and run
// refuses (package internal/source). The description's parser calls it
// (through the registry) to name the line; New refuses the same.
func Check(cfg backends.Config) []backends.Problem {
	var probs []backends.Problem
	src, ref := cfg.Settings["source"], cfg.Settings["ref"]
	if src != "" {
		if err := source.Check(src); err != nil {
			probs = append(probs, backends.Problem{Field: "settings source", Message: err.Error()})
		}
	}
	if err := source.CheckRef(ref); err != nil {
		probs = append(probs, backends.Problem{Field: "settings ref", Message: err.Error()})
	} else if ref != "" && src == "" {
		probs = append(probs, backends.Problem{Field: "settings ref", Message: "a ref needs a source: it names a branch, tag or commit of one"})
	}
	for _, name := range Required {
		if _, ok := cfg.Commands[name]; !ok {
			probs = append(probs, backends.Problem{Field: "commands", Message: fmt.Sprintf("an exec backend needs the command %q", name)})
		}
	}
	names := make([]string, 0, len(cfg.Commands))
	for name := range cfg.Commands {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		switch argv := cfg.Commands[name]; {
		case !slices.Contains(Commands, name):
			probs = append(probs, backends.Problem{Field: "commands " + name, Message: fmt.Sprintf("unknown command (known: %s)", strings.Join(Commands, ", "))})
		case len(argv) == 0 || argv[0] == "":
			probs = append(probs, backends.Problem{Field: "commands " + name, Message: `must be an argv list with the program first, such as ["/bin/sh", "-c", "vagrant up"]`})
		}
	}
	return probs
}

// Where the agent runs on a machine made by commands, unless settings say
// otherwise: the paths of the node image.
const (
	defaultDataDir = "/var/lib/raptiformica"
	defaultConsul  = "/usr/local/bin/consul"
)

// outputLimit bounds how much of a command's output is kept in memory,
// for stdout and stderr each.
const outputLimit = 64 << 10

// commandsLogLimit is the size at which a machine's commands.log is
// rotated to commands.log.1.
const commandsLogLimit = 4 << 20

// Backend makes machines by running commands.
type Backend struct {
	name     string
	cluster  string
	dir      string // <cluster dir>/exec/<backend>
	cmds     map[string][]string
	source   string // cloned into each working folder, at ref
	ref      string
	timeout  time.Duration // start_instance and clean_up_instance_command
	query    time.Duration // every other command
	node     nodeconfig.Config
	settings []string // RAPTIFORMICA_SETTING_* variables
	binary   string
	consul   string
	ssh      bool   // contract is ContractSSH: adopt what start_instance made
	identity string // SettingIdentity
	arch     string // SettingArch
	adopter  Adopter

	logMu sync.Mutex // serialises writes to the machines' commands.log
}

var settingName = regexp.MustCompile(`^[a-z][a-z0-9_]*$`)

// New builds an exec backend. Settings this package reads:
//
//	timeout        for start_instance and clean_up_instance_command (default 10m)
//	query_timeout  for every other command (default 30s)
//	source         a git repository cloned into each machine's working folder
//	ref            its branch, tag or the full commit it is pinned to
//	bind_addr      the agent's bind address on the machine (default "auto")
//	data_dir       the agent's data folder on the machine (default /var/lib/raptiformica)
//	consul_binary  Consul's path on the machine (default /usr/local/bin/consul)
//	lead           "false" when the machines cannot run these commands
//	               themselves, so they never become leader
//	contract       "agent" (the default) or "ssh" (see ContractSSH)
//	identity       the private key file for the SSH contract's login
//	arch           the architecture of the machines it makes (Go's name:
//	               amd64, arm64, 386, arm), which placement trusts: a type
//	               with archs goes only to backends that say one of them
//
// Every other setting is passed to the commands as RAPTIFORMICA_SETTING_<NAME>.
// New cannot adopt machines: a backend in the SSH contract needs NewFactory.
func New(cfg backends.Config, env backends.Env) (backends.Backend, error) {
	return build(cfg, env, nil)
}

// NewFactory is New with machines in the SSH contract adopted by a.
func NewFactory(a Adopter) backends.Factory {
	return func(cfg backends.Config, env backends.Env) (backends.Backend, error) { return build(cfg, env, a) }
}

func build(cfg backends.Config, env backends.Env, adopter Adopter) (backends.Backend, error) {
	if env.ClusterDir == "" {
		return nil, errors.New("exec backend: this machine's node config has no cluster_dir, where the machines it makes are kept")
	}
	if probs := Check(cfg); len(probs) > 0 {
		return nil, fmt.Errorf("%s: %s", probs[0].Field, probs[0].Message)
	}
	b := &Backend{
		name:    cfg.Name,
		cluster: env.Cluster,
		dir:     filepath.Join(env.ClusterDir, "exec", strings.ReplaceAll(cfg.Name, "/", "_")),
		cmds:    cfg.Commands,
		timeout: 10 * time.Minute,
		query:   30 * time.Second,
		binary:  env.Binary,
		consul:  env.ConsulBinary,
		adopter: adopter,
		node:    nodeconfig.Config{BindAddr: nodeconfig.BindAuto, DataDir: defaultDataDir, ConsulBinary: defaultConsul},
	}
	keys := make([]string, 0, len(cfg.Settings))
	for k := range cfg.Settings {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		v := cfg.Settings[k]
		var err error
		switch k {
		case "timeout":
			b.timeout, err = positiveDuration(v)
		case "query_timeout":
			b.query, err = positiveDuration(v)
		case "source":
			b.source = v
		case "ref":
			b.ref = v
		case "bind_addr":
			b.node.BindAddr = v
		case "data_dir":
			b.node.DataDir = v
		case "consul_binary":
			b.node.ConsulBinary = v
		case "lead":
			var lead bool
			lead, err = strconv.ParseBool(v)
			b.node.NeverLead = !lead
		case SettingContract:
			switch v {
			case ContractAgent:
			case ContractSSH:
				b.ssh = true
			default:
				err = fmt.Errorf("want %q (start_instance starts our agent) or %q (it makes a machine root can SSH into, which is adopted), got %q", ContractAgent, ContractSSH, v)
			}
		case SettingIdentity:
			b.identity = v
		case SettingArch:
			if !arch.Valid(v) {
				err = fmt.Errorf("want one of %s (Go's names), got %q", strings.Join(arch.Known, ", "), v)
			}
			b.arch = v
		default:
			if !settingName.MatchString(k) {
				err = errors.New("want lower-case letters, digits and _, as it becomes an environment variable")
			}
			b.settings = append(b.settings, "RAPTIFORMICA_SETTING_"+strings.ToUpper(k)+"="+v)
		}
		if err != nil {
			return nil, fmt.Errorf("setting %s: %w", k, err)
		}
	}
	if b.identity != "" && !b.ssh {
		return nil, fmt.Errorf("setting %s: only for contract = %q, whose machines are logged into over SSH", SettingIdentity, ContractSSH)
	}
	if b.ssh && b.adopter == nil {
		return nil, fmt.Errorf("setting %s: %q needs SSH adoption, which this build of the exec backend lacks", SettingContract, ContractSSH)
	}
	return b, nil
}

func positiveDuration(s string) (time.Duration, error) {
	d, err := time.ParseDuration(s)
	if err == nil && d <= 0 {
		err = fmt.Errorf("must be positive, got %s", s)
	}
	return d, err
}

// ListsOnlyLocal reports whether List sees only the machines spawned from
// this node: true without a list_instances command.
func (b *Backend) ListsOnlyLocal() bool { return len(b.cmds[CmdList]) == 0 }

// Available runs the available command, after checking that every command's
// program is on this node, so that a node without the tools says which.
func (b *Backend) Available(ctx context.Context) error {
	for _, name := range Commands {
		argv := b.cmds[name]
		if len(argv) == 0 {
			continue
		}
		if _, err := osexec.LookPath(argv[0]); err != nil {
			return fmt.Errorf("%s: program %q not found on this node", name, argv[0])
		}
	}
	if err := b.checkIdentity(); err != nil {
		return err
	}
	if b.arch != "" {
		// Whichever contract: the machines get the pair built for it.
		if _, _, err := (arch.Artifacts{Binary: b.binary, Consul: b.consul}).For(b.arch); err != nil {
			return err
		}
	}
	if len(b.cmds[CmdAvailable]) == 0 {
		return nil
	}
	_, err := b.run(ctx, CmdAvailable, b.dir, nil)
	return err
}

// MachineArch is the arch setting: what this backend's machines run on,
// empty when it does not say (backends.Archer).
func (b *Backend) MachineArch() string { return b.arch }

// binaries are the agent and Consul the commands are given: this node's
// own, or, in the agent contract with an arch setting, the pair built for
// it. In the SSH contract the adoption picks the pair for each machine.
func (b *Backend) binaries() (binary, consul string, err error) {
	if b.arch == "" || b.ssh {
		return b.binary, b.consul, nil
	}
	return arch.Artifacts{Binary: b.binary, Consul: b.consul}.For(b.arch)
}

// instanceFile records what a machine's commands printed when it started.
type instanceFile struct {
	MachineID   string    `json:"machine_id"`
	MachineType string    `json:"machine_type"`
	Address     string    `json:"address"`
	Port        int       `json:"port,omitempty"`
	Created     time.Time `json:"created"`
}

// Spawn clones the source (if any) into a new working folder, writes the
// agent config there and runs start_instance, then get_hostname and
// get_port. When any step fails it runs clean_up_instance_command, so that no
// machine is left running unrecorded; if that fails too, the folder stays
// for Destroy to retry.
func (b *Backend) Spawn(ctx context.Context, spec backends.Spec) (backends.Instance, error) {
	node := spec.Node
	if err := checkID(node.MachineID); err != nil {
		return backends.Instance{}, err
	}
	wd := filepath.Join(b.dir, node.MachineID)
	if err := os.MkdirAll(b.dir, 0o755); err != nil {
		return backends.Instance{}, err
	}
	if err := os.Mkdir(wd, 0o755); err != nil {
		return backends.Instance{}, fmt.Errorf("machine %s: %w", node.MachineID, err)
	}
	inst, err := b.start(ctx, wd, node)
	if err == nil {
		return inst, nil
	}
	err = fmt.Errorf("machine %s: %w", node.MachineID, err)
	// The caller's context may be what ended the spawn; cleaning up must not
	// end with it.
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), b.timeout)
	defer cancel()
	if cerr := b.Destroy(cctx, node.MachineID); cerr != nil {
		return backends.Instance{}, fmt.Errorf("%w; cleaning up failed too, will retry: %v", err, cerr)
	}
	return backends.Instance{}, err
}

// CanSeed says the backend can start the first machine of a new cluster:
// it keeps no state in the cluster's KV.
func (b *Backend) CanSeed() error { return nil }

// checkIdentity refuses, in the SSH contract, a node without a way to log
// into the machines: better said before a machine is made than after.
func (b *Backend) checkIdentity() error {
	if !b.ssh {
		return nil
	}
	if err := b.adopter.CheckIdentity(b.identity); err != nil {
		return fmt.Errorf("machines of %s are logged into as root over SSH (contract %q), but %w", b.name, ContractSSH, err)
	}
	return nil
}

func (b *Backend) start(ctx context.Context, wd string, node nodeconfig.Config) (backends.Instance, error) {
	if err := b.checkIdentity(); err != nil {
		return backends.Instance{}, err
	}
	if b.source != "" {
		if err := b.clone(ctx, wd); err != nil {
			return backends.Instance{}, err
		}
	}
	node.Backend = b.name
	node.BindAddr = b.node.BindAddr
	node.DataDir = b.node.DataDir
	node.ConsulBinary = b.node.ConsulBinary
	node.NeverLead = b.node.NeverLead
	node.ClusterDir = ""
	cfgPath := filepath.Join(wd, "agent.json")
	if err := nodeconfig.Write(cfgPath, node); err != nil {
		return backends.Instance{}, err
	}
	env := []string{
		"RAPTIFORMICA_MACHINE_ID=" + node.MachineID,
		"RAPTIFORMICA_MACHINE_TYPE=" + node.MachineType,
		"RAPTIFORMICA_AGENT_CONFIG=" + cfgPath,
	}
	if _, err := b.run(ctx, CmdStart, wd, env); err != nil {
		return backends.Instance{}, err
	}
	out, err := b.run(ctx, CmdHostname, wd, env[:1])
	if err != nil {
		return backends.Instance{}, err
	}
	addr, err := parseHost(out)
	if err != nil {
		return backends.Instance{}, fmt.Errorf("%s: %w", CmdHostname, err)
	}
	rec := instanceFile{MachineID: node.MachineID, MachineType: node.MachineType, Address: addr, Created: time.Now().UTC()}
	if b.ssh {
		rec.Port = 22 // the original's default, for a module without get_port
	}
	if len(b.cmds[CmdPort]) > 0 {
		out, err := b.run(ctx, CmdPort, wd, env[:1])
		if err != nil {
			return backends.Instance{}, err
		}
		if rec.Port, err = parsePort(out); err != nil {
			return backends.Instance{}, fmt.Errorf("%s: %w", CmdPort, err)
		}
	}
	data, _ := json.MarshalIndent(rec, "", "  ")
	if err := fsutil.WriteFileAtomic(filepath.Join(wd, "instance.json"), append(data, '\n'), 0o644); err != nil {
		return backends.Instance{}, err
	}
	if b.ssh {
		if err := b.adopt(ctx, wd, node, rec); err != nil {
			return backends.Instance{}, err
		}
	}
	return backends.Instance{MachineID: rec.MachineID, MachineType: rec.MachineType, Address: addr, Running: true, Created: rec.Created}, nil
}

// adopt installs the agent on a machine made in the SSH contract, within
// the spawn's deadline (the provision timeout, from the control loop) and
// never longer than the backend's timeout, its outcome in commands.log.
func (b *Backend) adopt(ctx context.Context, wd string, node nodeconfig.Config, rec instanceFile) error {
	ctx, cancel := context.WithTimeout(ctx, b.timeout)
	defer cancel()
	started := time.Now()
	steps := capped.New(outputLimit)
	err := b.adopter.Adopt(ctx, SSHMachine{Addr: rec.Address, Port: rec.Port, Identity: b.identity, Node: node, Binary: b.binary, Consul: b.consul, Arch: b.arch,
		Progress: func(step string) { fmt.Fprintln(steps, step) }})
	if err != nil {
		err = fmt.Errorf("adopt over SSH at %s: %w", net.JoinHostPort(rec.Address, strconv.Itoa(rec.Port)), err)
	}
	argv := []string{"ssh", "root@" + net.JoinHostPort(rec.Address, strconv.Itoa(rec.Port))}
	b.logRun(wd, "adopt", argv, started, err, steps, capped.New(0))
	return err
}

// clone fetches the source at its ref into the working folder, as the
// original project did before running a module's commands there, and
// records what it fetched in commands.log.
func (b *Backend) clone(ctx context.Context, wd string) error {
	started := time.Now()
	out := capped.New(outputLimit)
	commit, err := source.Git{Timeout: b.timeout, Out: out}.Clone(ctx, b.source, b.ref, wd)
	if err != nil {
		err = fmt.Errorf("clone source %s: %w", b.source, err)
	} else {
		fmt.Fprintf(out, "commit %s\n", commit)
	}
	argv := []string{"git", "clone", b.source}
	if b.ref != "" {
		argv = append(argv, "--ref", b.ref)
	}
	b.logRun(wd, "clone", argv, started, err, out, capped.New(0))
	return err
}

// Destroy runs clean_up_instance_command in the machine's working folder
// (made empty when this node never had it) and removes the folder once the
// command succeeds. Whether a missing machine is an error is the command's
// to say; the original modules end theirs with "|| true".
func (b *Backend) Destroy(ctx context.Context, machineID string) error {
	if err := checkID(machineID); err != nil {
		return err
	}
	wd := filepath.Join(b.dir, machineID)
	if err := os.MkdirAll(wd, 0o755); err != nil {
		return err
	}
	if _, err := b.run(ctx, CmdCleanUp, wd, []string{"RAPTIFORMICA_MACHINE_ID=" + machineID}); err != nil {
		return fmt.Errorf("machine %s: %w", machineID, err)
	}
	if err := os.RemoveAll(wd); err != nil {
		return fmt.Errorf("machine %s: %w", machineID, err)
	}
	return nil
}

// List runs list_instances when there is one. Without it, it lists the
// working folders on this node and asks detect_stale_instance about each;
// a machine is taken to be running when there is no such command.
func (b *Backend) List(ctx context.Context) ([]backends.Instance, error) {
	local, err := b.localInstances()
	if err != nil {
		return nil, err
	}
	if !b.ListsOnlyLocal() {
		out, err := b.run(ctx, CmdList, b.dir, nil)
		if err != nil {
			return nil, err
		}
		return parseList(out, local)
	}
	ids := slices.Sorted(maps.Keys(local))
	insts := make([]backends.Instance, len(ids))
	// One check per machine: run a few at once, so that a pass over a
	// hundred machines costs a few checks' time, not a hundred, and no more
	// than a few processes at a time.
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(staleChecks)
	for i, id := range ids {
		in := local[id]
		g.Go(func() error {
			if len(b.cmds[CmdRunning]) > 0 && in.Running {
				_, err := b.run(gctx, CmdRunning, filepath.Join(b.dir, in.MachineID), []string{"RAPTIFORMICA_MACHINE_ID=" + in.MachineID})
				var exit *osexec.ExitError
				switch {
				case errors.As(err, &exit):
					in.Running = false
				case err != nil:
					return err
				}
			}
			insts[i] = in
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	return insts, nil
}

// staleChecks is how many detect_stale_instance commands List runs at once.
const staleChecks = 8

// localInstances reads the working folders on this node. A folder without
// instance.json is a spawn in progress or one whose clean-up failed: it is
// listed as not running, so that the control loop finishes removing it.
func (b *Backend) localInstances() (map[string]backends.Instance, error) {
	entries, err := os.ReadDir(b.dir)
	if errors.Is(err, os.ErrNotExist) {
		return map[string]backends.Instance{}, nil
	}
	if err != nil {
		return nil, err
	}
	out := make(map[string]backends.Instance, len(entries))
	for _, e := range entries {
		if !e.IsDir() || checkID(e.Name()) != nil {
			continue
		}
		in := backends.Instance{MachineID: e.Name()}
		if info, err := e.Info(); err == nil {
			in.Created = info.ModTime()
		}
		data, err := os.ReadFile(filepath.Join(b.dir, e.Name(), "instance.json"))
		var rec instanceFile
		if err == nil && json.Unmarshal(data, &rec) == nil {
			in = backends.Instance{MachineID: e.Name(), MachineType: rec.MachineType, Address: rec.Address, Running: true, Created: rec.Created}
		}
		out[in.MachineID] = in
	}
	return out, nil
}

// parseList reads list_instances' output: "<machine id> <state> [<address>]"
// per line. What this node knows of a machine fills in the rest.
func parseList(out string, local map[string]backends.Instance) ([]backends.Instance, error) {
	var insts []backends.Instance
	for i, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		bad := len(f) > 3 || len(f) < 2 || checkID(f[0]) != nil
		var addr string
		if !bad && len(f) == 3 {
			var err error
			addr, err = parseHost(f[2])
			bad = err != nil
		}
		if bad {
			return nil, fmt.Errorf("%s: line %d: want \"<machine id> <state> [<address>]\", got %q", CmdList, i+1, truncate(line))
		}
		in := local[f[0]]
		in.MachineID = f[0]
		in.Running = f[1] == "running"
		if addr != "" {
			in.Address = addr
		}
		insts = append(insts, in)
	}
	return insts, nil
}

// run runs one command. Its output goes to the working folder's
// commands.log when it has one; the error carries the end of its stderr.
func (b *Backend) run(ctx context.Context, name, wd string, env []string) (string, error) {
	argv := b.cmds[name]
	if len(argv) == 0 {
		return "", fmt.Errorf("no %s command", name)
	}
	timeout := b.query
	if name == CmdStart || name == CmdCleanUp {
		timeout = b.timeout
	}
	if wd == b.dir {
		if err := os.MkdirAll(wd, 0o755); err != nil {
			return "", err
		}
	}
	binary, consul, err := b.binaries()
	if err != nil {
		return "", err
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	c := osexec.CommandContext(ctx, argv[0], argv[1:]...)
	c.Dir = wd
	c.Env = append(procenv.Child(),
		"RAPTIFORMICA_CLUSTER="+b.cluster,
		"RAPTIFORMICA_BACKEND="+b.name,
		"RAPTIFORMICA_WORKDIR="+wd,
		"RAPTIFORMICA_BINARY="+binary,
		"RAPTIFORMICA_CONSUL_BINARY="+consul,
	)
	c.Env = append(append(c.Env, b.settings...), env...)
	// A group of its own, so that a timeout kills what the command started
	// too, not only the shell.
	c.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	c.Cancel = func() error { return syscall.Kill(-c.Process.Pid, syscall.SIGKILL) }
	c.WaitDelay = 5 * time.Second
	stdout, stderr := capped.New(outputLimit), capped.New(outputLimit)
	c.Stdout, c.Stderr = stdout, stderr
	// What is read from a command's output (a list above all) must be
	// whole: a short list would make machines look gone. Such a command
	// is stopped as soon as it overflows instead of printing until its
	// timeout; the others only lose the end of what they log.
	read := readsOutput[name]
	if read {
		go func() {
			select {
			case <-stdout.Overflow():
				cancel()
			case <-ctx.Done():
			}
		}()
	}
	started := time.Now()
	err = c.Run()
	if wd != b.dir {
		b.logRun(wd, name, argv, started, err, stdout, stderr)
	}
	switch {
	case read && stdout.Truncated():
		return "", fmt.Errorf("%s printed more than %s on its standard output and was stopped", name, capped.Size(outputLimit))
	case ctx.Err() == context.DeadlineExceeded:
		return "", fmt.Errorf("%s timed out after %s and was killed%s", name, timeout, tail(stderr.Bytes()))
	case err != nil:
		var exit *osexec.ExitError
		if errors.As(err, &exit) {
			return "", &commandError{name: name, exit: exit, stderr: tail(stderr.Bytes())}
		}
		return "", fmt.Errorf("%s: %w", name, err)
	}
	return stdout.String(), nil
}

// readsOutput are the commands whose standard output the backend parses.
var readsOutput = map[string]bool{CmdList: true, CmdHostname: true, CmdPort: true}

// commandError is a command that ran and exited non-zero; it unwraps to the
// *exec.ExitError so that callers can tell it from a command that could not
// run.
type commandError struct {
	name   string
	exit   *osexec.ExitError
	stderr string
}

func (e *commandError) Error() string { return fmt.Sprintf("%s: %v%s", e.name, e.exit, e.stderr) }
func (e *commandError) Unwrap() error { return e.exit }

// logRun appends a command's record to its machine's commands.log, which
// is rotated at commandsLogLimit; commands of one machine may run at once
// (a list's detect_stale_instance beside a destroy), hence the lock.
func (b *Backend) logRun(wd, name string, argv []string, started time.Time, err error, stdout, stderr *capped.Buffer) {
	result := "ok"
	if err != nil {
		result = err.Error()
	}
	var rec bytes.Buffer
	fmt.Fprintf(&rec, "=== %s %s %q (%s): %s\n", started.UTC().Format(time.RFC3339), name, argv, time.Since(started).Round(time.Millisecond), result)
	rec.Write(stdout.Bytes())
	rec.WriteString(stdout.Note())
	rec.Write(stderr.Bytes())
	rec.WriteString(stderr.Note())
	b.logMu.Lock()
	defer b.logMu.Unlock()
	w, ferr := logfile.Open(filepath.Join(wd, "commands.log"), logfile.Options{MaxBytes: commandsLogLimit})
	if ferr != nil {
		return
	}
	defer w.Close()
	w.Write(rec.Bytes())
}

// tail returns the last line of a command's output, for an error message.
func tail(out []byte) string {
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	last := strings.TrimSpace(lines[len(lines)-1])
	if last == "" {
		return ""
	}
	return ": " + truncate(last)
}

func truncate(s string) string {
	if len(s) > 200 {
		return s[:200] + "…"
	}
	return s
}

var hostname = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*$`)

// parseHost reads an address or host name from the last line a command
// printed (the original modules piped theirs through `tail -n 1`).
func parseHost(out string) (string, error) {
	lines := strings.Split(strings.TrimSpace(out), "\n")
	s := strings.TrimSpace(lines[len(lines)-1])
	if ip, err := netip.ParseAddr(s); err == nil {
		return ip.String(), nil
	}
	if s == "" || len(s) > 253 || !hostname.MatchString(s) {
		return "", fmt.Errorf("printed %q, not an address or host name", truncate(s))
	}
	return s, nil
}

func parsePort(out string) (int, error) {
	lines := strings.Split(strings.TrimSpace(out), "\n")
	s := strings.TrimSpace(lines[len(lines)-1])
	p, err := strconv.Atoi(s)
	if err != nil || p < 1 || p > 65535 {
		return 0, fmt.Errorf("printed %q, not a port number", truncate(s))
	}
	return p, nil
}

var machineID = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_-]*$`)

func checkID(id string) error {
	if !machineID.MatchString(id) {
		return fmt.Errorf("exec backend: bad machine id %q", truncate(id))
	}
	return nil
}
