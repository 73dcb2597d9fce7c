package agentapi

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/raptiformica/raptiformica/internal/jointoken"
	"github.com/raptiformica/raptiformica/internal/nodeconfig"
	"github.com/raptiformica/raptiformica/internal/pki"
)

// member serves h over TLS as a member's agent does: its certificate of
// ca, sent with the CA's.
func member(t *testing.T, ca pki.CA, h http.HandlerFunc) string {
	t.Helper()
	return memberOn(t, "127.0.0.1:0", ca, "server-m", true, h)
}

// memberOn serves h over TLS on addr with a certificate of ca for machine
// id, a server's or a client's.
func memberOn(t *testing.T, addr string, ca pki.CA, id string, server bool, h http.HandlerFunc) string {
	t.Helper()
	cert, err := ca.Issue(id, server)
	if err != nil {
		t.Fatal(err)
	}
	pair, err := tls.X509KeyPair([]byte(cert.CertPEM+ca.CertPEM), []byte(cert.KeyPEM))
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(h)
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	srv.Listener.Close()
	srv.Listener = ln
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{pair}}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv.Listener.Addr().String()
}

// A token whose CA hash is not the member's sends nothing: the handshake
// stops it. With the right one, the secret goes and the config comes back.
func TestJoinChecksTheCAFirst(t *testing.T) {
	ca, err := pki.NewCA("c")
	if err != nil {
		t.Fatal(err)
	}
	hash, _ := pki.Fingerprint(ca.CertPEM)
	asked := 0
	var got JoinRequest
	addr := member(t, ca, func(w http.ResponseWriter, r *http.Request) {
		asked++
		_ = json.NewDecoder(r.Body).Decode(&got)
		_ = json.NewEncoder(w).Encode(nodeconfig.Config{MachineID: "worker-1"})
	})
	other, _ := pki.NewCA("other")
	otherHash, _ := pki.Fingerprint(other.CertPEM)
	wrong, _ := jointoken.New(otherHash)
	var mm *CAMismatch
	if _, err := Join(context.Background(), addr, wrong, ""); !errors.As(err, &mm) || !strings.Contains(err.Error(), hash) {
		t.Errorf("a token for another CA: %v, want a CAMismatch naming the member's CA", err)
	}
	if asked != 0 {
		t.Fatalf("the member was asked %d times with a token for another CA", asked)
	}
	tok, _ := jointoken.New(hash)
	cfg, err := Join(context.Background(), addr, tok, "worker")
	if err != nil || cfg.MachineID != "worker-1" || got.Secret != tok.Secret || got.TokenID != tok.ID || got.Type != "worker" {
		t.Errorf("the right token: %+v, %v; sent %+v", cfg, err, got)
	}

	// A member of another cluster is refused before it is asked.
	impostor := member(t, other, nil)
	if _, err := Join(context.Background(), impostor, tok, ""); err == nil {
		t.Error("a member showing another CA was trusted")
	}
}
