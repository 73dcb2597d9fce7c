// Package builtin lists the backends compiled into raptiformica. It is the
// one place a new backend is registered; it is apart from package backends
// because the implementations import that package.
package builtin

import (
	"github.com/raptiformica/raptiformica/backends"
	"github.com/raptiformica/raptiformica/backends/docker"
	"github.com/raptiformica/raptiformica/backends/exec"
	"github.com/raptiformica/raptiformica/backends/local"
	"github.com/raptiformica/raptiformica/backends/qemu"
	"github.com/raptiformica/raptiformica/provision"
	"github.com/raptiformica/raptiformica/provision/sshpool"
	"github.com/raptiformica/raptiformica/reconcile"
	"github.com/raptiformica/raptiformica/rules"
)

// Registry returns the built-in backends by type name.
func Registry() backends.Registry {
	r, err := backends.NewRegistry(
		backends.RegistryEntry{Type: "local", Factory: local.New},
		backends.RegistryEntry{Type: "docker", Factory: docker.New, Check: docker.Check},
		backends.RegistryEntry{Type: "qemu", Factory: qemu.New},
		backends.RegistryEntry{Type: exec.Type, Factory: exec.NewFactory(provision.SpawnAdopter{}), Check: exec.Check},
		backends.RegistryEntry{Type: "ssh", Factory: sshpool.New},
	)
	if err != nil {
		panic(err) // a programming error caught by the first test run
	}
	return r
}

// ParseOptions are the description's parse options for the built-in
// backends: their types, and each type's check of its declarations.
func ParseOptions() rules.Options { return reconcile.ParseOptions(Registry()) }
