// Package enrol decides who receives which of the cluster's credentials,
// and gives them: the node config of a new machine (its certificate, its
// ACL token, the gossip key, its mesh config), the ACL tokens and policies
// of client machines and of roles, and the join exchange by which a
// machine set up by hand gets its node config for a join token.
//
// Who gets what:
//
//   - A Consul server may lead: its node config holds the cluster's token
//     and the CA key, with which it signs the certificates of the machines
//     it makes (NodeConfigs).
//   - A client never leads: a token of its own (MachineToken), with the
//     policy every client shares and one of its own that writes only its
//     own keys (kvschema.ClientRules, kvschema.MachineRules), and no CA key.
//   - A person or a program gets a token of a role (CreateRoleToken):
//     operator, read-only or metrics.
//   - A machine joined by hand gets the node config of the type its join
//     token names, never one it asks for (Joiner, CreateJoinToken), from a
//     server whose certificate chains to the CA the token pins
//     (agentapi.Join, which cluster.Join calls).
//
// Which host a server's node config may be sent to, in a work order, is
// the executor's to check (reconcile's Executor.mayHold), right before it
// sends it.
//
// The package is at the top level, beside reconcile and rules, rather than
// under internal/: enrolment is one of the project's concerns, with the
// design's trust rules ("credentials that give the cluster's authority go
// only to proven servers") as its contract, used by the agent (package
// daemon serves the join exchange over HTTP and gives its leader's
// executor the node configs) and by the operator's commands (cluster, cmd)
// alike; internal/ keeps the small pieces those concerns share.
package enrol

import "github.com/raptiformica/raptiformica/internal/pki"

// Credentials are what a node (or an operator's command) that makes
// machines gives them: the ACL token a new server gets, and the CA that
// signs the new machines' certificates (with its key, when the holder may
// sign).
type Credentials struct {
	Token string
	CA    pki.CA
}
