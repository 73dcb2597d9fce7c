// Package agentapi is the raptiformica agent's HTTP API as its clients see
// it: the bodies of GET /v1/status and POST /v1/mesh/peers, and the calls
// the CLI and the other agents make. The server lives in package daemon and
// speaks these types; a client needs only this package, not the agent.
package agentapi

import (
	"context"
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
	"github.com/raptiformica/raptiformica/mesh"
	"github.com/raptiformica/raptiformica/reconcile"
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
	// Reconcile is the leader's last published pass.
	Reconcile *reconcile.Status `json:"reconcile,omitempty"`
	// Quorum is set while this node's Consul has no leader.
	Quorum *QuorumStatus `json:"quorum,omitempty"`
	// Mesh is the node's overlay, when it runs one.
	Mesh *MeshStatus `json:"mesh,omitempty"`
}

// QuorumStatus is what a node knows while its Consul has no leader: with
// most servers gone there is no KV, no lock and no control loop, so every
// node says so itself, from its own view of the gossip pool.
type QuorumStatus struct {
	// Lost is set once the leader has been missing for longer than the
	// policy's quorum_lost_after.
	Lost bool `json:"lost"`
	// LeaderlessSince is when this node last saw a leader, or when it
	// started looking.
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
	Name    string                 `json:"name"`
	Address string                 `json:"address"`
	Status  reconcile.MemberStatus `json:"status"`
}

// MeshStatus is the mesh part of /v1/status.
type MeshStatus struct {
	Address    string      `json:"address"`
	Key        string      `json:"key"`
	ListenPort int         `json:"listen_port"`
	Endpoints  []string    `json:"endpoints,omitempty"`
	Peers      []mesh.Peer `json:"peers"`
	// Problem explains a node that has no link up.
	Problem string `json:"problem,omitempty"`
}

// MeshPeerRequest is the body of POST /v1/mesh/peers.
type MeshPeerRequest struct {
	Endpoint string `json:"endpoint"`
}

// FetchStatus asks the agent at addr:port for its /v1/status: how the CLI
// and the other agents learn what a node knows, with or without a Consul
// leader. It blocks until the agent answers or ctx ends.
func FetchStatus(ctx context.Context, addr string, port int) (AgentStatus, error) {
	var st AgentStatus
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+net.JoinHostPort(addr, strconv.Itoa(port))+StatusPath, nil)
	if err != nil {
		return st, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return st, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return st, fmt.Errorf("%s: %s", req.URL, resp.Status)
	}
	return st, json.NewDecoder(resp.Body).Decode(&st)
}

// AddMeshPeer asks the agent at addr (host:port) to dial endpoint and keep
// it: how `raptiformica join` reaches the local agent, or a member
// (--agent). token is the cluster's: an agent acts only for who holds it.
// It blocks until the agent answers or ctx ends; an agent that answers with
// a refusal returns an *AgentRefused.
func AddMeshPeer(ctx context.Context, addr, endpoint, token string) error {
	b, _ := json.Marshal(MeshPeerRequest{Endpoint: endpoint})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+addr+MeshPeersPath, strings.NewReader(string(b)))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("agent at %s: %w", addr, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		buf := make([]byte, 512)
		n, _ := resp.Body.Read(buf)
		return &AgentRefused{Agent: addr, Status: resp.Status, Reason: strings.TrimSpace(string(buf[:n]))}
	}
	return nil
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

// Link has the agent at host:port dial endpoint (host:port of a mesh node)
// and waits until its link there is up, returning the peer's overlay
// address. An agent just started (the service, a fresh machine) may not
// answer yet: it is asked again every half second; one that refuses is
// final. It gives up when ctx ends, saying what the agent's dials report.
func Link(ctx context.Context, host string, port int, endpoint *url.URL, token string) (string, error) {
	addr := net.JoinHostPort(host, strconv.Itoa(port))
	var asked error
	err := clock.Poll(ctx, clock.Real{}, 500*time.Millisecond, func() (bool, error) {
		asked = AddMeshPeer(ctx, addr, endpoint.Host, token)
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
		st, err := FetchStatus(ctx, host, port)
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

// FetchPlan asks the leader's agent at addr (host:port) what the control
// loop would do now; token is the cluster's. It blocks until the agent
// answers or ctx ends; an agent that does not lead answers with a refusal.
func FetchPlan(ctx context.Context, addr, token string) (reconcile.Decision, error) {
	var d reconcile.Decision
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+PlanPath, nil)
	if err != nil {
		return d, err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return d, fmt.Errorf("agent at %s: %w", addr, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		buf := make([]byte, 512)
		n, _ := resp.Body.Read(buf)
		return d, &AgentRefused{Agent: addr, Status: resp.Status, Reason: strings.TrimSpace(string(buf[:n]))}
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 16<<20)).Decode(&d); err != nil {
		return d, fmt.Errorf("agent at %s: plan: %w", addr, err)
	}
	return d, nil
}
