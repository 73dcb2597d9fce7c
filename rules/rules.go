// Package rules is the platform description: which machine types should exist,
// how many, on which compute backends, how fast the control loop may act and
// which hooks run on which events.
//
// A description is written in HCL or in JSON (the same schema, read by
// hashicorp/hcl/v2), stored in Consul KV and mirrored on every machine's disk.
// Parse reports every problem at once, each naming the file, line and field, so
// a bad description is rejected whole and never replaces a good one.
package rules

import (
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/raptiformica/raptiformica/mesh/peering"
)

// Platform is a validated platform description. Every field has its default
// filled in; a Platform returned by Parse is safe to plan with.
type Platform struct {
	// Cluster names the virtual data center; it labels machines and metrics.
	Cluster string
	// Policy bounds how fast and how far the control loop acts.
	Policy Policy
	// Backends are the compute backends, by name.
	Backends map[string]Backend
	// Machines are the machine types, by name.
	Machines map[string]MachineType
	// Hooks are the commands run on events, in the order they were declared.
	Hooks []Hook
	// Mesh is the network the machines talk over.
	Mesh Mesh
	// Source is the text the description was parsed from, kept so that the
	// same bytes can be mirrored and re-seeded.
	Source []byte
	// Filename is where Source came from, for messages.
	Filename string

	// ModuleRefs are the backends machine types name that the description
	// does not declare but a module may provide ("<type>/<server>"), in
	// the order named, each with the problem reported, at the naming
	// line, when no module does (see Effective).
	ModuleRefs []ModuleRef `json:"-"`
}

// ModuleRef is a backend a machine type names for a module to provide,
// and the problem to report when none does.
type ModuleRef struct {
	Backend string
	Problem Problem
}

// IsModuleBackendName reports whether name has the shape of a backend a
// compute module makes, "<compute type>/<server type>": a description may
// name such a backend without declaring it, for a module to provide.
func IsModuleBackendName(name string) bool {
	ct, st, ok := strings.Cut(name, "/")
	return ok && ct != "" && st != "" && !strings.Contains(st, "/")
}

// ModuleBackends returns the backends p's machine types name for modules
// to provide (see IsModuleBackendName), each once, in the order named.
func (p *Platform) ModuleBackends() []string {
	var names []string
	for _, r := range p.ModuleRefs {
		if !slices.Contains(names, r.Backend) {
			names = append(names, r.Backend)
		}
	}
	return names
}

// Policy bounds the control loop. Durations are positive after parsing.
type Policy struct {
	// MaxConcurrentSpawns caps machines being spawned or provisioned at once.
	MaxConcurrentSpawns int
	// Cooldown is the least time between two spawns of one machine type.
	Cooldown time.Duration
	// BackoffInitial and BackoffMax bound the wait after a backend fails.
	BackoffInitial time.Duration
	BackoffMax     time.Duration
	// ProvisionTimeout is how long a spawned machine may take to join.
	ProvisionTimeout time.Duration
	// GracePeriod is how long a member may be failed before it is replaced.
	GracePeriod time.Duration
	// MaxUnhealthy is how many members may be failed at once before the loop
	// stops replacing and reports it, instead of thrashing.
	MaxUnhealthy int
	// ResyncInterval is how often the leader re-plans without any event.
	ResyncInterval time.Duration
	// QuorumLostAfter is how long a node's Consul may have no leader before
	// the node reports the cluster's quorum as lost.
	QuorumLostAfter time.Duration
	// RecoverOnEvidence lets a survivor recover a cluster that lost quorum
	// by itself, once the backends confirm the lost servers are gone.
	// Without it only an operator's `raptiformica recover` does.
	RecoverOnEvidence bool
}

// Mesh says how the machines reach each other.
type Mesh struct {
	// Mode is MeshOverlay or MeshNone.
	Mode string
	// Port is the overlay's TCP listen port on every machine.
	Port int
	// Peers are endpoints ("host:port") every machine dials besides the
	// members it learns from KV: public machines that anchor the mesh.
	Peers []string
	// MaxLinks caps the links the mesh's rule gives a machine (package
	// mesh/peering); 0 means peering.DefaultMaxLinks. Read it with Links.
	MaxLinks int
}

// Links is the cap on a machine's mesh links: MaxLinks, or the default.
func (m Mesh) Links() int {
	if m.MaxLinks == 0 {
		return peering.DefaultMaxLinks
	}
	return m.MaxLinks
}

// MinMeshLinks and MaxMeshLinks bound mesh_max_links: the rule's ring needs
// two links; 64 is far above what a machine needs, well below a full mesh.
const (
	MinMeshLinks = peering.MinMaxLinks
	MaxMeshLinks = 64
)

// The mesh modes.
const (
	// MeshOverlay runs the yggdrasil overlay in every agent: Consul binds
	// to the overlay address, and a machine joins when one member reaches
	// it or it reaches one member.
	MeshOverlay = "yggdrasil"
	// MeshNone uses the machines' own network, where all of them already
	// reach each other.
	MeshNone = "none"
)

// DefaultMeshPort is the overlay's port when the description sets none.
const DefaultMeshPort = 9651

// MaxMachines caps a machine type's min and max, and max_unhealthy: far
// more machines than one cluster runs (5,000 are simulated), and a bound
// on what the planner counts and plans in one pass.
const MaxMachines = 100_000

// MaxConcurrentSpawns caps the policy's max_concurrent_spawns: the planner
// makes one action, and one intent in KV, per spawn it starts in a pass.
const MaxConcurrentSpawns = 1000

// Enabled reports whether machines run the overlay.
func (m Mesh) Enabled() bool { return m.Mode == MeshOverlay }

// Backend is one configured compute backend.
type Backend struct {
	// Name is the label the machine types refer to.
	Name string
	// Type selects the implementation (for example "local").
	Type string
	// Settings are passed to the implementation as they are.
	Settings map[string]string
	// Commands are argv lists by name, for a type that runs commands (exec);
	// the type checks them (Options.CheckBackend).
	Commands map[string][]string
	// MaxPerHost caps the machines one member may hold on this backend
	// when the leader places them on other members; 0 is no cap.
	MaxPerHost int
	// MinFreeMemoryMB is the memory, in MiB, a member must have free to
	// be given a machine of this backend, where the backend can tell
	// (local); 0 is no floor.
	MinFreeMemoryMB int
}

// ExecType is the type of a backend whose machines are made by commands:
// what the original project's compute modules become.
const ExecType = "exec"

// FieldProblem is what a backend type finds wrong in its settings or
// commands: the field under the backend ("commands start_instance") and why.
type FieldProblem struct {
	Field, Message string
}

// MachineType is one kind of machine and how many of it should exist.
type MachineType struct {
	Name string
	// Min is the count the control loop keeps alive.
	Min int
	// Max is the count above which machines are removed; Max >= Min.
	Max int
	// ConsulServer makes machines of this type Consul servers.
	ConsulServer bool
	// Backends lists backend names in order of preference.
	Backends []string
	// Archs, when set, are the architectures (Go's names) its machines may
	// have: they are placed only on backends that say their machines are
	// one of them (backends.Archer). Empty is any.
	Archs []string
	// Provisioners are what a machine of this type installs and configures
	// on itself after it joins, in order: the original's server types. A
	// type's bootstrap steps (bootstrap = [...], once run over SSH on
	// adopted machines) are its first provisioner, named "bootstrap",
	// without a source, run by every machine of the type on itself.
	Provisioners []Provisioner
	// ReadyAfterProvision makes a machine count toward Min only once its
	// provisioners have all succeeded, so that the leader's counts mean
	// "serving", not "booted".
	ReadyAfterProvision bool
	// Priority orders the types when there is not room for all: spawn
	// slots, host capacity and backends go to higher priorities first, and
	// a type below its min that nothing can place may take the room of a
	// lower one (see ByPriority). A Consul server type comes first
	// whatever is written: without quorum there is no leader to place
	// anything.
	Priority int
	// Hosts names the machine types whose members may make machines of
	// this type; empty, every member that offers one of its backends may.
	// A member's type is the inventory's word, never its own. For a
	// PerHost or Fill type, empty is every member not of this type, so
	// that its machines, which may offer the same backend, do not make
	// more of it.
	Hosts []string
	// PerHost asks for this many machines on every host (see Hosts) that
	// offers one of the type's backends, up to Max: a member that joins
	// and offers it gets its machines, and one that leaves takes them
	// with it; they are not placed elsewhere. Zero places by Min.
	PerHost int
	// Fill asks, beyond Min, for as many machines as the hosts have room
	// for, up to Max, once every type's Min is served; the machines above
	// Min give way to any type's Min.
	Fill bool
	// Scale, when set, moves the count between Min and Max on a signal.
	Scale *Scale
	// Spares is how many standby machines of the type to keep, made and
	// joined but not counted as live: when a machine of the type dies, a
	// spare is promoted in its place at once (a record written, nothing
	// started), and another spare is made in the background.
	Spares int
}

// MaxSpares bounds a type's spares.
const MaxSpares = 100

// The signals a machine type may scale on.
const (
	// SignalPrometheus is the value of a Prometheus instant query.
	SignalPrometheus = "prometheus"
	// SignalConsulService is the number of passing instances of a service
	// in Consul's catalog.
	SignalConsulService = "consul_service"
	// SignalConsulCheck is the number a Consul check's output starts with.
	SignalConsulCheck = "consul_check"
)

// Signals are the signals a scale block may name.
var Signals = []string{SignalPrometheus, SignalConsulService, SignalConsulCheck}

// Scale is a machine type's scaling on a signal: the count it asks for is
// the signal's value over Target, rounded up, kept between Min and Max. It
// grows at once after UpCooldown, shrinks one machine at a time after the
// value has stayed low for DownAfter and after DownCooldown, and holds
// when the value is missing.
type Scale struct {
	Signal string
	// Query is a PromQL instant query whose result is one number
	// (SignalPrometheus).
	Query string
	// Prometheus is the server's address, http:// or https://.
	Prometheus string
	// TokenFile, when set, holds a bearer token for Prometheus, read on the
	// leader.
	TokenFile string
	// Service is the service whose passing instances count
	// (SignalConsulService).
	Service string
	// Check is the ID of the check whose output is the value
	// (SignalConsulCheck).
	Check string
	// Target is the value one machine is for.
	Target float64
	// Interval is how often the signal is read.
	Interval time.Duration
	// UpCooldown is how long after a scale-up the next may come.
	UpCooldown time.Duration
	// DownCooldown is how long after any change a scale-in may come.
	DownCooldown time.Duration
	// DownAfter is how long the value must stay below what the machines
	// are for before one is removed.
	DownAfter time.Duration
}

// Defaults of a scale block.
const (
	DefaultScaleInterval     = 30 * time.Second
	DefaultScaleUpCooldown   = time.Minute
	DefaultScaleDownCooldown = 5 * time.Minute
	DefaultScaleDownAfter    = 5 * time.Minute
)

// Expands reports whether the type grows with the room its hosts offer
// (PerHost or Fill) rather than only to its Min.
func (m MachineType) Expands() bool { return m.PerHost > 0 || m.Fill }

// MaxPerHost bounds a type's per_host.
const MaxPerHost = 1000

// Provisioner is software a machine installs on itself: a source folder
// (a git repository, cloned or updated into a folder of its own) and steps
// run in it. The agent runs them after joining and records them by
// checksum, so unchanged steps never rerun and changed ones converge.
type Provisioner struct {
	// Name labels the provisioner and names its folder.
	Name string
	// Source is a git repository (file://, https://, ssh:// or
	// user@host:path, as package internal/source allows); empty runs the
	// steps in an empty folder of the provisioner's own.
	Source string
	// Ref is the branch or tag of Source to run, or the full commit it is
	// pinned to (verified after every fetch); empty is the remote's HEAD.
	Ref string
	// Steps are argv lists, run in order in the source's folder. A module
	// in the original format becomes ["/bin/sh", "-c", its shell string].
	Steps [][]string
	// Timeout is how long one step may run before its process group is
	// killed; zero means DefaultStepTimeout. It is not part of the
	// checksum: a longer timeout reruns nothing.
	Timeout time.Duration
}

// BootstrapProvisioner names the provisioner a machine type's bootstrap
// steps become.
const BootstrapProvisioner = "bootstrap"

// DefaultStepTimeout is how long a provisioner's step may run when the
// description sets no timeout: long enough to install packages over a
// slow link, short enough that a step waiting on a prompt is ended.
const DefaultStepTimeout = 10 * time.Minute

// Hook is a command run when an event happens. The event's data is written to
// its standard input as JSON; the command is an argv list, never a shell string.
type Hook struct {
	Event   string
	Command []string
	Timeout time.Duration
	// Predicate, when set, is a command run first: the hook runs only when
	// it exits 0 (the original's predicates, such as "only on web
	// machines").
	Predicate []string
	// Interval is, for cluster_change, the least time between two runs on
	// one machine: membership churns, and a burst of joins is one change.
	Interval time.Duration
}

// DefaultHookInterval is a cluster_change hook's interval when the
// description gives none.
const DefaultHookInterval = 10 * time.Second

// Events are the hook events the control loop emits.
var Events = []string{"after_spawn", "after_join", "after_reap", "after_destroy", "cluster_change", "leader_elected", "after_mesh", "after_provision"}

// MachineNames returns the machine type names in a stable order.
func (p *Platform) MachineNames() []string {
	names := make([]string, 0, len(p.Machines))
	for n := range p.Machines {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// MinPriority and MaxPriority bound a machine type's priority.
const (
	MinPriority = -1000
	MaxPriority = 1000
)

// ByPriority is the machine types' names in the order they are served when
// there is not room for all: Consul server types first, then by priority,
// highest first, then by name, for the same order from the same
// description.
func (p *Platform) ByPriority() []string {
	names := p.MachineNames()
	sort.SliceStable(names, func(i, j int) bool {
		a, b := p.Machines[names[i]], p.Machines[names[j]]
		if a.ConsulServer != b.ConsulServer {
			return a.ConsulServer
		}
		return a.Priority > b.Priority
	})
	return names
}

// Outranks reports whether machine type a is served before type b when
// there is not room for both (ByPriority's order, names aside).
func Outranks(a, b MachineType) bool {
	if a.ConsulServer != b.ConsulServer {
		return a.ConsulServer
	}
	return a.Priority > b.Priority
}

// PlannedMachines is how many machines the description may ask for at most.
func (p *Platform) PlannedMachines() int {
	n := 0
	for _, m := range p.Machines {
		n += max(m.Min, m.Max)
	}
	return n
}

// ServerCount returns how many Consul servers the description asks for.
func (p *Platform) ServerCount() int {
	n := 0
	for _, m := range p.Machines {
		if m.ConsulServer {
			n += m.Min
		}
	}
	return n
}

// HooksFor returns the hooks declared for event, in declaration order.
func (p *Platform) HooksFor(event string) []Hook {
	var hs []Hook
	for _, h := range p.Hooks {
		if h.Event == event {
			hs = append(hs, h)
		}
	}
	return hs
}
