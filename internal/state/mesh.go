package state

import "github.com/raptiformica/raptiformica/internal/kvschema"

// MeshEntry is a member's entry in KV (kvschema.MeshNodes/<machine id>):
// how the others reach it over the overlay. It is its member's own word:
// package mesh believes it only for the key it proves (mesh.Believe).
type MeshEntry struct {
	MachineID string `json:"machine_id"`
	Key       string `json:"key"`
	Address   string `json:"address"`
	// Endpoints are where it accepts links; none for a dial-only node.
	Endpoints []string `json:"endpoints,omitempty"`
	// Server is true for a Consul server: the mesh's rule links servers
	// to each other (package mesh/peering). The entry lists no links:
	// they follow from the rule, and a list would make every entry, and
	// so every read of the folder, grow with the cluster.
	Server bool `json:"server,omitempty"`
	// ListenSecret and DialSecrets are the fingerprints (mesh.Fingerprint)
	// of the secrets it listens and dials with: how `rotate mesh` knows
	// that every member has taken a step.
	ListenSecret string   `json:"listen_secret,omitempty"`
	DialSecrets  []string `json:"dial_secrets,omitempty"`
}

// RecordKey is the machine the entry is of (Keyed).
func (n MeshEntry) RecordKey() string { return n.MachineID }

// MaxMeshEntrySize bounds one stored entry: a key, an address, a few
// endpoints and fingerprints.
const MaxMeshEntrySize = 16 << 10

// MeshEntryKind names mesh entries in messages.
const MeshEntryKind = "mesh entry"

// MeshEntries is the members' folder of mesh entries, each its member's
// own.
func MeshEntries(s *kvschema.Store) Folder[MeshEntry] {
	return NewFolder[MeshEntry](s.Folder(kvschema.MeshNodes), MeshEntryKind, MaxMeshEntrySize, nil)
}
