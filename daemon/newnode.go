package daemon

import (
	"context"
	"errors"
	"fmt"

	"github.com/hashicorp/consul/api"

	"github.com/raptiformica/raptiformica/internal/consulclient"
	"github.com/raptiformica/raptiformica/internal/kvschema"
	"github.com/raptiformica/raptiformica/internal/nodeconfig"
	"github.com/raptiformica/raptiformica/internal/pki"
	"github.com/raptiformica/raptiformica/internal/state"
	"github.com/raptiformica/raptiformica/mesh/peering"
	"github.com/raptiformica/raptiformica/reconcile"
	"github.com/raptiformica/raptiformica/rules"
)

// Credentials are what a node that makes machines gives them: the ACL
// token, and the CA that signs their certificates.
type Credentials struct {
	Token string
	CA    pki.CA
}

// NodeConfigFor returns how new machines are configured by a node that
// reaches Consul through client: they join the live servers, get the
// cluster's gossip key and mesh secret, dial the members' mesh endpoints
// and the configuring node's own (self, which may be nil), run the given
// Consul binary, and carry a certificate signed for their role by the
// cluster's CA. Servers, which may lead, get the cluster's ACL token and
// the CA key, with which they sign the certificates of the machines they
// make; clients, which never lead, a token of their own that writes only
// their own keys (machineToken).
func NodeConfigFor(client *api.Client, cred Credentials, clusterDir, consulBinary string, self func() []string) reconcile.NodeConfigFunc {
	return func(ctx context.Context, p *rules.Platform, id string, mt rules.MachineType, backend string) (nodeconfig.Config, error) {
		if cred.CA.KeyPEM == "" {
			return nodeconfig.Config{}, errors.New("this node holds no CA key to sign the new machine's certificate with (tls.ca_key of its node config, or the cluster's identity.json)")
		}
		cert, err := cred.CA.Issue(id, mt.ConsulServer)
		if err != nil {
			return nodeconfig.Config{}, fmt.Errorf("sign the certificate of %s: %w", id, err)
		}
		// A server may lead: it gets the cluster's token and the CA key.
		// A client never leads: a token of its own, and no key.
		token, caKey := cred.Token, cred.CA.KeyPEM
		if !mt.ConsulServer {
			if token, err = machineToken(ctx, client, id); err != nil {
				return nodeconfig.Config{}, err
			}
			caKey = ""
		}
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
			if meshCfg, err = meshConfigFor(ctx, store, p.Mesh, peering.Member{ID: id, Server: mt.ConsulServer, Listens: true}, p.Mesh.Peers, own); err != nil {
				return nodeconfig.Config{}, err
			}
		}
		members, err := consulclient.Members(ctx, client)
		if err != nil {
			return nodeconfig.Config{}, fmt.Errorf("list members: %w", err)
		}
		var join []string
		for _, m := range members {
			if reconcile.SerfStatus(m.Status) == state.MemberAlive && m.Tags[api.MemberTagKeyRole] == api.MemberTagValueRoleServer {
				join = append(join, m.Addr)
			}
		}
		return nodeconfig.Config{
			MachineID: id, MachineType: mt.Name, Cluster: p.Cluster, Backend: backend,
			ClusterDir: clusterDir, ConsulBinary: consulBinary, ConsulServer: mt.ConsulServer,
			RetryJoin: join, Encrypt: key, Mesh: meshCfg, ACLToken: token,
			TLS:           &nodeconfig.TLS{CACert: cred.CA.CertPEM, CAKey: caKey, Cert: cert.CertPEM, Key: cert.KeyPEM},
			DefaultGossip: p.PlannedMachines() > nodeconfig.FastGossipMax,
		}.WithDefaults(), nil
	}
}
