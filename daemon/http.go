package daemon

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/raptiformica/raptiformica/reconcile"
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

// FetchStatus asks the agent at addr:port for its /v1/status: how the CLI
// and the other agents learn what a node knows, with or without a Consul
// leader.
func FetchStatus(ctx context.Context, addr string, port int) (AgentStatus, error) {
	var st AgentStatus
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+net.JoinHostPort(addr, strconv.Itoa(port))+"/v1/status", nil)
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

func (a *Agent) handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(a.metrics.Registry, promhttp.HandlerOpts{Registry: a.metrics.Registry}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		a.mu.RLock()
		ready := a.ready
		a.mu.RUnlock()
		if !ready {
			http.Error(w, "not ready: waiting for Consul and a platform description\n", http.StatusServiceUnavailable)
			return
		}
		if _, err := a.consul.Status().Leader(); err != nil {
			http.Error(w, "consul unreachable: "+err.Error()+"\n", http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /{$}", a.servePage)
	mux.HandleFunc("POST /v1/mesh/peers", a.serveMeshPeer)
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(a.status())
	})
	return mux
}

func (a *Agent) status() AgentStatus {
	a.mu.RLock()
	st := AgentStatus{
		MachineID: a.Config.MachineID, MachineType: a.Config.MachineType, Address: a.Config.BindAddr,
		IsLeader: a.leading, Ready: a.ready, PlatformError: a.platformErr, Reconcile: a.lastStatus,
		Quorum: a.quorum,
	}
	a.mu.RUnlock()
	st.Mesh = a.meshStatus()
	if st.Quorum != nil {
		// Without a Consul leader a KV read waits for one for seconds, then
		// fails: say what this node knows instead.
		return st
	}
	// A node cut off from the servers (before its quorum watch says so)
	// waits seconds for each read: answer with what it knows instead.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	st.Leader = a.store.Leader(ctx)
	if !st.IsLeader {
		if b, err := a.store.Status(ctx); err == nil && b != nil {
			var rs reconcile.Status
			if json.Unmarshal(b, &rs) == nil {
				st.Reconcile = &rs
			}
		}
	}
	return st
}
