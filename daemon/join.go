package daemon

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"time"

	"github.com/raptiformica/raptiformica/daemon/agentapi"
	"github.com/raptiformica/raptiformica/internal/jointoken"
	"github.com/raptiformica/raptiformica/internal/telemetry"
	"github.com/raptiformica/raptiformica/reconcile"
)

// JoinBackend is the backend name a machine joined with a token records:
// nothing made it, its operator did.
const JoinBackend = "by-hand"

// serveJoin gives a machine that shows a valid join token its node config:
// a new machine ID of the token's type (or the one it asks for, when the
// token names none), the cluster's credentials and a certificate signed
// for it. Over TLS only: the secret must not travel in clear, and the
// joining machine has checked this agent's CA by the token's hash before
// it sent it. The token is the authorisation; the agent needs the CA key
// to sign (the machines that may lead carry it).
func (h *httpServer) serveJoin(w http.ResponseWriter, r *http.Request) {
	result := "refused"
	defer func() { h.metrics.JoinRequests.WithLabelValues(result).Inc() }()
	if r.TLS == nil {
		http.Error(w, "join over TLS only (https_port)\n", http.StatusForbidden)
		return
	}
	var req agentapi.JoinRequest
	if err := json.NewDecoder(io.LimitReader(r.Body, 4<<10)).Decode(&req); err != nil {
		http.Error(w, "join request: "+err.Error()+"\n", http.StatusBadRequest)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 30*time.Second)
	defer cancel()
	val, _, err := h.store.JoinTokens().Get(ctx, req.TokenID)
	if err != nil {
		result = "error"
		http.Error(w, "read the token: "+err.Error()+"\n", http.StatusServiceUnavailable)
		return
	}
	var rec jointoken.Record
	if val == nil || json.Unmarshal(val, &rec) != nil {
		h.log.Warn("join refused: unknown or revoked token", "token", req.TokenID, telemetry.KeyAddress, r.RemoteAddr)
		http.Error(w, "unknown or revoked join token\n", http.StatusUnauthorized)
		return
	}
	if err := rec.Check(req.Secret, h.clock.Now()); err != nil {
		h.log.Warn("join refused", "token", req.TokenID, telemetry.KeyAddress, r.RemoteAddr, telemetry.KeyError, err)
		http.Error(w, err.Error()+"\n", http.StatusUnauthorized)
		return
	}
	typ := rec.Type
	if typ == "" {
		typ = req.Type
	} else if req.Type != "" && req.Type != typ {
		http.Error(w, "this token joins machines of type "+typ+", not "+req.Type+"\n", http.StatusBadRequest)
		return
	}
	p := h.mirror.Platform()
	if p == nil {
		http.Error(w, "this agent has no description yet: try again\n", http.StatusServiceUnavailable)
		return
	}
	mt, ok := p.Machines[typ]
	if !ok {
		http.Error(w, "the description has no machine type "+typ+" (--type)\n", http.StatusBadRequest)
		return
	}
	id := reconcile.NewMachineID(typ)
	cfg, err := h.newNode(ctx, p, id, mt, JoinBackend)
	if err != nil {
		result = "error"
		http.Error(w, "configure the machine: "+err.Error()+"\n", http.StatusServiceUnavailable)
		return
	}
	result = "joined"
	h.log.Info("gave a machine its config for a join token", telemetry.KeyMachineID, id, "token", req.TokenID, telemetry.KeyAddress, r.RemoteAddr)
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(cfg)
}
