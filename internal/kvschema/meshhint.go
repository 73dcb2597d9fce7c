package kvschema

import (
	"context"

	"github.com/hashicorp/consul/api"
)

// CreateMeshNode writes a machine's overlay entry only if it has none (a
// check-and-set on index 0), and reports whether it did: the leader's
// first entry for a machine that has not published its own yet, which
// must never replace the one the machine wrote.
func (s *Store) CreateMeshNode(ctx context.Context, machineID string, b []byte) (bool, error) {
	ok, _, err := s.kv.CAS(&api.KVPair{Key: MeshNodes + machineID, Value: b, ModifyIndex: 0}, write(ctx))
	return ok, err
}
