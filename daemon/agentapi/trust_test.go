package agentapi

import (
	"context"
	"errors"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/raptiformica/raptiformica/internal/jointoken"
	"github.com/raptiformica/raptiformica/internal/pki"
)

// outsideAddr is an address of this machine that is not loopback: an agent
// there is asked over TLS, as one on another machine is.
func outsideAddr(t *testing.T) string {
	t.Helper()
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && n.IP.To4() != nil && !n.IP.IsLoopback() && !n.IP.IsLinkLocalUnicast() {
			return n.IP.String()
		}
	}
	t.Skip("this machine has no address but loopback: an agent elsewhere cannot be played")
	return ""
}

// asked records what the agents of a test were sent.
type asked struct {
	mu   sync.Mutex
	sent []string // "<machine> <Authorization or secret>"
}

func (a *asked) handler(machine string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		a.mu.Lock()
		defer a.mu.Unlock()
		buf := make([]byte, 4<<10)
		n, _ := r.Body.Read(buf)
		a.sent = append(a.sent, machine+" "+r.Header.Get("Authorization")+string(buf[:n]))
		switch r.URL.Path {
		case JoinPath:
			_, _ = w.Write([]byte(`{"machine_id":"worker-new"}`))
		case MeshPeersPath:
			w.WriteHeader(http.StatusNoContent)
		default:
			_, _ = w.Write([]byte(`{}`))
		}
	}
}

func (a *asked) reached(secret string) []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []string
	for _, s := range a.sent {
		if strings.Contains(s, secret) {
			out = append(out, strings.Fields(s)[0])
		}
	}
	return out
}

// TestTrustBearerTokenOnlyToServers: an operator's token (plan, join
// --agent) and a join secret (join --token) are sent only to an agent whose
// certificate the cluster's CA signed for a server, and, where the caller
// addresses one machine, for that machine. A client's own certificate,
// valid as it is, collects neither: the handshake fails before a byte of
// the request is written.
func TestTrustBearerTokenOnlyToServers(t *testing.T) {
	ip := outsideAddr(t)
	ca, err := pki.NewCA("c")
	if err != nil {
		t.Fatal(err)
	}
	hash, _ := pki.Fingerprint(ca.CertPEM)
	var a asked
	server := memberOn(t, net.JoinHostPort(ip, "0"), ca, "server-1", true, a.handler("server-1"))
	client := memberOn(t, net.JoinHostPort(ip, "0"), ca, "worker-1", false, a.handler("worker-1"))
	const token = "operator-s3cret"
	agentAt := func(addr, machine string) Agent {
		host, port, _ := net.SplitHostPort(addr)
		p, _ := strconv.Atoi(port)
		return Agent{Host: host, Port: p, Token: token, CACert: ca.CertPEM, MachineID: machine}
	}
	ctx := context.Background()

	if _, err := FetchPlan(ctx, agentAt(client, "")); err == nil || !strings.Contains(err.Error(), "not a server's") {
		t.Errorf("plan from a client's agent: %v, want refused before sending", err)
	}
	if err := AddMeshPeer(ctx, agentAt(client, ""), "tcp://192.0.2.1:9651"); err == nil {
		t.Errorf("join --agent at a client's agent: no error")
	}
	if _, err := FetchPlan(ctx, agentAt(server, "server-2")); err == nil || !strings.Contains(err.Error(), "server-2") {
		t.Errorf("plan from server-1 addressed as server-2: %v, want refused before sending", err)
	}
	if _, err := FetchPlan(ctx, agentAt(server, "server-1")); err != nil {
		t.Errorf("plan from the server addressed: %v", err)
	}
	if err := AddMeshPeer(ctx, agentAt(server, ""), "tcp://192.0.2.1:9651"); err != nil {
		t.Errorf("join --agent at a server's agent: %v", err)
	}
	if got := a.reached(token); len(got) != 2 || got[0] != "server-1" || got[1] != "server-1" {
		t.Errorf("the operator's token reached %v, want server-1 twice and nobody else", got)
	}

	tok, _ := jointoken.New(hash)
	if _, err := Join(ctx, client, tok, ""); err == nil || !strings.Contains(err.Error(), "not a server's") {
		t.Errorf("join --token at a client's agent: %v, want refused before sending", err)
	}
	var refused *AgentRefused
	if cfg, err := Join(ctx, server, tok, ""); err != nil || errors.As(err, &refused) || cfg.MachineID != "worker-new" {
		t.Errorf("join --token at a server's agent: %+v, %v", cfg, err)
	}
	if got := a.reached(tok.Secret); len(got) != 1 || got[0] != "server-1" {
		t.Errorf("the join secret reached %v, want server-1 alone", got)
	}
}
