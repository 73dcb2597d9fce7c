// Package agentapi is the raptiformica agent's HTTP API as its clients see
// it: the bodies of GET /v1/status and POST /v1/mesh/peers, and the calls
// the CLI and the other agents make. The server lives in package daemon and
// speaks these types; a client needs only this package, not the agent.
package agentapi

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/raptiformica/raptiformica/internal/clock"
	"github.com/raptiformica/raptiformica/internal/consulclient"
	"github.com/raptiformica/raptiformica/internal/nodeconfig"
	"github.com/raptiformica/raptiformica/internal/pki"
	"github.com/raptiformica/raptiformica/internal/state"
	"github.com/raptiformica/raptiformica/mesh/peering"
)

// Paths of the agent's API, shared by the server and this client.
const (
	StatusPath    = "/v1/status"
	MeshPeersPath = "/v1/mesh/peers"
	PlanPath      = "/v1/plan"
)

// AgentStatus is the body of GET /v1/status.
type AgentStatus struct {
	MachineID   string `json:"machine_id"`
	MachineType string `json:"machine_type"`
	Address     string `json:"address"`
	IsLeader    bool   `json:"is_leader"`
	// Leader is the machine ID holding the leader lock, empty when none.
	Leader string `json:"leader"`
	Ready  bool   `json:"ready"`
	// PlatformError says why the description in KV was rejected; the node
	// then runs its last good one.
	PlatformError string `json:"platform_error,omitempty"`
	// MirrorError says why this node's on-disk mirror (the description or
	// the inventory) cannot be read: the node neither starts from it nor
	// re-seeds KV from it until a good copy from KV replaces it.
	MirrorError string `json:"mirror_error,omitempty"`
	// Reconcile is the leader's last published pass.
	Reconcile *state.Status `json:"reconcile,omitempty"`
	// Quorum is set while this node's Consul has no leader.
	Quorum *QuorumStatus `json:"quorum,omitempty"`
	// Mesh is the node's overlay, when it runs one.
	Mesh *MeshStatus `json:"mesh,omitempty"`
	// Provisioning is this machine's provisioning, when its type has
	// provisioners.
	Provisioning *state.Provisioned `json:"provisioning,omitempty"`
}

// QuorumStatus is what a node knows while its Consul has no leader: with
// most servers gone there is no KV, no lock and no control loop, so every
// node says so itself, from its own view of the gossip pool.
type QuorumStatus struct {
	// Lost is set once the leader has been missing for longer than the
	// policy's quorum_lost_after.
	Lost bool `json:"lost"`
	// LeaderlessSince is when a server last saw a leader (it looks every
	// second), or when it started looking; on a client, which looks once
	// a minute, its first look that found none.
	LeaderlessSince time.Time `json:"leaderless_since"`
	// Servers are the Consul servers in this node's gossip pool, as it
	// sees them now.
	Servers []ServerSeen `json:"servers"`
	// RaftLastIndex is the last Raft log index this node's Consul holds:
	// among survivors the most up to date recovers.
	RaftLastIndex uint64 `json:"raft_last_index"`
	// Recovery says what this node decided about recovering, and why.
	Recovery string `json:"recovery,omitempty"`
	// Recovering is set once this node has started to recover: the other
	// survivors then join it, whatever its Raft index reads meanwhile.
	Recovering bool `json:"recovering,omitempty"`
}

// ServerSeen is one Consul server as this node's gossip pool sees it.
type ServerSeen struct {
	Name    string             `json:"name"`
	Address string             `json:"address"`
	Status  state.MemberStatus `json:"status"`
}

// MeshStatus is the mesh part of /v1/status.
type MeshStatus struct {
	Address    string         `json:"address"`
	Key        string         `json:"key"`
	ListenPort int            `json:"listen_port"`
	Endpoints  []string       `json:"endpoints,omitempty"`
	Peers      []peering.Peer `json:"peers"`
	// Problem explains a node that has no link up.
	Problem string `json:"problem,omitempty"`
}

// MeshPeerRequest is the body of POST /v1/mesh/peers.
type MeshPeerRequest struct {
	Endpoint string `json:"endpoint"`
}

// Reader is how to read another machine's agent over TLS (its status, its
// metrics): the cluster's CA, and either this machine's own certificate
// and key (mutual TLS: a member reads any member's agent, a client's
// included, and sends no token) or a token of the operator, read-only or
// metrics role, sent only to an agent whose certificate is a server's, as
// every token is. An agent's plain HTTP port answers its own machine only.
type Reader struct {
	CACert    string
	Cert, Key string
	Token     string
	// Server asks that the agent, read with a certificate, show a
	// server's too: what a survivor of a lost quorum believes of its
	// peers.
	Server bool
}

// maxStatusBytes bounds an agent's status: its last pass names every type
// and a few actions, a few KiB; a lost quorum lists the servers.
const maxStatusBytes = 16 << 20

// FetchStatus asks the agent on host for its /v1/status: how the CLI and
// the other agents learn what a node knows, with or without a Consul
// leader. A loopback host (the machine's own agent, or one of the local
// backend's) is asked over plain HTTP on httpPort; any other over TLS on
// httpsPort, as r says. It blocks until the agent answers or ctx ends.
func FetchStatus(ctx context.Context, host string, httpPort, httpsPort int, r Reader) (AgentStatus, error) {
	var st AgentStatus
	hc, url := http.DefaultClient, "http://"+net.JoinHostPort(host, strconv.Itoa(httpPort))+StatusPath
	var token string
	if !consulclient.IsLoopback(host) {
		var err error
		if hc, token, err = r.client(host); err != nil {
			return st, err
		}
		url = "https://" + net.JoinHostPort(host, strconv.Itoa(httpsPort)) + StatusPath
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return st, err
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := hc.Do(req)
	if err != nil {
		return st, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return st, fmt.Errorf("%s: %s", req.URL, resp.Status)
	}
	return st, json.NewDecoder(io.LimitReader(resp.Body, maxStatusBytes)).Decode(&st)
}

// client is the HTTP client that reads the agent on host as r says, and
// the token to send with it ("" with a certificate).
func (r Reader) client(host string) (*http.Client, string, error) {
	if r.CACert == "" {
		return nil, "", fmt.Errorf("agent at %s: no CA certificate to check it with (the cluster's identity or a node config holds it)", host)
	}
	var cfg *tls.Config
	switch {
	case r.Cert != "":
		pair, err := tls.X509KeyPair([]byte(r.Cert), []byte(r.Key))
		if err != nil {
			return nil, "", fmt.Errorf("this machine's certificate: %w", err)
		}
		if r.Server {
			if cfg, err = pki.ClientTLS(r.CACert, ""); err != nil {
				return nil, "", fmt.Errorf("agent at %s: %w", host, err)
			}
		} else {
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM([]byte(r.CACert)) {
				return nil, "", errors.New("no CA certificate in PEM")
			}
			cfg = &tls.Config{RootCAs: pool, ServerName: pki.MemberName, MinVersion: tls.VersionTLS12}
		}
		cfg.Certificates = []tls.Certificate{pair}
	case r.Token != "":
		var err error
		if cfg, err = pki.ClientTLS(r.CACert, ""); err != nil {
			return nil, "", fmt.Errorf("agent at %s: %w", host, err)
		}
	default:
		return nil, "", fmt.Errorf("agent at %s: reading another machine's agent takes a member's certificate or a token (read-only, metrics or operator role)", host)
	}
	return &http.Client{Transport: &http.Transport{TLSClientConfig: cfg, TLSHandshakeTimeout: 10 * time.Second}}, r.Token, nil
}

// Agent is an agent to ask to act, and the credentials to ask with. On a
// loopback host (the machine's own agent, or one of the local backend's)
// it is asked over plain HTTP on its http_port; on any other over TLS on
// its https_port, and the token is sent only once the handshake proved
// the agent a server of the cluster (its certificate is of the cluster's
// CA and names the server role, and MachineID when set): the token gives
// the cluster's authority, which a client machine, holding only its own
// keys, must never see.
type Agent struct {
	Host string
	Port int
	// Token is the cluster's or an operator's: an agent acts only for who
	// holds one.
	Token string
	// CACert is the cluster's CA (PEM); needed for any host but loopback.
	CACert string
	// MachineID, when set, is the machine the agent must be (its
	// certificate names it): set it when asking one machine, such as the
	// leader, so that another server at its address is not asked instead.
	MachineID string
	// Socket, when set, is the agent's unix socket on this machine
	// (consulclient.AgentSocket): asked there rather than at Host, so
	// that the token goes where no other user of the machine listens.
	Socket string
}

// NewAgent is the agent at addr (HOST[:PORT]), the port defaulting to the
// one its host is asked on: http_port on loopback, https_port elsewhere.
func NewAgent(addr, token, caCert string) (Agent, error) {
	host, port, err := ParseAddr(addr, 0)
	if err != nil {
		return Agent{}, err
	}
	if port == 0 {
		port = nodeconfig.AgentHTTPSPort
		if consulclient.IsLoopback(host) {
			port = nodeconfig.AgentHTTPPort
		}
	}
	return Agent{Host: host, Port: port, Token: token, CACert: caCert}, nil
}

// ParseAddr reads an agent's HOST[:PORT], the port defaulting to defPort.
func ParseAddr(addr string, defPort int) (string, int, error) {
	host, port := addr, defPort
	if h, p, err := net.SplitHostPort(addr); err == nil {
		n, err := strconv.Atoi(p)
		if err != nil || n < 1 || n > 65535 {
			return "", 0, fmt.Errorf("agent %q: port must be a number from 1 to 65535", addr)
		}
		host, port = h, n
	}
	host = strings.Trim(host, "[]")
	if host == "" {
		return "", 0, fmt.Errorf("agent %q: no host", addr)
	}
	return host, port, nil
}

// String is the agent's address.
func (a Agent) String() string {
	if a.Socket != "" {
		return a.Socket
	}
	return net.JoinHostPort(a.Host, strconv.Itoa(a.Port))
}

// client returns the HTTP client and the base URL to ask the agent with.
func (a Agent) client() (*http.Client, string, error) {
	if a.Socket != "" {
		dial := func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{Timeout: 10 * time.Second}).DialContext(ctx, "unix", a.Socket)
		}
		return &http.Client{Transport: &http.Transport{DialContext: dial}}, "http://agent", nil
	}
	if consulclient.IsLoopback(a.Host) {
		return http.DefaultClient, "http://" + a.String(), nil
	}
	if a.CACert == "" {
		return nil, "", fmt.Errorf("agent at %s: no CA certificate to check it with (the cluster's identity or a node config holds it)", a)
	}
	cfg, err := pki.ClientTLS(a.CACert, a.MachineID)
	if err != nil {
		return nil, "", fmt.Errorf("agent at %s: %w", a, err)
	}
	return &http.Client{Transport: &http.Transport{TLSClientConfig: cfg, TLSHandshakeTimeout: 10 * time.Second}}, "https://" + a.String(), nil
}

// do sends an acting request with the token and returns the response, or
// an *AgentRefused when the agent answers with another status than want.
func (a Agent) do(ctx context.Context, method, path string, body any, want int) (*http.Response, error) {
	hc, base, err := a.client()
	if err != nil {
		return nil, err
	}
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, base+path, rd)
	if err != nil {
		return nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Authorization", "Bearer "+a.Token)
	resp, err := hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("agent at %s: %w", a, err)
	}
	if resp.StatusCode != want {
		defer resp.Body.Close()
		buf, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return nil, &AgentRefused{Agent: a.String(), Status: resp.Status, Reason: strings.TrimSpace(string(buf))}
	}
	return resp, nil
}

// AddMeshPeer asks the agent to dial endpoint and keep it: how `raptiformica
// join` reaches the local agent, or a member (--agent). It blocks until the
// agent answers or ctx ends; an agent that answers with a refusal returns
// an *AgentRefused.
func AddMeshPeer(ctx context.Context, a Agent, endpoint string) error {
	resp, err := a.do(ctx, http.MethodPost, MeshPeersPath, MeshPeerRequest{Endpoint: endpoint}, http.StatusNoContent)
	if err != nil {
		return err
	}
	return resp.Body.Close()
}

// status is the agent's /v1/status, asked where it is asked to act.
func (a Agent) status(ctx context.Context) (AgentStatus, error) {
	var st AgentStatus
	resp, err := a.do(ctx, http.MethodGet, StatusPath, nil, http.StatusOK)
	if err != nil {
		return st, err
	}
	defer resp.Body.Close()
	return st, json.NewDecoder(io.LimitReader(resp.Body, 16<<20)).Decode(&st)
}

// AgentRefused is an agent's answer refusing a request: retrying does not
// help, unlike an agent that does not answer (yet).
type AgentRefused struct {
	Agent, Status, Reason string
}

// Error says which agent refused, with its status and reason.
func (e *AgentRefused) Error() string {
	msg := fmt.Sprintf("agent at %s: %s", e.Agent, e.Status)
	if e.Reason != "" {
		msg += ": " + e.Reason
	}
	return msg
}

// Link has the agent dial endpoint (host:port of a mesh node) and waits
// until its link there is up, returning the peer's overlay address. An agent just started (the service, a fresh machine) may not
// answer yet: it is asked again every half second; one that refuses is
// final. It gives up when ctx ends, saying what the agent's dials report.
func Link(ctx context.Context, a Agent, endpoint *url.URL) (string, error) {
	var asked error
	err := clock.Poll(ctx, clock.Real{}, 500*time.Millisecond, func() (bool, error) {
		asked = AddMeshPeer(ctx, a, endpoint.Host)
		var refused *AgentRefused
		if errors.As(asked, &refused) {
			return false, asked
		}
		return asked == nil, nil
	})
	if err != nil {
		if asked != nil {
			return "", asked
		}
		return "", err
	}
	var last *MeshStatus
	var overlay string
	err = clock.Poll(ctx, clock.Real{}, 500*time.Millisecond, func() (bool, error) {
		st, err := a.status(ctx)
		if err != nil || st.Mesh == nil {
			return false, nil
		}
		last = st.Mesh
		for _, p := range st.Mesh.Peers {
			if p.Up && p.Endpoint == endpoint.String() {
				overlay = p.Address
				return true, nil
			}
		}
		return false, nil
	})
	if err != nil {
		why := "no answer from the agent"
		if last != nil {
			why = last.LinkError(endpoint.String())
		}
		return "", fmt.Errorf("no link to %s: %s", endpoint.Host, why)
	}
	return overlay, nil
}

// LinkError is what the node's dials of endpoint report, or why it has no
// link at all.
func (st *MeshStatus) LinkError(endpoint string) string {
	for _, p := range st.Peers {
		if p.Endpoint == endpoint && p.LastError != "" {
			return p.LastError
		}
	}
	if st.Problem != "" {
		return st.Problem
	}
	return "still dialling"
}

// FetchPlan asks the leader's agent what the control loop would do now.
// It blocks until the agent answers or ctx ends; an agent that does not
// lead answers with a refusal.
func FetchPlan(ctx context.Context, a Agent) (state.Plan, error) {
	var d state.Plan
	resp, err := a.do(ctx, http.MethodGet, PlanPath, nil, http.StatusOK)
	if err != nil {
		return d, err
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(io.LimitReader(resp.Body, 16<<20)).Decode(&d); err != nil {
		return d, fmt.Errorf("agent at %s: plan: %w", a, err)
	}
	return d, nil
}
