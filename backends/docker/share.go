package docker

import (
	"fmt"

	"github.com/raptiformica/raptiformica/internal/nodeconfig"
)

// socketShare says which of a backend's containers get the engine's socket
// (the share_socket setting).
//
// Whoever holds the socket is root on the engine's machine and reaches
// every container on it: it reads each one's node config (a server's holds
// the cluster's token and the CA key) and can start one of its own with
// any mounts. A Consul server holds those credentials anyway, and one of
// them must reach the engine for the cluster to spawn and remove its
// siblings, so the description may give it the socket. A client holds only
// its own keys: giving it the socket would give it the cluster, and so it
// never gets it unless the description says "all".
type socketShare int

const (
	// shareNone keeps the socket out of every container: the default. The
	// machines cannot run this backend themselves; whoever spawned them
	// (the host that ran `up`, another backend's machine) does.
	shareNone socketShare = iota
	// shareServers gives the socket to Consul servers' containers only.
	shareServers
	// shareAll gives it to every container, clients' included: any
	// machine of the backend, once compromised, is root on the engine's
	// machine.
	shareAll
)

// parseShare reads a share_socket setting. "true" is "servers": the
// setting that once gave the socket to every container now gives it only
// to the machines trusted with the cluster's credentials anyway.
func parseShare(s string) (socketShare, error) {
	switch s {
	case "", "false":
		return shareNone, nil
	case "servers", "true":
		return shareServers, nil
	case "all":
		return shareAll, nil
	}
	return shareNone, fmt.Errorf(`must be "false", "servers" ("true" says the same) or "all", got %q`, s)
}

// with says whether the container of a machine with node config node gets
// the engine's socket. The node config is the one the machine will run
// with, made by its spawner from the machine's type: a machine that is a
// Consul server there holds the cluster's credentials anyway.
func (s socketShare) with(node nodeconfig.Config) bool {
	switch s {
	case shareAll:
		return true
	case shareServers:
		return node.ConsulServer
	}
	return false
}
