// Package provision turns a reachable machine into a raptiformica node over
// SSH, and runs a machine type's provisioners on the machine itself.
//
// A node is the raptiformica agent (which runs its own Consul) started
// with a node config (package nodeconfig); adoption is putting the
// binaries and that config in place and starting the agent (Adopter).
// Backends that start processes themselves, such as the local backend,
// only write the config and need nothing of that part.
//
// Once a node has joined, its agent installs and configures what its type
// describes on itself (Self): each provisioner's git source cloned or
// updated into a folder of its own, its steps run there, recorded by
// checksum so that only what changed runs again.
package provision
