package daemon

import (
	"context"
	"encoding/json"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/raptiformica/raptiformica/daemon/agentapi"
	"github.com/raptiformica/raptiformica/reconcile"
)

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
	mux.HandleFunc("POST "+agentapi.MeshPeersPath, a.serveMeshPeer)
	mux.HandleFunc("GET "+agentapi.StatusPath, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(a.status())
	})
	return mux
}

func (a *Agent) status() agentapi.AgentStatus {
	a.mu.RLock()
	st := agentapi.AgentStatus{
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
