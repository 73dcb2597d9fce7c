package agentapi

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/raptiformica/raptiformica/mesh"
)

// agent serves h as an agent would and returns its host and port.
func agent(t *testing.T, h http.HandlerFunc) (string, int) {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	host, port, err := net.SplitHostPort(srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	p, _ := strconv.Atoi(port)
	return host, p
}

func TestFetchStatus(t *testing.T) {
	want := AgentStatus{MachineID: "m1", IsLeader: true, Quorum: &QuorumStatus{Lost: true, RaftLastIndex: 7}}
	host, port := agent(t, func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet || r.URL.Path != StatusPath {
			http.NotFound(w, r)
			return
		}
		_ = json.NewEncoder(w).Encode(want)
	})
	got, err := FetchStatus(context.Background(), host, port, 0, Reader{})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("status (-want +got):\n%s", diff)
	}

	host, port = agent(t, func(w http.ResponseWriter, r *http.Request) { http.Error(w, "no", http.StatusServiceUnavailable) })
	if _, err := FetchStatus(context.Background(), host, port, 0, Reader{}); err == nil {
		t.Errorf("an agent answering 503: got no error")
	}
}

func TestAddMeshPeer(t *testing.T) {
	for _, tc := range []struct {
		name    string
		status  int
		body    string
		refused *AgentRefused
	}{
		{name: "accepted", status: http.StatusNoContent},
		{name: "refused with a reason", status: http.StatusConflict, body: "this node runs without the mesh\n",
			refused: &AgentRefused{Status: "409 Conflict", Reason: "this node runs without the mesh"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var sent MeshPeerRequest
			var auth string
			host, port := agent(t, func(w http.ResponseWriter, r *http.Request) {
				if r.Method != http.MethodPost || r.URL.Path != MeshPeersPath {
					http.NotFound(w, r)
					return
				}
				auth = r.Header.Get("Authorization")
				_ = json.NewDecoder(r.Body).Decode(&sent)
				w.WriteHeader(tc.status)
				_, _ = w.Write([]byte(tc.body))
			})
			addr := net.JoinHostPort(host, strconv.Itoa(port))
			err := AddMeshPeer(context.Background(), Agent{Host: host, Port: port, Token: "s3cret"}, "tcp://10.0.0.1:9651")
			if sent.Endpoint != "tcp://10.0.0.1:9651" || auth != "Bearer s3cret" {
				t.Errorf("sent: endpoint %q with %q, want %q with the token as a bearer", sent.Endpoint, auth, "tcp://10.0.0.1:9651")
			}
			var refused *AgentRefused
			if tc.refused == nil {
				if err != nil {
					t.Errorf("got %v want nil", err)
				}
				return
			}
			if !errors.As(err, &refused) {
				t.Fatalf("got %v, want an *AgentRefused", err)
			}
			tc.refused.Agent = addr
			if diff := cmp.Diff(tc.refused, refused); diff != "" {
				t.Errorf("refusal (-want +got):\n%s", diff)
			}
		})
	}

	// An agent that does not answer is not a refusal: the caller retries.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gone := Agent{Host: "127.0.0.1", Port: ln.Addr().(*net.TCPAddr).Port}
	ln.Close()
	var refused *AgentRefused
	if err := AddMeshPeer(context.Background(), gone, "tcp://10.0.0.1:9651"); err == nil || errors.As(err, &refused) {
		t.Errorf("no agent listening: got %v, want an error that is not a refusal", err)
	}
}

// Link gives up at once on a refusal, and else waits until the status shows
// the link up, or says what the dials report.
func TestLink(t *testing.T) {
	ep, _ := url.Parse("tcp://192.0.2.7:9651")
	var mu sync.Mutex
	asks, polls := 0, 0
	host, port := agent(t, func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		switch r.URL.Path {
		case MeshPeersPath:
			asks++
			w.WriteHeader(http.StatusNoContent)
		case StatusPath:
			polls++
			st := AgentStatus{Mesh: &MeshStatus{Peers: []mesh.Peer{{Endpoint: ep.String(), Up: polls > 1, Address: "200::7", LastError: "dialling"}}}}
			_ = json.NewEncoder(w).Encode(st)
		}
	})
	overlay, err := Link(context.Background(), Agent{Host: host, Port: port, Token: "t"}, ep)
	if err != nil || overlay != "200::7" || asks != 1 || polls != 2 {
		t.Errorf("got %q, %v after %d asks and %d polls; want 200::7 after 1 and 2", overlay, err, asks, polls)
	}

	host, port = agent(t, func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "this node runs without the mesh", http.StatusConflict)
	})
	var refused *AgentRefused
	if _, err := Link(context.Background(), Agent{Host: host, Port: port, Token: "t"}, ep); !errors.As(err, &refused) {
		t.Errorf("a refusing agent: got %v, want an AgentRefused", err)
	}

	host, port = agent(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == MeshPeersPath {
			w.WriteHeader(http.StatusNoContent)
			return
		}
		_ = json.NewEncoder(w).Encode(AgentStatus{Mesh: &MeshStatus{Peers: []mesh.Peer{{Endpoint: ep.String(), LastError: "connection refused"}}}})
	})
	ctx, cancel := context.WithTimeout(context.Background(), 1200*time.Millisecond)
	defer cancel()
	if _, err := Link(ctx, Agent{Host: host, Port: port, Token: "t"}, ep); err == nil || !strings.Contains(err.Error(), "connection refused") {
		t.Errorf("a link that never comes up: got %v, want the dial's error", err)
	}
}

// An agent anywhere but on loopback is asked over TLS, checked against the
// cluster's CA: without one, nothing is sent.
func TestAgentNeedsTheCA(t *testing.T) {
	a, err := NewAgent("192.0.2.9", "tok", "")
	if err != nil || a.Port != 9551 {
		t.Fatalf("NewAgent: %+v, %v; want the TLS port", a, err)
	}
	if _, err := FetchPlan(context.Background(), a); err == nil || !strings.Contains(err.Error(), "no CA certificate") {
		t.Errorf("a remote agent without a CA: %v", err)
	}
	if lo, _ := NewAgent("127.0.0.1", "", ""); lo.Port != 9550 {
		t.Errorf("the machine's own agent: port %d, want its plain 9550", lo.Port)
	}
	for _, bad := range []string{"h:0", "h:x", ":9551"} {
		if _, err := NewAgent(bad, "", ""); err == nil {
			t.Errorf("NewAgent(%q) took it", bad)
		}
	}
}
