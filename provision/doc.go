// Package provision turns a reachable machine into a raptiformica node over
// SSH. A node is the raptiformica agent (which runs its own Consul) started
// with a node config (package nodeconfig); provisioning is putting the
// binaries and that config in place and starting the agent. Backends that
// start processes themselves, such as the local backend, only write the
// config and need nothing of this package.
package provision
