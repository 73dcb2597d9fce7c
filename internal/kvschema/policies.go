package kvschema

// Consul ACL rules of the roles a person or a program may be given (`token
// create --role`), written against the layout above. The operator's role
// is Consul's own global-management policy: it may do everything.
const (
	// ReadOnlyRules read the description, the inventory, the leader's
	// status, the members and the catalog, but none of the secrets kept
	// in KV (the gossip key, the mesh secret) nor the join tokens'
	// records, and write nothing: Consul takes the longest prefix, so the
	// denials win over the folder's read.
	ReadOnlyRules = `key_prefix "` + Prefix + `" { policy = "read" }
key "` + GossipKey + `" { policy = "deny" }
key_prefix "` + MeshSecret + `" { policy = "deny" }
key_prefix "` + JoinTokens + `" { policy = "deny" }
node_prefix "" { policy = "read" }
service_prefix "" { policy = "read" }
agent_prefix "" { policy = "read" }
operator = "read"
`
	// MetricsRules read the catalog, as Prometheus's Consul discovery
	// does, and nothing of the KV.
	MetricsRules = `node_prefix "" { policy = "read" }
service_prefix "" { policy = "read" }
agent_prefix "" { policy = "read" }
`
)

// Names of the roles' policies (`token create --role`): an agent lets a
// token of these read its status and metrics over TLS.
const (
	ReadOnlyPolicy = "raptiformica-read-only"
	MetricsPolicy  = "raptiformica-metrics"
)

// GlobalManagementPolicyID is Consul's built-in policy that allows
// everything: the operator's.
const GlobalManagementPolicyID = "00000000-0000-0000-0000-000000000001"

// ClientRules are what every machine that is not a Consul server may do,
// beside its node identity (its own node in the catalog): read the
// cluster's folder (the description, the inventory, the mesh, the keys it
// holds anyway), register its agent's service, and read the Raft
// configuration its quorum watch looks at. It writes no key but its own
// (MachineRules): it never leads.
const ClientRules = `key_prefix "` + Prefix + `" { policy = "read" }
key_prefix "` + JoinTokens + `" { policy = "deny" }
node_prefix "" { policy = "read" }
service_prefix "" { policy = "read" }
service "` + ServiceName + `" { policy = "write" }
operator = "read"
`

// MachineRules are one client machine's own: its mesh entry, its offer of
// backends, its provisioning record, the work orders given to it (outside
// the cluster's folder: no other role reads them), and its own agent (to
// leave the cluster). Each is a claim about itself, read through the state
// codec, which binds it to its key. Not its inventory record: its type,
// host, creation time and state decide what the leader places where and
// what it destroys, so only servers write it.
func MachineRules(machineID string) string {
	return `key "` + MeshNodes + machineID + `" { policy = "write" }
key "` + Offers + machineID + `" { policy = "write" }
key "` + Provisioned + machineID + `" { policy = "write" }
key_prefix "` + Work + machineID + `/" { policy = "write" }
agent "` + machineID + `" { policy = "write" }
`
}
