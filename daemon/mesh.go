package daemon

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"

	"github.com/raptiformica/raptiformica/daemon/agentapi"
	"github.com/raptiformica/raptiformica/internal/clock"
	"github.com/raptiformica/raptiformica/internal/consulclient"
	"github.com/raptiformica/raptiformica/internal/endpoint"
	"github.com/raptiformica/raptiformica/internal/fsutil"
	"github.com/raptiformica/raptiformica/internal/kvschema"
	"github.com/raptiformica/raptiformica/internal/nodeconfig"
	"github.com/raptiformica/raptiformica/internal/state"
	"github.com/raptiformica/raptiformica/internal/telemetry"
	"github.com/raptiformica/raptiformica/internal/watch"
	"github.com/raptiformica/raptiformica/mesh"
	"github.com/raptiformica/raptiformica/mesh/peering"
	"github.com/raptiformica/raptiformica/reconcile"
	"github.com/raptiformica/raptiformica/rules"
)

// meshPass is how often the mesh is looked at without a change in KV: links
// that came up are joined into Consul, and a node without a cluster retries.
const meshPass = 5 * time.Second

// meshReadGap is the least time between two reads of the mesh's folder,
// and meshWait how long one read blocks for a change: each read returns
// every member's entry, so the reads of N nodes cost O(N²) bytes through
// the servers; they are rare (a change, at most one per gap) and stale
// (any server answers, not only the Raft leader).
const (
	meshReadGap = 5 * time.Second
	meshWait    = 5 * time.Minute
)

// chosenEndpoints are the endpoints of the members the rule links self to.
func chosenEndpoints(self peering.Member, nodes map[string]state.MeshEntry, maxLinks int) []string {
	var out []string
	for _, id := range peering.Choose(self, mesh.Members(nodes), maxLinks) {
		out = append(out, nodes[id].Endpoints...)
	}
	return endpoint.HostPorts(out)
}

// meshMirror is what a node keeps on disk of the mesh, so that after a
// restart it dials the members it knew without any help.
type meshMirror struct {
	// Joined are endpoints given by hand (raptiformica join, or a
	// member's POST /v1/mesh/peers): kept while they are of use (see
	// expireJoined).
	Joined []string `json:"joined,omitempty"`
	// JoinedSeen is when each of Joined was added or last seen up.
	JoinedSeen map[string]time.Time `json:"joined_seen,omitempty"`
	// Known are the endpoints of the members the rule linked the node to
	// at the last read of KV.
	Known []string `json:"known,omitempty"`
}

// meshSync keeps the node's overlay links in line with KV: it dials the
// members the mesh's rule chooses for it (package mesh/peering) and the
// description's anchors, drops the rest, writes its own entry, mirrors what
// it learnt, and joins into Consul every peer it has a link to. It runs
// from the start, before Consul has a leader: a new node's first link is
// how it finds the cluster.
//
// The peers of its node config are its way in: they are dialled until it
// has read KV and one of its chosen links is up, and again whenever none
// is. The leader writes a first entry for a machine that has not published
// its own yet (see firstEntries).
type meshSync struct {
	node *mesh.Node
	cfg  nodeconfig.Config // the node's, its BindAddr the overlay address
	// bindAuto: bind_addr was "auto", so the machine's own network is all
	// of its interfaces, and the mesh advertises each.
	bindAuto  bool
	consul    *api.Client
	store     *kvschema.Store
	inventory *reconcile.Inventory
	platform  func() *rules.Platform
	leading   func() bool
	clock     clock.Clock
	log       hclog.Logger
	metrics   *telemetry.Metrics
	// hooks runs the after_mesh hooks on this machine; nil runs none.
	hooks *reconcile.HookRunner

	mu    sync.Mutex // guards known and its file, mesh-peers.json, published, and secrets and its file
	known meshMirror
	// published is the entry this node last wrote, so that a pass writes
	// it again only when it changed.
	published state.MeshEntry
	// secrets are what mesh-secrets.json holds, read at the first pass
	// that finds secrets in KV.
	secrets       meshSecrets
	secretsLoaded bool

	// lastBad names the refused entries last reported; only the watch's
	// goroutine touches it.
	lastBad string
}

// reportBad logs the mesh entries a read refused, when they changed since
// the last read: each read returns them all again.
func (s *meshSync) reportBad(bad []state.Bad) {
	var names []string
	for _, b := range bad {
		names = append(names, b.String())
	}
	if all := strings.Join(names, "; "); all != s.lastBad {
		s.lastBad = all
		if all != "" {
			s.log.Warn("mesh entries refused", telemetry.KeyError, all)
		}
	}
}

func meshMirrorPath(dataDir string) string { return filepath.Join(dataDir, "mesh-peers.json") }

// loadMeshMirror reads the mirror once, at start; after that meshSync
// holds it and writes it back when it changes.
func loadMeshMirror(dataDir string, log hclog.Logger) meshMirror {
	var m meshMirror
	if b, err := os.ReadFile(meshMirrorPath(dataDir)); err == nil {
		if err := json.Unmarshal(b, &m); err != nil {
			log.Warn("mesh mirror unreadable; starting from the configured peers", telemetry.KeyFile, meshMirrorPath(dataDir), telemetry.KeyError, err)
		}
	}
	return m
}

// save stores m as the mirror; the caller holds mu.
func (s *meshSync) save(m meshMirror) {
	s.known = m
	b, _ := json.MarshalIndent(m, "", "  ")
	if err := fsutil.WriteFileAtomic(meshMirrorPath(s.cfg.DataDir), append(b, '\n'), 0o600); err != nil {
		s.log.Warn("write mesh mirror", telemetry.KeyError, err)
	}
}

// startMesh brings the overlay up before Consul, which binds to its
// address: the node's address becomes the overlay one. It returns the
// overlay and what the mesh mirror held.
func startMesh(c nodeconfig.Config, log hclog.Logger) (*mesh.Node, meshMirror, error) {
	mc := c.Mesh
	iface := mc.Interface
	if iface == "" {
		iface = mesh.DefaultInterface
	}
	mirror := loadMeshMirror(c.DataDir, log)
	secrets := startSecrets(c)
	n, err := mesh.Start(mesh.Config{
		KeyFile: filepath.Join(c.DataDir, "mesh.key"), ListenPort: mc.ListenPort, Secret: secrets.Listen, DialSecrets: secrets.Dial,
		Peers:     endpoint.UniqueSorted(mc.Peers, mirror.Joined, mirror.Known),
		Interface: iface, Log: log.Named("mesh"),
	})
	return n, mirror, err
}

// startSecrets are the secrets a node's mesh starts with: those it last
// ran with win over the config's, which the cluster may have rotated since
// the config was written.
func startSecrets(c nodeconfig.Config) meshSecrets {
	if kept, ok := loadMeshSecrets(c.DataDir); ok {
		return kept
	}
	return meshSecrets{Listen: c.Mesh.Secret}
}

// meshEndpoints are where a node accepts links: the advertised ones, or
// each address of its own network with the listen port.
func meshEndpoints(mc *nodeconfig.Mesh, bindAuto bool) []string {
	if mc.ListenPort == 0 {
		return nil
	}
	if len(mc.Advertise) > 0 {
		return endpoint.UniqueSorted(mc.Advertise)
	}
	port := strconv.Itoa(mc.ListenPort)
	if u := mc.Underlay; !bindAuto && u != "" && u != "0.0.0.0" && u != "::" {
		return []string{net.JoinHostPort(u, port)}
	}
	var out []string
	ifaces, _ := net.Interfaces()
	for _, ifc := range ifaces {
		if ifc.Flags&net.FlagUp == 0 || ifc.Flags&net.FlagLoopback != 0 || localOnlyInterface(ifc.Name) {
			continue
		}
		addrs, _ := ifc.Addrs()
		for _, ad := range addrs {
			ipn, ok := ad.(*net.IPNet)
			if !ok {
				continue
			}
			ip, ok := netip.AddrFromSlice(ipn.IP)
			if !ok || !ip.Unmap().IsGlobalUnicast() || mesh.IsOverlay(ip) {
				continue
			}
			out = append(out, net.JoinHostPort(ip.Unmap().String(), port))
		}
	}
	return endpoint.UniqueSorted(out)
}

func (s *meshSync) endpoints() []string { return meshEndpoints(s.cfg.Mesh, s.bindAuto) }

// localOnlyInterface names interfaces whose addresses mean nothing to other
// machines: every Docker host has its own 172.17.0.1, and the overlay's own
// interface is reached through the mesh.
func localOnlyInterface(name string) bool {
	for _, p := range []string{"docker", "br-", "veth", "virbr", "cni", "raptiformica"} {
		if strings.HasPrefix(name, p) {
			return true
		}
	}
	return false
}

// Run keeps the links in line with KV until ctx ends, then returns nil; a
// pass without KV (no cluster yet, or Consul restarting) dials what the
// node knew and is retried.
func (s *meshSync) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	reads := make(chan meshRead, 1)
	watching := make(chan struct{})
	go func() { defer close(watching); s.watch(ctx, reads) }()
	defer func() { cancel(); <-watching }()
	var last *meshRead        // the last good read of KV, nil before the first
	failing := false          // the last read failed
	seen := map[string]bool{} // keys of peers up in the last pass
	bytes := map[string][2]uint64{}
	linked := false // some link was up at the last look
	for ctx.Err() == nil {
		if last == nil || failing {
			// Without KV the node keeps dialling what it knew.
			s.sync(ctx, nil, kvschema.MeshSecrets{}, false)
		} else {
			s.sync(ctx, last.nodes, last.secrets, true)
		}
		up := s.recordMetrics(s.node.Peers(), seen, bytes)
		linked = s.afterMesh(ctx, linked, up > 0)
		select {
		case <-ctx.Done():
		case r := <-reads:
			if failing = r.err != nil; failing {
				break
			}
			last = &r
			// The read is the truth now: the entry is written again if
			// it differs (see publishNode).
			s.mu.Lock()
			s.published = state.MeshEntry{}
			s.mu.Unlock()
		case <-s.clock.After(meshPass):
		}
	}
	return nil
}

// meshRead is one read of the mesh's folder, or why it failed.
type meshRead struct {
	nodes   map[string]state.MeshEntry
	secrets kvschema.MeshSecrets
	err     error
}

// watch reads the members' entries and the mesh secrets whenever they
// change, at most once per meshReadGap, and hands each read to reads (a
// read not yet taken is replaced by the newer one), or a failed read's
// error. It blocks until ctx ends; a failed read is retried after the gap.
func (s *meshSync) watch(ctx context.Context, reads chan meshRead) {
	send := func(r meshRead) {
		select {
		case <-reads:
		default:
		}
		reads <- r
	}
	w := watch.Watch{Wait: meshWait, Gap: meshReadGap, Clock: s.clock, AllowStale: true,
		// A failed read is told at once (the node dials what it knew)
		// and tried again after the gap, as a read that succeeded.
		Retry: clock.Backoff{Initial: meshReadGap, Max: meshReadGap},
		OnError: func(err error, _ int) {
			if ctx.Err() == nil {
				send(meshRead{err: err})
			}
		}}
	_ = w.Run(ctx, func(q *api.QueryOptions) (uint64, bool, error) {
		pairs, secrets, meta, err := s.store.Mesh(ctx, q)
		if err != nil {
			return 0, false, err
		}
		if meta.LastIndex <= q.WaitIndex {
			// The wait ended without a change, or the index went
			// backwards (a restored snapshot): the watch reads afresh.
			return meta.LastIndex, false, nil
		}
		nodes, bad := mesh.Believe(state.MeshEntries(s.store).DecodeList(pairs))
		s.reportBad(bad)
		send(meshRead{nodes: nodes, secrets: secrets})
		return meta.LastIndex, false, nil
	}, nil)
}

func (s *meshSync) sync(ctx context.Context, nodes map[string]state.MeshEntry, secrets kvschema.MeshSecrets, fromKV bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if fromKV {
		s.applySecrets(secrets)
	}
	mirror := s.known
	var described []string
	port, maxLinks := rules.DefaultMeshPort, peering.DefaultMaxLinks
	if p := s.platform(); p != nil {
		described, port, maxLinks = p.Mesh.Peers, p.Mesh.Port, p.Mesh.Links()
	}
	static := endpoint.HostPorts(described, mirror.Joined)
	own := endpoint.HostPorts(s.endpoints())
	up := upEndpoints(s.node.Peers())
	if fromKV {
		self := peering.Member{ID: s.cfg.MachineID, Server: s.cfg.ConsulServer, Listens: len(own) > 0}
		known := chosenEndpoints(self, nodes, maxLinks)
		if s.leading() {
			// The inventory is read by the leader only: a client's pass
			// costs one read of the mesh's folder, when it changes.
			recs, _, err := s.inventory.List(ctx, &api.QueryOptions{AllowStale: true})
			if err == nil {
				s.pruneNodes(ctx, nodes, recs)
				s.firstEntries(ctx, nodes, recs, port)
			}
		}
		joined := slices.Clone(mirror.Joined)
		// A peer added by hand that is not among the chosen stays: an
		// operator gave it, perhaps as the only way this machine has.
		mirror = expireJoined(mirror, known, up, s.clock.Now())
		for _, ep := range joined {
			if !slices.Contains(mirror.Joined, ep) {
				s.log.Info("mesh peer added by hand dropped", telemetry.KeyEndpoint, ep, telemetry.KeyReason, "the mesh's rule links this node to it, or it was not up for "+joinedTTL.String())
			}
		}
		if !slices.Equal(known, mirror.Known) || !slices.Equal(joined, mirror.Joined) {
			mirror.Known = known
			s.save(mirror)
		}
		s.publishNode(ctx, nodes[s.cfg.MachineID], own)
		static = endpoint.HostPorts(described, mirror.Joined)
	}
	want := endpoint.UniqueSorted(static, mirror.Known)
	if !fromKV || !slices.ContainsFunc(mirror.Known, func(ep string) bool { return up[ep] }) {
		// The node's way in: until KV is read and a chosen link is up.
		want = endpoint.UniqueSorted(want, endpoint.HostPorts(s.cfg.Mesh.Peers))
	}
	for _, ep := range want {
		if slices.Contains(own, ep) {
			continue
		}
		if err := s.node.AddPeer(ep); err != nil {
			s.log.Warn("mesh peer refused", telemetry.KeyEndpoint, ep, telemetry.KeyError, err)
		}
	}
	if fromKV {
		// Only what KV says is gone is dropped: without KV the node keeps
		// dialling everything it knew.
		for _, ep := range s.node.Kept() {
			if !slices.Contains(want, ep) {
				_ = s.node.RemovePeer(ep)
			}
		}
	}
	s.joinPeers()
}

// applySecrets takes the rotation's step the KV is at (see
// kvschema.MeshSecrets and package rotate), on every pass until the node
// is done with it (mesh.Node.SetSecrets). The step is kept on disk before
// the node takes it, so that a restart comes back at least as far as the
// node got. The caller holds mu.
func (s *meshSync) applySecrets(kv kvschema.MeshSecrets) {
	want, ok := meshSecretsFor(kv)
	if !ok {
		return
	}
	if !s.secretsLoaded {
		s.secrets, _ = loadMeshSecrets(s.cfg.DataDir)
		s.secretsLoaded = true
	}
	if !want.equal(s.secrets) {
		if err := saveMeshSecrets(s.cfg.DataDir, want); err != nil {
			s.log.Warn("keep the mesh secrets", telemetry.KeyFile, filepath.Join(s.cfg.DataDir, meshSecretsFile), telemetry.KeyError, err)
			return
		}
		s.secrets = want
		s.log.Info("mesh secrets changed", telemetry.KeyListen, mesh.Fingerprint(want.Listen), telemetry.KeyDial, fingerprints(want.Dial))
	}
	if err := s.node.SetSecrets(want.Listen, want.Dial); err != nil {
		s.log.Warn("mesh secrets not taken; retrying", telemetry.KeyError, err)
	}
}

func fingerprints(secrets []string) []string {
	out := []string{}
	for _, s := range secrets {
		out = append(out, mesh.Fingerprint(s))
	}
	sort.Strings(out)
	return out
}

// firstEntries writes, for each machine of the inventory without a mesh
// entry, a first one made of its addresses on its own networks, as the
// backend reported them at spawn, with the mesh port: every node reads it
// with the rest, and the members the mesh's rule links to the machine dial
// it, so that a new machine that reaches no member, but that a member
// reaches, still links. The machine replaces the entry with its own once it
// is in the cluster; the leader never overwrites one (it writes only
// where there is none, by check-and-set on index 0).
func (s *meshSync) firstEntries(ctx context.Context, nodes map[string]state.MeshEntry, recs map[string]reconcile.Record, port int) {
	var server func(string) bool
	if p := s.platform(); p != nil {
		server = func(typ string) bool { return p.Machines[typ].ConsulServer }
	}
	for _, n := range unlistedEntries(recs, nodes, port, server) {
		if _, err := state.MeshEntries(s.store).Put(ctx, n, 0); err != nil {
			s.log.Debug("first mesh entry", telemetry.KeyMachineID, n.MachineID, telemetry.KeyError, err)
		}
	}
}

// unlistedEntries are first entries for the machines without a mesh entry
// that have an address of their own network (see firstEntries); server,
// if not nil, says whether a machine type is a Consul server.
func unlistedEntries(recs map[string]reconcile.Record, nodes map[string]state.MeshEntry, port int, server func(string) bool) []state.MeshEntry {
	var out []state.MeshEntry
	for id, r := range recs {
		if _, ok := nodes[id]; ok || r.State == reconcile.StateDestroying {
			continue
		}
		var eps []string
		for _, addr := range endpoint.UniqueSorted([]string{r.Address}, r.Addresses) {
			if ip, err := netip.ParseAddr(addr); err != nil || mesh.IsOverlay(ip) {
				continue // a host name is an SSH target, not a mesh endpoint
			}
			eps = append(eps, net.JoinHostPort(addr, strconv.Itoa(port)))
		}
		if len(eps) > 0 {
			out = append(out, state.MeshEntry{MachineID: id, Endpoints: endpoint.HostPorts(eps), Server: server != nil && server(r.Type)})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].MachineID < out[j].MachineID })
	return out
}

// publishNode writes this node's entry when KV lacks it or holds an old
// one, or one this node has not written since its last read of KV. The
// caller holds mu.
func (s *meshSync) publishNode(ctx context.Context, have state.MeshEntry, endpoints []string) {
	listen, dial := s.node.Secrets()
	me := state.MeshEntry{MachineID: s.cfg.MachineID, Key: s.node.PublicKey(), Address: s.cfg.BindAddr, Endpoints: endpoints, Server: s.cfg.ConsulServer,
		ListenSecret: mesh.Fingerprint(listen), DialSecrets: fingerprints(dial)}
	// Reads are rare and may be stale: what this node wrote last counts
	// as in KV, or every pass would write it again until the next read.
	if sameMeshNode(have, me) || sameMeshNode(s.published, me) {
		return
	}
	if err := state.MeshEntries(s.store).Set(ctx, me); err != nil {
		s.log.Warn("publish mesh entry", telemetry.KeyError, err)
		return
	}
	s.published = me
}

func sameMeshNode(a, b state.MeshEntry) bool {
	return a.MachineID == b.MachineID && a.Key == b.Key && a.Address == b.Address && slices.Equal(a.Endpoints, b.Endpoints) && a.Server == b.Server &&
		a.ListenSecret == b.ListenSecret && slices.Equal(a.DialSecrets, b.DialSecrets)
}

// pruneNodes drops the entries of machines the inventory no longer
// has, so that nobody keeps dialling a machine that was reaped.
func (s *meshSync) pruneNodes(ctx context.Context, nodes map[string]state.MeshEntry, recs map[string]reconcile.Record) {
	for id := range nodes {
		if _, ok := recs[id]; !ok && id != s.cfg.MachineID {
			if err := state.MeshEntries(s.store).Forget(ctx, id); err == nil {
				s.log.Info("mesh entry of a removed machine dropped", telemetry.KeyMachineID, id)
			}
		}
	}
}

// joinPeers asks Consul to join each peer with a link up that it does
// not know as alive: the first link of a new node, or a member back after
// a split, is in the cluster at once rather than at the next retry.
func (s *meshSync) joinPeers() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	members, err := consulclient.Members(ctx, s.consul)
	if err != nil {
		return
	}
	alive := map[string]bool{}
	for _, m := range members {
		if reconcile.SerfStatus(m.Status) == state.MemberAlive {
			alive[m.Addr] = true
		}
	}
	for _, p := range s.node.Peers() {
		if !p.Up || p.Address == "" || alive[p.Address] {
			continue
		}
		if err := consulclient.Join(ctx, s.consul, p.Address); err != nil {
			s.log.Debug("consul join over the mesh", telemetry.KeyAddress, p.Address, telemetry.KeyError, err)
		}
		alive[p.Address] = true
	}
}

// afterMesh fires the after_mesh hooks when this machine's overlay goes
// from no link to one (its first, or its first after it was cut off): the
// machine can now reach the cluster. It returns whether a link is up.
func (s *meshSync) afterMesh(ctx context.Context, was, now bool) bool {
	if now && !was && s.hooks != nil {
		if p := s.platform(); p != nil {
			s.hooks.Fire(ctx, p, "after_mesh", state.Action{MachineID: s.cfg.MachineID, Reason: "the overlay has a link up"})
		}
	}
	return now
}

// recordMetrics exports one look at the links: counts, bytes carried since
// the last look (seen and last carry what that look saw), and churn. It
// returns how many links are up.
func (s *meshSync) recordMetrics(peers []mesh.Peer, seen map[string]bool, last map[string][2]uint64) int {
	up, down := 0, 0
	now := map[string]bool{}
	links := map[string]bool{}
	for _, p := range peers {
		if !p.Up {
			down++
			continue
		}
		up++
		now[p.Key] = true
		// Byte counts are per link and restart with it: count what each
		// link added since the last pass.
		id := p.Endpoint + "|" + p.Key
		prev := last[id]
		if p.RXBytes < prev[0] || p.TXBytes < prev[1] {
			prev = [2]uint64{}
		}
		s.metrics.MeshBytes.WithLabelValues("rx").Add(float64(p.RXBytes - prev[0]))
		s.metrics.MeshBytes.WithLabelValues("tx").Add(float64(p.TXBytes - prev[1]))
		last[id] = [2]uint64{p.RXBytes, p.TXBytes}
		links[id] = true
	}
	for id := range last {
		if !links[id] {
			delete(last, id) // a link gone for good: forget its counts
		}
	}
	s.metrics.MeshPeers.WithLabelValues("up").Set(float64(up))
	s.metrics.MeshPeers.WithLabelValues("down").Set(float64(down))
	for k := range now {
		if !seen[k] {
			s.metrics.MeshPeerChanges.WithLabelValues("up").Inc()
		}
	}
	for k := range seen {
		if !now[k] {
			s.metrics.MeshPeerChanges.WithLabelValues("down").Inc()
			delete(seen, k)
		}
	}
	for k := range now {
		seen[k] = true
	}
	return up
}

// Status describes the node's mesh, and when no link is up, why.
func (s *meshSync) Status() *agentapi.MeshStatus {
	st := &agentapi.MeshStatus{Address: s.node.Address().String(), Key: s.node.PublicKey(), ListenPort: s.cfg.Mesh.ListenPort,
		Endpoints: s.endpoints(), Peers: s.node.Peers()}
	for _, p := range st.Peers {
		if p.Up {
			return st
		}
	}
	st.Problem = noPeerProblem(st.Peers, st.ListenPort)
	return st
}

// noPeerProblem says why a node has no link, from what its dials report.
func noPeerProblem(peers []mesh.Peer, listenPort int) string {
	if len(peers) == 0 {
		if listenPort == 0 {
			return "no mesh peer: this node is dial-only and knows no member to dial; run `raptiformica join HOST[:PORT]` with a member's address"
		}
		return "no mesh peer: no member is known to dial and none has dialled in; run `raptiformica join HOST[:PORT]` here, or on a member with --agent to dial this node"
	}
	var why []string
	for _, p := range peers {
		e := p.LastError
		switch {
		case e == "":
			e = "dialling"
		case strings.Contains(e, "password does not match"):
			e += " (this node's mesh secret is not the cluster's: a member prints it with `raptiformica mesh secret`)"
		}
		why = append(why, p.Endpoint+": "+e)
	}
	return "no mesh peer is up: " + strings.Join(why, "; ")
}

// maxJoined caps the peers added by hand: a node joins through one
// member, a few at most.
const maxJoined = 16

// joinedTTL is how long a peer added by hand is dialled without ever
// coming up before it is dropped: an endpoint given by mistake, or by a
// caller that meant harm, is not redialled for ever.
const joinedTTL = 24 * time.Hour

// expireJoined drops the peers added by hand that are no longer of use:
// those among known, the chosen members' endpoints (the node dials them
// anyway), and those not up for joinedTTL. A peer up now is seen now.
func expireJoined(m meshMirror, known []string, up map[string]bool, now time.Time) meshMirror {
	seen := make(map[string]time.Time, len(m.Joined))
	var keep []string
	for _, ep := range m.Joined {
		at, ok := m.JoinedSeen[ep]
		if !ok || up[ep] {
			at = now // a mirror from before, or a link up
		}
		if slices.Contains(known, ep) || now.Sub(at) > joinedTTL {
			continue
		}
		keep, seen[ep] = append(keep, ep), at
	}
	m.Joined, m.JoinedSeen = keep, seen
	return m
}

// upEndpoints are the host:port endpoints of the links up.
func upEndpoints(peers []mesh.Peer) map[string]bool {
	up := map[string]bool{}
	for _, p := range peers {
		if u, err := endpoint.Parse(p.Endpoint); err == nil && p.Up {
			up[u.Host] = true
		}
	}
	return up
}

// serveAddPeer adds a peer by hand (raptiformica join): it is dialled at
// once and kept in the mirror, so a restarted node dials it again.
func (s *meshSync) serveAddPeer(w http.ResponseWriter, r *http.Request) {
	var req agentapi.MeshPeerRequest
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 4096)).Decode(&req); err != nil {
		http.Error(w, "bad request: "+err.Error()+"\n", http.StatusBadRequest)
		return
	}
	u, err := endpoint.Parse(req.Endpoint)
	if err != nil {
		http.Error(w, err.Error()+"\n", http.StatusBadRequest)
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.known.Joined) >= maxJoined && !slices.Contains(s.known.Joined, u.Host) {
		http.Error(w, fmt.Sprintf("this node keeps at most %d peers added by hand\n", maxJoined), http.StatusTooManyRequests)
		return
	}
	if err := s.node.AddPeer(u.Host); err != nil {
		http.Error(w, err.Error()+"\n", http.StatusBadRequest)
		return
	}
	m := s.known
	m.Joined = endpoint.UniqueSorted(m.Joined, []string{u.Host})
	m.JoinedSeen = maps.Clone(m.JoinedSeen)
	if m.JoinedSeen == nil {
		m.JoinedSeen = map[string]time.Time{}
	}
	m.JoinedSeen[u.Host] = s.clock.Now()
	s.save(m)
	s.log.Info("mesh peer added by hand", telemetry.KeyEndpoint, u.Host)
	w.WriteHeader(http.StatusNoContent)
}
