// Package backends is the compute backend plugin API: how the control loop
// creates, lists and destroys machines. Implementations live in subpackages
// named after what they depend on (backends/local, backends/docker,
// backends/exec, provision/sshpool) and are registered in package builtin.
//
// The contract is a leaf: it imports the node config and a logger, nothing
// that talks to Consul, SSH or the overlay, so that a backend author reads
// this file and one backend and nothing else. Capabilities only some
// backends have are the small interfaces below (Seeder, ClusterRemover,
// LocalView, Scoped, Watcher), found by a type assertion.
package backends

import (
	"context"
	"errors"

	"github.com/raptiformica/raptiformica/internal/nodeconfig"
	"github.com/raptiformica/raptiformica/internal/state"

	"github.com/hashicorp/go-hclog"
)

// Backend creates and removes machines of one compute backend. Every method
// may block on I/O and returns when ctx is done. A backend carries the machine
// ID on the machine itself (a folder, a label, a tag), so that List finds
// machines whose inventory record was lost.
type Backend interface {
	// Available returns nil when the backend can spawn machines now.
	Available(ctx context.Context) error
	// Spawn creates a machine and starts its agent with spec.Node. It returns
	// once the machine is started, not once it has joined. On error no
	// machine is left running.
	Spawn(ctx context.Context, spec Spec) (Instance, error)
	// Destroy stops a machine and removes it. Destroying a machine that does
	// not exist is not an error.
	Destroy(ctx context.Context, machineID string) error
	// List returns every machine of this cluster the backend holds, running
	// or not.
	List(ctx context.Context) ([]Instance, error)
}

// LocalView is implemented by a backend whose List may see only the
// machines spawned from this node (an exec backend without list_instances).
// The control loop then takes a machine missing from the list as unknown,
// not as gone.
type LocalView interface {
	ListsOnlyLocal() bool
}

// Watcher is implemented by a backend that can tell at once when one of its
// machines stops (a process exits, a container dies), sooner than Consul's
// failure detector at its default timings: the control loop then looks
// again at once, so that a worker's heal does not grow with the cluster's
// gossip. Watch calls stopped, with the machine's ID when it knows it,
// after each such event until ctx ends, and returns ctx's error then; it
// returns another error when it cannot watch (the caller tries again with
// backoff). An event is only a reason to look: List stays the authority,
// and a missed event costs speed, never a decision.
type Watcher interface {
	Watch(ctx context.Context, stopped func(machineID string)) error
}

// SelectiveWatcher is implemented by a Watcher whose cost grows with the
// machines it watches (a descriptor per process, looked at every second):
// WatchOnly is Watch over the machines want keeps. want is asked once per
// machine, with what the backend knows of it without a call (its ID and
// maker); nil keeps every machine. Members that share a scope (a hundred
// agents on one box) each watch only the machines they made, not every
// machine a hundred times.
type SelectiveWatcher interface {
	Watcher
	WatchOnly(ctx context.Context, want func(Instance) bool, stopped func(machineID string)) error
}

// ErrCannotWatch is what a Watch returns, wrapped, when it can never watch
// here (the kernel lacks what it needs): the caller stops trying, and the
// backend's machines are found by their lists alone.
var ErrCannotWatch = errors.New("this backend cannot watch its machines here")

// Scoped is implemented by a backend that can name what it manages: one
// Docker engine, one machine's loopback. Two members whose backends give the
// same scope see the same machines, so either's List covers the other's
// and either can destroy them: how the machines of a member that died are
// still judged and cleaned up. An empty scope is unknown.
type Scoped interface {
	Scope(ctx context.Context) (string, error)
}

// MakerLister is implemented by a backend that can list, cheaper than List
// and a filter, only the machines one member made (Instance.MadeBy) and
// those whose maker it cannot tell: what a host publishes of its machines.
// A local cluster's hundred hosts share one folder of a hundred machines;
// each looking at every machine's process once a minute was most of what
// an idle agent did.
type MakerLister interface {
	ListMadeBy(ctx context.Context, maker string) ([]Instance, error)
}

// MemoryReporter is implemented by a backend whose machines take the memory
// of the machine it runs on (local processes): how much is free there, so
// that placement keeps a floor.
type MemoryReporter interface {
	FreeMemory(ctx context.Context) (uint64, error)
}

// Detailer is implemented by a backend that can say in a word how it runs
// its machines on this host (the qemu backend: "kvm" or "tcg"): what a
// member's offer carries and `members` shows beside the backend.
type Detailer interface {
	Detail(ctx context.Context) string
}

// Archer is implemented by a backend that knows the architecture (Go's
// name) of the machines it makes on this host: local processes, containers
// and VMs have the host's own; an exec or ssh backend says it in its arch
// setting. A machine type that names archs is placed only where a backend
// says one of them.
type Archer interface {
	MachineArch() string
}

// Seeder is implemented by a backend that can start the first machine of a
// new cluster: one that needs no running cluster to spawn (no state in KV).
// The caller spawns the seed with the node config's Bootstrap set; CanSeed
// says no where the backend's settings rule it out.
type Seeder interface {
	Backend
	CanSeed() error
}

// ClusterRemover is implemented by a backend that can remove every machine
// of the cluster at once, and whatever it made for them (networks), without
// a Destroy per listed machine: what `down` uses. It returns how many
// machines it removed.
type ClusterRemover interface {
	RemoveAll(ctx context.Context) (int, error)
}

// Store is a folder of the cluster's KV that a backend keeps shared state in,
// so that whichever node leads next sees it (which pool host runs which
// machine). Keys are relative to the folder. Every call returns when ctx is
// done.
type Store interface {
	// List returns the folder's values by key.
	List(ctx context.Context) (map[string][]byte, error)
	// Get returns the value at key and the index to check-and-set it
	// against; index 0 when there is none.
	Get(ctx context.Context, key string) (value []byte, index uint64, err error)
	// CAS writes value at key if its index is still index (0: only if there
	// is none) and reports whether it did.
	CAS(ctx context.Context, key string, value []byte, index uint64) (bool, error)
	// Delete removes key, whatever its index.
	Delete(ctx context.Context, key string) error
}

// Spec is what to spawn.
type Spec struct {
	// Node is the agent's config; the backend fills in what it owns, such as
	// BindAddr and DataDir. Node.Bootstrap is set only for a seed.
	Node nodeconfig.Config
}

// Instance is a machine as a backend sees it (state.Instance: hosts publish
// their lists in their offers, so the type lives with the stored records).
type Instance = state.Instance

// Env is what a backend needs to know about the node that runs it.
type Env struct {
	// Cluster is the platform's cluster name.
	Cluster string
	// ClusterDir is where local state for this cluster lives.
	ClusterDir string
	// Binary is the raptiformica binary to run on new machines.
	Binary string
	// ConsulBinary is the Consul binary to run on new machines.
	ConsulBinary string
	// BindAddr is the address the node's own Consul binds (or "auto");
	// empty when the backend runs outside an agent (the CLI). A backend
	// whose machines are reachable only from this machine's network
	// (loopback) is offered only where that network is the cluster's.
	BindAddr string
	Logger   hclog.Logger
	// Claims is the backend's own folder of the cluster's KV (the ssh pool
	// records there which host runs which machine); HostKeys holds the SSH
	// host keys trusted on first use. Both nil where no cluster is reachable.
	Claims   Store
	HostKeys Store
}

// Config is a backend as the platform description declares it.
type Config struct {
	// Name is the backend's name in the description, as machine types
	// refer to it.
	Name string
	// Type is the backend's type, the name it is registered under.
	Type string
	// Settings are the backend's own settings, passed as written.
	Settings map[string]string
	// Commands are argv lists by name, for a type that runs commands (the
	// exec backend, whose package says which); a type that runs none
	// refuses them.
	Commands map[string][]string
}

// Factory builds a backend from its declaration in the platform description.
type Factory func(cfg Config, env Env) (Backend, error)
