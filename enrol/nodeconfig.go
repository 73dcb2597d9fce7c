package enrol

import (
	"context"
	"errors"
	"fmt"

	"github.com/hashicorp/consul/api"

	"github.com/raptiformica/raptiformica/internal/consulclient"
	"github.com/raptiformica/raptiformica/internal/endpoint"
	"github.com/raptiformica/raptiformica/internal/kvschema"
	"github.com/raptiformica/raptiformica/internal/nodeconfig"
	"github.com/raptiformica/raptiformica/internal/state"
	"github.com/raptiformica/raptiformica/mesh"
	"github.com/raptiformica/raptiformica/mesh/peering"
	"github.com/raptiformica/raptiformica/reconcile"
	"github.com/raptiformica/raptiformica/rules"
)

// NodeConfigs makes the node configs of new machines for a node, or an
// operator's command, that reaches Consul through Client. Its For is a
// reconcile.NodeConfigFunc: the leader's executor, the CLI's and the join
// exchange configure machines with it.
type NodeConfigs struct {
	// Client talks to the cluster with a token that may write ACLs (the
	// leader's, an operator's): a client machine's token is made with it.
	Client *api.Client
	// Cred is what the new machines get: the cluster's token (servers
	// only) and the CA, whose key signs their certificates.
	Cred Credentials
	// ClusterDir and ConsulBinary are copied into the new configs: the
	// local cluster's folder ("" for none) and the Consul the machine runs.
	ClusterDir, ConsulBinary string
	// Self returns the mesh endpoints of the configuring node, which a new
	// machine dials first (its entry may not be in KV yet); nil for none.
	Self func() []string
}

// For returns the config of new machine id of type mt, made by backend in
// the description p: it joins the live servers, gets the cluster's gossip
// key and mesh secret, dials the members' mesh endpoints and the
// configuring node's own (Self), runs ConsulBinary, and carries a
// certificate signed for its role by the cluster's CA. Servers, which may
// lead, get the cluster's ACL token and the CA key, with which they sign
// the certificates of the machines they make; clients, which never lead, a
// token of their own that writes only their own keys (MachineToken). It
// blocks on a few reads of Consul (and the writes of a client's token).
func (n NodeConfigs) For(ctx context.Context, p *rules.Platform, id string, mt rules.MachineType, backend string) (nodeconfig.Config, error) {
	cred := n.Cred
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
		if token, err = MachineToken(ctx, n.Client, id); err != nil {
			return nodeconfig.Config{}, err
		}
		caKey = ""
	}
	store := kvschema.New(n.Client)
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
		if n.Self != nil {
			own = n.Self()
		}
		if meshCfg, err = meshConfigFor(ctx, store, p.Mesh, peering.Member{ID: id, Server: mt.ConsulServer, Listens: true}, p.Mesh.Peers, own); err != nil {
			return nodeconfig.Config{}, err
		}
	}
	members, err := consulclient.Members(ctx, n.Client)
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
		ClusterDir: n.ClusterDir, ConsulBinary: n.ConsulBinary, ConsulServer: mt.ConsulServer,
		RetryJoin: join, Encrypt: key, Mesh: meshCfg, ACLToken: token,
		TLS:           &nodeconfig.TLS{CACert: cred.CA.CertPEM, CAKey: caKey, Cert: cert.CertPEM, Key: cert.KeyPEM},
		DefaultGossip: p.PlannedMachines() > nodeconfig.FastGossipMax,
	}.WithDefaults(), nil
}

// CheckMeshMode refuses a description whose mesh mode is not the running
// cluster's: the mode decides where every machine's Consul listens, so a
// machine made under the other mode could never join. The cluster's mode is
// whether it has a mesh secret, which its first node wrote. It blocks on
// one read of KV.
func CheckMeshMode(ctx context.Context, store *kvschema.Store, p *rules.Platform) error {
	secret, err := store.MeshSecret(ctx, nil)
	if err != nil {
		return fmt.Errorf("read mesh secret: %w", err)
	}
	running := secret != ""
	switch {
	case running && !p.Mesh.Enabled():
		return fmt.Errorf("%s: mesh: the cluster runs the overlay mesh (its machines' Consul listens on it), so a description with mesh = %q can add no machine to it; the mode is chosen when a cluster is created", p.Filename, rules.MeshNone)
	case !running && p.Mesh.Enabled():
		return fmt.Errorf("%s: mesh: the cluster runs without the mesh (it has no mesh secret; its machines' Consul listens on their own network), so a description with mesh = %q can add no machine to it; the mode is chosen when a cluster is created", p.Filename, rules.MeshOverlay)
	}
	return nil
}

// meshConfigFor is the mesh part of a new machine's config: the cluster's
// secret and, as its way in, the endpoints of static (the anchors, the
// configuring node's own), of the servers and of the members the mesh's
// rule will link it to, a bounded list whatever the cluster's size. The
// machine dials them until it has read KV and one of its chosen links is
// up (the agent's mesh sync). During a rotation the secret is the one
// brought in, with which every member dials at every step
// (kvschema.MeshSecrets.Newest).
func meshConfigFor(ctx context.Context, store *kvschema.Store, m rules.Mesh, self peering.Member, static ...[]string) (*nodeconfig.Mesh, error) {
	secrets, err := store.MeshSecrets(ctx, nil)
	if err != nil {
		return nil, fmt.Errorf("read mesh secret: %w", err)
	}
	secret := secrets.Newest()
	if secret == "" {
		return nil, errors.New("the cluster has no mesh secret in KV (" + kvschema.MeshSecret + ")")
	}
	nodes, err := mesh.ReadEntries(ctx, store)
	if err != nil {
		return nil, err
	}
	peers := endpoint.UniqueSorted(static...)
	for _, n := range nodes {
		if n.Server {
			peers = append(peers, n.Endpoints...)
		}
	}
	var chosen []string
	for _, id := range peering.Choose(self, mesh.Members(nodes), m.Links()) {
		chosen = append(chosen, nodes[id].Endpoints...)
	}
	peers = append(peers, endpoint.HostPorts(chosen)...)
	return &nodeconfig.Mesh{ListenPort: m.Port, Secret: secret, Peers: endpoint.HostPorts(peers)}, nil
}
