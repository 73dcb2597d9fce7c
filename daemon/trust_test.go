package daemon

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/raptiformica/raptiformica/daemon/agentapi"
	"github.com/raptiformica/raptiformica/internal/consulclient"
	"github.com/raptiformica/raptiformica/internal/kvschema"
	"github.com/raptiformica/raptiformica/internal/nodeconfig"
	"github.com/raptiformica/raptiformica/internal/pki"
	"github.com/raptiformica/raptiformica/internal/state"
	"github.com/raptiformica/raptiformica/internal/testconsul"
	"github.com/raptiformica/raptiformica/mesh"
)

// TestTrustMeshEntriesBoundToTheirKeys: a client may write its own mesh
// entry, and only that key. What it writes there must not replace another
// member's endpoints and key in every node's view: an entry naming
// another machine, and one whose address is not its public key's, are
// refused and named; the others are read as they are. One that copies
// another's key takes nothing: both are refused, neither proving the key
// its own, whichever was written first.
func TestTrustMeshEntriesBoundToTheirKeys(t *testing.T) {
	serverKey, serverAddr := meshKey("server-a")
	workerKey, workerAddr := meshKey("worker-x")
	entry := func(key string, created uint64, n state.MeshEntry) *api.KVPair {
		b, _ := json.Marshal(n)
		return &api.KVPair{Key: kvschema.MeshNodes + key, Value: b, CreateIndex: created, ModifyIndex: created}
	}
	server := state.MeshEntry{MachineID: "server-a", Key: serverKey, Address: serverAddr, Endpoints: []string{"10.0.0.1:9651"}, Server: true}
	pairs := api.KVPairs{
		entry("server-a", 10, server),
		// Under its own key, in server-a's name.
		entry("worker-x", 20, state.MeshEntry{MachineID: "server-a", Key: workerKey, Address: workerAddr, Endpoints: []string{"10.6.6.6:9651"}, Server: true}),
		// Under its own name, with server-a's key and address.
		entry("worker-y", 30, state.MeshEntry{MachineID: "worker-y", Key: serverKey, Address: serverAddr, Endpoints: []string{"10.6.6.7:9651"}}),
		// An address that is not its key's.
		entry("worker-z", 40, state.MeshEntry{MachineID: "worker-z", Key: workerKey, Address: serverAddr, Endpoints: []string{"10.6.6.8:9651"}}),
		// The leader's first entry for a machine: endpoints, no key.
		entry("worker-new", 50, state.MeshEntry{MachineID: "worker-new", Endpoints: []string{"10.0.0.9:9651"}}),
	}
	c, err := api.NewClient(api.DefaultConfig()) // never dialled: the folder only decodes
	if err != nil {
		t.Fatal(err)
	}
	entries := state.MeshEntries(kvschema.New(c))
	nodes, bad := mesh.Believe(entries.DecodeList(pairs))
	var ids []string
	for id := range nodes {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	if want := []string{"worker-new"}; !slices.Equal(ids, want) {
		t.Errorf("entries read: %q, want %q", ids, want)
	}
	var refused []string
	for _, b := range bad {
		refused = append(refused, strings.TrimPrefix(b.Key, kvschema.MeshNodes))
	}
	if want := []string{"server-a", "worker-x", "worker-y", "worker-z"}; !slices.Equal(refused, want) {
		t.Errorf("refused %q, want %q (%v)", refused, want, bad)
	}
	// Without the copy, server-a's own entry is read as it is.
	nodes, _ = mesh.Believe(entries.DecodeList(api.KVPairs{pairs[0], pairs[1]}))
	if got := nodes["server-a"]; !slices.Equal(got.Endpoints, server.Endpoints) || got.Key != serverKey {
		t.Errorf("server-a as every node sees it: %+v, want its own entry", got)
	}
	// Copied by an entry older than its own: no takeover either.
	pairs[2].CreateIndex, pairs[2].ModifyIndex = 1, 1
	if nodes, _ = mesh.Believe(entries.DecodeList(pairs)); nodes["worker-y"].Key == serverKey {
		t.Errorf("an older entry took server-a's key: %+v", nodes["worker-y"])
	}
}

// TestTrustAgentReadsOverTLSOnly: what an agent discloses of the cluster
// (status, page, metrics) is for its own machine over plain HTTP, and for
// another machine over TLS only with a member's certificate of the
// cluster's CA, or a token: a stranger who reaches the port reads nothing.
func TestTrustAgentReadsOverTLSOnly(t *testing.T) {
	ca, err := pki.NewCA("trust")
	if err != nil {
		t.Fatal(err)
	}
	own, err := ca.Issue("server-a", true)
	if err != nil {
		t.Fatal(err)
	}
	member, err := ca.Issue("worker-b", false)
	if err != nil {
		t.Fatal(err)
	}
	other, err := pki.NewCA("another cluster")
	if err != nil {
		t.Fatal(err)
	}
	stranger, err := other.Issue("worker-b", false)
	if err != nil {
		t.Fatal(err)
	}
	const token = "0b8e7c9a-2a4e-4f4b-9d0c-5a1f3e2d7c6b"
	h := &httpServer{cfg: nodeconfig.Config{MachineID: "server-a", ACLToken: token, BindAddr: "127.0.0.1", HTTPSPort: 9551}}
	read := h.reading(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("the cluster's state\n")) }))
	tlsCfg, err := serverTLS(&nodeconfig.TLS{CACert: ca.CertPEM, Cert: own.CertPEM, Key: own.KeyPEM})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(read)
	srv.TLS = tlsCfg
	srv.StartTLS()
	t.Cleanup(srv.Close)

	client := func(cert *pki.Cert) *http.Client {
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM([]byte(ca.CertPEM))
		cfg := &tls.Config{RootCAs: pool, ServerName: pki.MemberName}
		if cert != nil {
			pair, err := tls.X509KeyPair([]byte(cert.CertPEM), []byte(cert.KeyPEM))
			if err != nil {
				t.Fatal(err)
			}
			cfg.Certificates = []tls.Certificate{pair}
		}
		return &http.Client{Transport: &http.Transport{TLSClientConfig: cfg}}
	}
	for _, tc := range []struct {
		name   string
		client *http.Client
		auth   string
		want   int
	}{
		{"nothing", client(nil), "", http.StatusUnauthorized},
		{"a token nobody vouches for", client(nil), "Bearer 11111111-2222-3333-4444-555555555555", http.StatusUnauthorized},
		{"a member's certificate", client(&member), "", http.StatusOK},
		{"the machine's own token", client(nil), "Bearer " + token, http.StatusOK},
	} {
		req, _ := http.NewRequest(http.MethodGet, srv.URL+"/v1/status", nil)
		if tc.auth != "" {
			req.Header.Set("Authorization", tc.auth)
		}
		resp, err := tc.client.Do(req)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		resp.Body.Close()
		if resp.StatusCode != tc.want {
			t.Errorf("%s: %s, want %d", tc.name, resp.Status, tc.want)
		}
	}
	// Another cluster's certificate is no member's: it reads nothing.
	if resp, err := client(&stranger).Get(srv.URL + "/v1/status"); err == nil {
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			t.Errorf("another CA's certificate read the status: %s", resp.Status)
		}
	}

	// Plain HTTP answers the machine's own users, no other machine.
	rec := httptest.NewRecorder()
	req := httptest.NewRequest(http.MethodGet, "http://10.0.0.1:9550/v1/status", nil)
	req.RemoteAddr = "10.0.0.2:40000"
	read(rec, req)
	if rec.Code != http.StatusForbidden {
		t.Errorf("plain HTTP from another machine: %d, want 403", rec.Code)
	}
	rec = httptest.NewRecorder()
	req.RemoteAddr = "127.0.0.1:40000"
	read(rec, req)
	if rec.Code != http.StatusOK {
		t.Errorf("plain HTTP from the machine itself: %d, want 200", rec.Code)
	}
}

// TestTrustConsulOverASocket: the agent's Consul serves plain HTTP on a
// unix socket in the machine's root-only data folder, readable by its
// owner alone, beside loopback; the agent's own client speaks to it there,
// where no other user of the machine can take its place while Consul
// restarts. A data folder too deep for a socket's path keeps loopback.
func TestTrustConsulOverASocket(t *testing.T) {
	c := nodeconfig.Config{MachineID: "server-1", DataDir: "/var/lib/raptiformica", BindAddr: "10.0.0.5"}.WithDefaults()
	cc := consulConfigFor(c, nil)
	if got, want := cc.Addresses["http"], "127.0.0.1 unix:///var/lib/raptiformica/consul-http.sock"; got != want {
		t.Errorf("consul's http addresses: %q, want %q", got, want)
	}
	if cc.UnixSockets["mode"] != "600" {
		t.Errorf("consul's unix socket mode: %q, want 600", cc.UnixSockets["mode"])
	}
	deep := c
	deep.DataDir = "/" + strings.Repeat("d", 100)
	if s := consulclient.Socket(deep); s != "" {
		t.Errorf("a socket path of %d bytes: %q, want none", len(s), s)
	}
	if cc := consulConfigFor(deep, nil); strings.Contains(cc.Addresses["http"], "unix://") {
		t.Errorf("consul's http addresses in a deep folder: %q, want loopback alone", cc.Addresses["http"])
	}

	// A real Consul, and the agent's client, over the socket.
	bin, err := testconsul.Binary()
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "sock")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	c.DataDir, c.BindAddr = dir, testconsul.FreeIP()
	sock := consulclient.Socket(c)
	cmd := exec.Command(bin, "agent", "-dev", "-bind", c.BindAddr, "-client", c.BindAddr, "-dns-port", "-1", "-grpc-port", "-1", "-serf-wan-port", "-1",
		"-hcl", `addresses { http = "`+c.BindAddr+` unix://`+sock+`" }`, "-hcl", `unix_sockets { mode = "600" }`)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	client, err := consulclient.Local(c)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "consul answers on its socket", func() bool {
		l, err := client.Status().Leader()
		return err == nil && l != ""
	})
	fi, err := os.Stat(sock)
	if err != nil || fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o600 {
		t.Errorf("consul's socket: %v (%v), want a socket of mode 0600", fi.Mode(), err)
	}
}

// TestTrustAgentActsOverItsSocket: the agent serves its API on a unix
// socket in its data folder, readable by its owner alone, and takes a
// request there as the machine's own, as from loopback: the CLI on the
// machine sends the machine's token where no other user can listen in
// its place while the agent restarts.
func TestTrustAgentActsOverItsSocket(t *testing.T) {
	a, _ := startAgent(t)
	sock := consulclient.AgentSocket(a.Config)
	if sock == "" {
		t.Fatalf("no socket for data folder %s (%d bytes): the test's folder is too deep", a.Config.DataDir, len(a.Config.DataDir))
	}
	fi, err := os.Stat(sock)
	if err != nil || fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o600 {
		t.Fatalf("the agent's socket: %v (%v), want a socket of mode 0600", fi, err)
	}
	// The agent runs without the mesh: a peer it cannot add is a 409,
	// which it answers only once the token passed.
	own := agentapi.Agent{Socket: sock, Token: a.Config.ACLToken}
	var refused *agentapi.AgentRefused
	err = agentapi.AddMeshPeer(context.Background(), own, "192.0.2.1:9651")
	if !errors.As(err, &refused) || !strings.HasPrefix(refused.Status, "409") {
		t.Errorf("acting over the socket with the machine's token: %v, want 409 (no mesh here)", err)
	}
	stranger := agentapi.Agent{Socket: sock, Token: "not-the-token"}
	err = agentapi.AddMeshPeer(context.Background(), stranger, "192.0.2.1:9651")
	if !errors.As(err, &refused) || !strings.HasPrefix(refused.Status, "401") {
		t.Errorf("acting over the socket with another token: %v, want 401", err)
	}
}
