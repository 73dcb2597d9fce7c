package e2e

import (
	"archive/tar"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/docker/docker/api/types/network"
	"github.com/hashicorp/consul/api"

	"github.com/raptiformica/raptiformica/internal/consulclient"
	"github.com/raptiformica/raptiformica/internal/kvschema"
	"github.com/raptiformica/raptiformica/internal/nodeconfig"
	"github.com/raptiformica/raptiformica/internal/state"
	"github.com/raptiformica/raptiformica/internal/testconsul"
	"github.com/raptiformica/raptiformica/mesh"
	"github.com/raptiformica/raptiformica/reconcile"
)

// trustPlatform is three servers and two client machines on the docker
// backend, where every container, clients' too, gets the engine's socket
// (share_socket = "all"): the clients are trusted to host machines, and so
// offer the backend. The client type's name sorts before "server", so
// that it would win a tie of placement, and the grace period is long, so
// that a client cut off from the cluster is not replaced while the test
// looks at what its name does.
func trustPlatform(cluster string) string {
	return fmt.Sprintf(`cluster = %q
policy {
  grace_period      = "10m"
  cooldown          = "1s"
  provision_timeout = "90s"
  resync_interval   = "2s"
  backoff_initial   = "2s"
  backoff_max       = "10s"
}
backend "docker" {
  type     = "docker"
  settings = { share_socket = "all" }
}
machine "server" {
  min           = 3
  consul_server = true
  backends      = ["docker"]
}
machine "app" {
  min      = 2
  max      = 2
  backends = ["docker"]
}
`, cluster)
}

// TestTrustCompromisedClient: an attacker owns one client machine of a
// docker cluster of three servers and two clients: its node config, its
// token, its certificate, root on it. With them it tries what the issue
// found possible: rewrite its own inventory record and another's, read
// every work order and the join tokens, restart its Consul as a server
// (with the gossip key it holds and its own certificate) to be taken for
// one and be given a server's spawn, whose node config holds the cluster's
// token and the CA key, and forge a record at its own key that speaks for
// a server. Afterwards no server was destroyed or replaced but the one the
// test killed, no credential beyond its own reached it, the cluster is
// whole, and status names the forged record.
func TestTrustCompromisedClient(t *testing.T) {
	t.Parallel()
	c := newDockerCluster(t)
	c.up(trustPlatform(c.name))
	v := c.waitAgree(5, 4*time.Minute, "after up")
	var servers, apps []string
	for _, id := range v.joined {
		switch v.records[id].Type {
		case "server":
			servers = append(servers, id)
		case "app":
			apps = append(apps, id)
		}
	}
	if len(servers) != 3 || len(apps) != 2 {
		t.Fatalf("servers %v, apps %v: want 3 and 2", servers, apps)
	}
	attacker := apps[0]
	ctx := context.Background()
	node := containerNodeConfig(t, c, attacker)
	if node.ConsulServer || node.TLS == nil || node.TLS.CAKey != "" || node.ACLToken == c.token() {
		t.Fatalf("the client's node config holds more than its own keys (server %v, CA key %v, cluster token %v)",
			node.ConsulServer, node.TLS != nil && node.TLS.CAKey != "", node.ACLToken == c.token())
	}
	// Its own token, against a server's Consul, as Consul's CLI or curl
	// would use it.
	own, err := consulclient.New(consulclient.Target{Host: c.address(servers[0]), Token: node.ACLToken, CACert: node.TLS.CACert})
	if err != nil {
		t.Fatal(err)
	}

	// Its own inventory record, and another's: the leader's alone.
	for key, rec := range map[string]reconcile.Record{
		kvschema.Inventory + attacker:   {ID: attacker, Type: "server", State: reconcile.StateJoined, Manual: true, Host: v.leader, Created: time.Unix(0, 0)},
		kvschema.Inventory + servers[1]: {ID: servers[1], Type: "server", State: reconcile.StateDestroying, Reason: "forged"},
	} {
		b, _ := json.Marshal(rec)
		if _, err := own.KV().Put(&api.KVPair{Key: key, Value: b}, nil); err == nil {
			t.Errorf("the client's token wrote %s", key)
		}
	}
	// Mesh entries: its own key, in a server's name, is read as nobody's;
	// a server's key it may not write.
	forgedEntry, _ := json.Marshal(state.MeshEntry{MachineID: servers[0], Endpoints: []string{"10.6.6.6:9651"}, Server: true})
	if _, err := own.KV().Put(&api.KVPair{Key: kvschema.MeshNodes + attacker, Value: forgedEntry}, nil); err != nil {
		t.Fatalf("the client's token may write its own mesh entry: %v", err)
	}
	if _, err := own.KV().Put(&api.KVPair{Key: kvschema.MeshNodes + servers[0], Value: forgedEntry}, nil); err == nil {
		t.Errorf("the client's token wrote %s's mesh entry", servers[0])
	}
	if nodes, err := mesh.ReadEntries(ctx, kvschema.New(own)); err != nil {
		t.Fatal(err)
	} else if n, ok := nodes[servers[0]]; ok && slices.Contains(n.Endpoints, "10.6.6.6:9651") {
		t.Errorf("the forged mesh entry is read as %s's: %+v", servers[0], n)
	}
	// Services: registered on its own node only; another node's is not
	// its to write (Prometheus labels a target by its node).
	if _, err := own.Catalog().Register(&api.CatalogRegistration{Node: servers[0], Address: "10.6.6.6",
		Service: &api.AgentService{ID: "raptiformica-forged", Service: "raptiformica", Port: 9551, Meta: map[string]string{"machine_id": servers[0]}}}, nil); err == nil {
		t.Errorf("the client's token registered a service on %s's node", servers[0])
	}

	// Every work-order folder, and the join tokens' records.
	if keys, _, err := own.KV().Keys(kvschema.Work, "", nil); err == nil {
		for _, k := range keys {
			if !strings.HasPrefix(k, kvschema.Work+attacker+"/") {
				t.Errorf("the client's token reads %s, another host's work order", k)
			}
		}
	}
	if keys, _, err := own.KV().Keys(kvschema.JoinTokens, "", nil); err == nil && len(keys) > 0 {
		t.Errorf("the client's token lists the join tokens: %v", keys)
	}

	// Its certificate, shown by a server of its own on the cluster's
	// network, collects neither an operator's token (`join --agent`)
	// nor a join secret (`join --token`): the operator's commands check
	// that a peer's certificate is a server's before they send either.
	cli := c.be.Client()
	nw, err := cli.NetworkInspect(ctx, c.be.Network(), network.InspectOptions{})
	if err != nil || len(nw.IPAM.Config) == 0 || nw.IPAM.Config[0].Gateway == "" {
		t.Fatalf("the cluster's network has no gateway address: %v %+v", err, nw.IPAM)
	}
	gateway := nw.IPAM.Config[0].Gateway
	collected := collector(t, node, gateway)
	joinTok, errOut, code := c.rf("token", "create")
	if code != 0 {
		t.Fatalf("token create: %s", errOut)
	}
	joinTok = strings.TrimSpace(joinTok)
	if _, _, code := c.rf("join", "192.0.2.20:9651", "--agent", collected.addr, "--timeout", "10s"); code == 0 {
		t.Error("join --agent succeeded against the attacker's agent")
	}
	if _, _, code := c.rf("join", "--token", joinTok, collected.addr, "--config", filepath.Join(t.TempDir(), "agent.json"), "--timeout", "10s"); code == 0 {
		t.Error("join --token succeeded against the attacker's agent")
	}
	if got := collected.String(); strings.Contains(got, c.token()) || strings.Contains(got, joinTok[strings.LastIndex(joinTok, ".")+1:]) {
		t.Errorf("the attacker's agent collected a credential:\n%s", got)
	}

	// Restart its Consul as a server: the member keeps its name (and so
	// its offer of the backend, which its socket made true) from
	// another address, the host's on the cluster's network, while its
	// machine is cut off. Its gossip then says role=consul.
	if err := cli.NetworkDisconnect(ctx, c.be.Network(), attacker, true); err != nil {
		t.Fatalf("cut %s off: %v", attacker, err)
	}
	tlsFile := rogueTLS(t, node)
	// It retries its join: Consul lets a name be taken from a new address
	// once its member has been dead for 30 s.
	rogue, err := testconsul.StartUnjoined(gateway, attacker, c.address(servers[0]), "-server", "-encrypt", node.Encrypt, "-config-file", tlsFile)
	if err != nil {
		t.Fatalf("the attacker's Consul as a server: %v", err)
	}
	t.Cleanup(rogue.Stop)
	if !poll(2*time.Minute, func() bool {
		ms, err := c.client().Agent().Members(false)
		if err != nil {
			return false
		}
		i := slices.IndexFunc(ms, func(m *api.AgentMember) bool { return m.Name == attacker })
		return i >= 0 && ms[i].Status == 1 && ms[i].Addr == gateway && ms[i].Tags[api.MemberTagKeyRole] == api.MemberTagValueRoleServer
	}) {
		t.Fatalf("the attacker's name never came back as an alive member with role=consul from %s", gateway)
	}
	offer, _, err := own.KV().Get(kvschema.Offers+attacker, nil)
	if err != nil || offer == nil || !strings.Contains(string(offer.Value), `"available":true`) {
		t.Fatalf("the attacker's offer of the backend is gone (%v): the test shows nothing", err)
	}

	// A server dies: its replacement's node config must not go to the
	// attacker, though it offers the backend, holds nothing, wins a tie,
	// and says it is a server.
	victim := servers[1]
	if victim == v.leader {
		victim = servers[2]
	}
	c.kill(victim)
	leaked := make(chan string, 1)
	watchCtx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	go func() {
		report := func(what string) {
			select {
			case leaked <- what:
			default:
			}
		}
		for watchCtx.Err() == nil {
			q := (&api.QueryOptions{}).WithContext(watchCtx)
			pairs, _, _ := own.KV().List(kvschema.Work+attacker+"/", q)
			for _, p := range pairs {
				var w state.WorkOrder
				if json.Unmarshal(p.Value, &w) == nil && w.Node != nil && (w.Node.ConsulServer || w.Node.ACLToken == c.token() || w.Node.TLS != nil && w.Node.TLS.CAKey != "") {
					report("a server's node config in the attacker's work order " + p.Key)
				}
			}
			recs, _, _ := (&reconcile.Inventory{Store: kvschema.New(own)}).List(watchCtx, nil)
			for id, r := range recs {
				if r.Type == "server" && r.Host == attacker {
					report("server " + id + " placed on the attacker's host")
				}
			}
			time.Sleep(100 * time.Millisecond)
		}
	}()
	var after view
	for end := time.Now().Add(3 * time.Minute); ; time.Sleep(200 * time.Millisecond) {
		select {
		case what := <-leaked:
			t.Fatalf("the cluster's authority went to the attacker: %s", what)
		default:
		}
		var ok bool
		if after, ok = c.serversSettled(3, victim); ok {
			break
		}
		if time.Now().After(end) {
			t.Fatalf("the cluster did not settle on 3 servers in 3m: %v", after)
		}
	}
	stopWatch()
	for id, r := range after.records {
		if r.Type == "server" && r.Host == attacker {
			t.Errorf("server %s was made on the attacker's host", id)
		}
	}
	for _, id := range servers {
		if _, ok := after.records[id]; !ok && id != victim {
			t.Errorf("server %s was removed", id)
		}
	}

	// A record at its own key that speaks for a server is refused, named
	// in status, and acted on by nobody.
	forged, _ := json.Marshal(state.Offer{Machine: servers[0], Backends: map[string]state.BackendOffer{"docker": {Available: true}}})
	if _, err := own.KV().Put(&api.KVPair{Key: kvschema.Offers + attacker, Value: forged}, nil); err != nil {
		t.Fatalf("the client's token may write its own offer: %v", err)
	}
	var out string
	if !poll(time.Minute, func() bool {
		out, _, _ = c.rf("status")
		return strings.Contains(out, "BAD RECORD") && strings.Contains(out, kvschema.Offers+attacker)
	}) {
		t.Errorf("status does not name the forged offer:\n%s", out)
	}
	final := c.waitAgreeServers(3, time.Minute, victim)
	for _, id := range servers {
		if _, ok := final.records[id]; !ok && id != victim {
			t.Errorf("server %s was removed after the forged offer", id)
		}
	}
}

// credentials is what an attacker's agent was sent: every request's
// headers and body.
type credentials struct {
	addr string
	mu   sync.Mutex
	seen strings.Builder
}

func (c *credentials) String() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.seen.String()
}

// collector serves HTTPS on host with the client machine's own
// certificate (chained to the cluster's CA, as an agent's is), and keeps
// whatever a caller sends it once the handshake passes.
func collector(t *testing.T, node nodeconfig.Config, host string) *credentials {
	t.Helper()
	pair, err := tls.X509KeyPair([]byte(node.TLS.Cert+node.TLS.CACert), []byte(node.TLS.Key))
	if err != nil {
		t.Fatal(err)
	}
	got := &credentials{}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(io.LimitReader(r.Body, 1<<16))
		got.mu.Lock()
		fmt.Fprintf(&got.seen, "%s %s %v %s\n", r.Method, r.URL.Path, r.Header, body)
		got.mu.Unlock()
		http.Error(w, "collected", http.StatusTeapot)
	}))
	ln, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		t.Fatal(err)
	}
	srv.Listener = ln
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{pair}}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	got.addr = ln.Addr().String()
	return got
}

// waitAgreeServers waits until serversSettled, and returns that view.
func (c *dockerCluster) waitAgreeServers(n int, timeout time.Duration, gone ...string) view {
	c.t.Helper()
	var last view
	for end := time.Now().Add(timeout); time.Now().Before(end); time.Sleep(200 * time.Millisecond) {
		var ok bool
		if last, ok = c.serversSettled(n, gone...); ok {
			return last
		}
	}
	c.t.Fatalf("the cluster did not settle on %d servers in %s: %v", n, timeout, last)
	return last
}

// serversSettled says whether the cluster has n joined server records,
// each an alive member and a Raft voter, none of them in gone, and there
// is a leader.
func (c *dockerCluster) serversSettled(n int, gone ...string) (view, bool) {
	v, err := c.view()
	if err != nil || v.leader == "" || v.has(gone...) {
		return v, false
	}
	var joined []string
	for _, id := range v.joined {
		if v.records[id].Type == "server" && contains(v.alive, id) {
			joined = append(joined, id)
		}
	}
	return v, len(joined) == n && c.votersAre(joined)
}

// votersAre says whether Raft's voters are exactly ids.
func (c *dockerCluster) votersAre(ids []string) bool {
	cl := c.client()
	if cl == nil {
		return false
	}
	cfg, err := cl.Operator().RaftGetConfiguration(nil)
	if err != nil {
		return false
	}
	var voters []string
	for _, s := range cfg.Servers {
		if s.Voter {
			voters = append(voters, s.ID)
		}
	}
	var want []string
	for _, id := range ids {
		want = append(want, consulclient.NodeID(id))
	}
	slices.Sort(voters)
	slices.Sort(want)
	return slices.Equal(voters, want)
}

// containerNodeConfig reads the node config inside machine id's container,
// as root on that machine would.
func containerNodeConfig(t *testing.T, c *dockerCluster, id string) nodeconfig.Config {
	t.Helper()
	rc, _, err := c.be.Client().CopyFromContainer(context.Background(), id, "/etc/raptiformica/agent.json")
	if err != nil {
		t.Fatalf("read %s's node config: %v", id, err)
	}
	defer rc.Close()
	tr := tar.NewReader(rc)
	if _, err := tr.Next(); err != nil {
		t.Fatalf("read %s's node config: %v", id, err)
	}
	b, err := io.ReadAll(io.LimitReader(tr, 1<<20))
	if err != nil {
		t.Fatal(err)
	}
	var cfg nodeconfig.Config
	if err := json.Unmarshal(b, &cfg); err != nil {
		t.Fatalf("%s's node config: %v", id, err)
	}
	return cfg
}

// rogueTLS writes a Consul config that speaks the cluster's mutual TLS
// with the client's own certificate, as the attacker's Consul would.
func rogueTLS(t *testing.T, node nodeconfig.Config) string {
	t.Helper()
	dir := t.TempDir()
	files := map[string]string{"ca.pem": node.TLS.CACert, "cert.pem": node.TLS.Cert, "key.pem": node.TLS.Key}
	for name, pem := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(pem), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	cfg, _ := json.Marshal(map[string]any{"tls": map[string]any{
		"defaults": map[string]any{
			"ca_file": filepath.Join(dir, "ca.pem"), "cert_file": filepath.Join(dir, "cert.pem"), "key_file": filepath.Join(dir, "key.pem"),
			"verify_incoming": true, "verify_outgoing": true,
		},
		"internal_rpc": map[string]any{"verify_server_hostname": true},
	}})
	file := filepath.Join(dir, "tls.json")
	if err := os.WriteFile(file, cfg, 0o600); err != nil {
		t.Fatal(err)
	}
	return file
}
