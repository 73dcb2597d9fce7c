package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"time"

	"github.com/raptiformica/raptiformica/enrol"
	"github.com/raptiformica/raptiformica/internal/jointoken"
	"github.com/raptiformica/raptiformica/internal/state"
)

// serveJoin gives a machine that shows a valid join token its node config
// (enrol.Joiner decides, spends the token's use and records the machine).
// Over TLS only: the secret must not travel in clear, and the joining
// machine has checked this agent's CA by the token's hash, and that its
// certificate is a server's, before it sent it. Only a server's agent
// answers: it needs the CA key to sign, which only servers hold.
func (h *httpServer) serveJoin(w http.ResponseWriter, r *http.Request) {
	result := "refused"
	defer func() { h.metrics.JoinRequests.WithLabelValues(result).Inc() }()
	if r.TLS == nil {
		http.Error(w, "join over TLS only (https_port)\n", http.StatusForbidden)
		return
	}
	if !h.cfg.ConsulServer {
		http.Error(w, "this agent is a client's: it gives no node config; ask a server\n", http.StatusForbidden)
		return
	}
	var req jointoken.Request
	if err := json.NewDecoder(io.LimitReader(r.Body, 4<<10)).Decode(&req); err != nil {
		http.Error(w, "join request: "+err.Error()+"\n", http.StatusBadRequest)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 30*time.Second)
	defer cancel()
	j := &enrol.Joiner{
		Tokens: state.JoinTokens(h.store), Inventory: h.inventory, Platform: h.mirror.Platform,
		NodeConfig: h.newNode, Clock: h.clock, Log: h.log,
	}
	cfg, err := j.Join(ctx, req, r.RemoteAddr)
	var je *enrol.JoinError
	switch {
	case errors.As(err, &je):
		status := map[enrol.JoinFailure]int{
			enrol.JoinRefused: http.StatusUnauthorized, enrol.JoinBadRequest: http.StatusBadRequest,
			enrol.JoinNotReady: http.StatusServiceUnavailable, enrol.JoinFailed: http.StatusServiceUnavailable,
		}[je.Failure]
		if je.Failure == enrol.JoinFailed {
			result = "error"
		}
		http.Error(w, je.Error()+"\n", status)
		return
	case err != nil:
		result = "error"
		http.Error(w, err.Error()+"\n", http.StatusServiceUnavailable)
		return
	}
	result = "joined"
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(cfg)
}
