package daemon

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"

	"github.com/hashicorp/consul/api"

	"github.com/raptiformica/raptiformica/internal/kvschema"
)

// TestTrustMeshEntriesBoundToTheirKeys: a client may write its own mesh
// entry, and only that key. What it writes there must not replace another
// member's endpoints and key in every node's view: an entry naming
// another machine, one whose address is not its public key's, and one
// that copies a key another entry held first are refused and named; the
// others are read as they are.
func TestTrustMeshEntriesBoundToTheirKeys(t *testing.T) {
	serverKey, serverAddr := meshKey("server-a")
	workerKey, workerAddr := meshKey("worker-x")
	entry := func(key string, created uint64, n MeshNode) *api.KVPair {
		b, _ := json.Marshal(n)
		return &api.KVPair{Key: kvschema.MeshNodes + key, Value: b, CreateIndex: created, ModifyIndex: created}
	}
	server := MeshNode{MachineID: "server-a", Key: serverKey, Address: serverAddr, Endpoints: []string{"10.0.0.1:9651"}, Server: true}
	pairs := api.KVPairs{
		entry("server-a", 10, server),
		// Under its own key, in server-a's name.
		entry("worker-x", 20, MeshNode{MachineID: "server-a", Key: workerKey, Address: workerAddr, Endpoints: []string{"10.6.6.6:9651"}, Server: true}),
		// Under its own name, with server-a's key and address.
		entry("worker-y", 30, MeshNode{MachineID: "worker-y", Key: serverKey, Address: serverAddr, Endpoints: []string{"10.6.6.7:9651"}}),
		// An address that is not its key's.
		entry("worker-z", 40, MeshNode{MachineID: "worker-z", Key: workerKey, Address: serverAddr, Endpoints: []string{"10.6.6.8:9651"}}),
		// The leader's first entry for a machine: endpoints, no key.
		entry("worker-new", 50, MeshNode{MachineID: "worker-new", Endpoints: []string{"10.0.0.9:9651"}}),
	}
	nodes, bad := decodeMeshNodes(pairs)
	if got := nodes["server-a"]; !slices.Equal(got.Endpoints, server.Endpoints) || got.Key != serverKey {
		t.Errorf("server-a as every node sees it: %+v, want its own entry", got)
	}
	var ids []string
	for id := range nodes {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	if want := []string{"server-a", "worker-new"}; !slices.Equal(ids, want) {
		t.Errorf("entries read: %q, want %q", ids, want)
	}
	var refused []string
	for _, b := range bad {
		refused = append(refused, strings.TrimPrefix(b.Key, kvschema.MeshNodes))
	}
	if want := []string{"worker-x", "worker-y", "worker-z"}; !slices.Equal(refused, want) {
		t.Errorf("refused %q, want %q (%v)", refused, want, bad)
	}
}
