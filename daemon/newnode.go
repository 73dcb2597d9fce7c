package daemon

import (
	"context"
	"fmt"

	"github.com/hashicorp/consul/api"

	"github.com/raptiformica/raptiformica/internal/kvschema"
	"github.com/raptiformica/raptiformica/internal/nodeconfig"
	"github.com/raptiformica/raptiformica/reconcile"
	"github.com/raptiformica/raptiformica/rules"
)

// NodeConfigFor returns how new machines are configured by a node that
// reaches Consul through client: they join the live servers, get the
// cluster's gossip key and mesh secret, dial the members' mesh endpoints
// and the configuring node's own (self, which may be nil), run the given
// Consul binary, and carry token, the cluster's ACL token.
func NodeConfigFor(client *api.Client, token, clusterDir, consulBinary string, self func() []string) reconcile.NodeConfigFunc {
	return func(ctx context.Context, p *rules.Platform, id string, mt rules.MachineType, backend string) (nodeconfig.Config, error) {
		store := kvschema.New(client)
		key, err := store.GossipKey(ctx)
		if err != nil {
			return nodeconfig.Config{}, fmt.Errorf("read gossip key: %w", err)
		}
		if err := CheckMeshMode(ctx, store, p); err != nil {
			return nodeconfig.Config{}, err
		}
		var meshCfg *nodeconfig.Mesh
		if p.Mesh.Enabled() {
			var own []string
			if self != nil {
				own = self()
			}
			if meshCfg, err = meshConfigFor(ctx, store, p.Mesh.Port, p.Mesh.Peers, own); err != nil {
				return nodeconfig.Config{}, err
			}
		}
		members, err := client.Agent().Members(false)
		if err != nil {
			return nodeconfig.Config{}, fmt.Errorf("list members: %w", err)
		}
		var join []string
		for _, m := range members {
			if reconcile.SerfStatus(m.Status) == reconcile.MemberAlive && m.Tags[api.MemberTagKeyRole] == api.MemberTagValueRoleServer {
				join = append(join, m.Addr)
			}
		}
		return nodeconfig.Config{
			MachineID: id, MachineType: mt.Name, Cluster: p.Cluster, Backend: backend,
			ClusterDir: clusterDir, ConsulBinary: consulBinary, ConsulServer: mt.ConsulServer,
			RetryJoin: join, Encrypt: key, Mesh: meshCfg, ACLToken: token,
		}.WithDefaults(), nil
	}
}
