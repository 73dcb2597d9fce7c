package daemon

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"

	"github.com/hashicorp/consul/api"

	"github.com/raptiformica/raptiformica/internal/kvschema"
	"github.com/raptiformica/raptiformica/internal/nodeconfig"
	"github.com/raptiformica/raptiformica/internal/pki"
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
