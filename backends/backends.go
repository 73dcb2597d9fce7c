// Package backends is the compute backend plugin API: how the control loop
// creates, lists and destroys machines. Implementations live in subpackages
// named after what they depend on (backends/local) and are registered in
// builtin.go.
package backends

import (
	"context"
	"github.com/hashicorp/consul/api"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/raptiformica/raptiformica/provision"
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

// Spec is what to spawn.
type Spec struct {
	// Node is the agent's config; the backend fills in what it owns, such as
	// BindAddr and DataDir.
	Node provision.NodeConfig
	// Bootstrap are the machine type's bootstrap steps, for backends that
	// provision machines over SSH.
	Bootstrap [][]string
}

// Instance is a machine as a backend sees it.
type Instance struct {
	MachineID   string `json:"machine_id"`
	MachineType string `json:"machine_type"`
	Address     string `json:"address"`
	// Addresses are all the machine's addresses, Address first, for a
	// machine on several networks; empty when Address is the only one.
	Addresses []string  `json:"addresses,omitempty"`
	Running   bool      `json:"running"`
	Created   time.Time `json:"created"`
}

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
	Logger       hclog.Logger
	// KV is the cluster's KV, for backends that keep state there (the ssh
	// pool: which host runs which machine, and the hosts' keys). Nil where
	// no cluster is reachable.
	KV *api.KV
}

// Config is a backend as the platform description declares it.
type Config struct {
	// Name is the backend's name in the description, as machine types
	// refer to it.
	Name string
	// Settings are the backend's own settings, passed as written.
	Settings map[string]string
	// Commands are the argv lists of an exec backend, by command name.
	Commands map[string][]string
}

// Factory builds a backend from its declaration in the platform description.
type Factory func(cfg Config, env Env) (Backend, error)
