package daemon

import (
	"context"
	"encoding/json"
	"errors"
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
// a new machine ID of the token's type, the cluster's credentials and a
// certificate signed for it, and records the machine in the inventory
// (joining, as a spawn does), so that the record is the server's word and
// not the new machine's. Over TLS only: the secret must not travel in
// clear, and the joining machine has checked this agent's CA by the
// token's hash, and that its certificate is a server's, before it sent
// it. The token is the authorisation, spent one use per machine before
// anything is made (given back when the machine could not be made); the
// agent needs the CA key to sign, which only servers hold.
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
	var req agentapi.JoinRequest
	if err := json.NewDecoder(io.LimitReader(r.Body, 4<<10)).Decode(&req); err != nil {
		http.Error(w, "join request: "+err.Error()+"\n", http.StatusBadRequest)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 30*time.Second)
	defer cancel()
	tokens := h.store.JoinTokens()
	// What can be refused is refused before the use is spent; the secret
	// is checked first, so that nobody without it learns the token's type.
	val, _, err := tokens.Get(ctx, req.TokenID)
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
	now := h.clock.Now()
	if err := rec.Check(req.Secret, now); err != nil {
		h.log.Warn("join refused", "token", req.TokenID, telemetry.KeyAddress, r.RemoteAddr, telemetry.KeyError, err)
		http.Error(w, err.Error()+"\n", http.StatusUnauthorized)
		return
	}
	typ := rec.Type
	if req.Type != "" && req.Type != typ {
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
		http.Error(w, "the description has no machine type "+typ+" (the token's)\n", http.StatusBadRequest)
		return
	}
	if _, err := jointoken.Redeem(ctx, tokens, req.TokenID, req.Secret, now); err != nil {
		h.log.Warn("join refused", "token", req.TokenID, telemetry.KeyAddress, r.RemoteAddr, telemetry.KeyError, err)
		if refusedToken(err) {
			http.Error(w, err.Error()+"\n", http.StatusUnauthorized)
			return
		}
		result = "error"
		http.Error(w, "spend the token: "+err.Error()+"\n", http.StatusServiceUnavailable)
		return
	}
	id := reconcile.NewMachineID(typ)
	cfg, err := h.newNode(ctx, p, id, mt, JoinBackend)
	if err == nil {
		_, err = h.inventory.Put(ctx, reconcile.Record{
			ID: id, Type: typ, Backend: JoinBackend, State: reconcile.StateJoining,
			Created: now, Updated: now, Reason: "joined with token " + req.TokenID,
		})
	}
	if err != nil {
		result = "error"
		// The use goes back even when the caller has gone meanwhile.
		rctx, rcancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer rcancel()
		if rerr := jointoken.Refund(rctx, tokens, req.TokenID); rerr != nil {
			h.log.Warn("could not give back a join token's use", "token", req.TokenID, telemetry.KeyError, rerr)
		}
		http.Error(w, "configure the machine: "+err.Error()+"\n", http.StatusServiceUnavailable)
		return
	}
	result = "joined"
	h.log.Info("gave a machine its config for a join token", telemetry.KeyMachineID, id, telemetry.KeyMachineType, typ, "token", req.TokenID, telemetry.KeyAddress, r.RemoteAddr)
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(cfg)
}

// refusedToken reports whether err is the token's fault, not the KV's.
func refusedToken(err error) bool {
	for _, e := range []error{jointoken.ErrUnknown, jointoken.ErrUsedUp, jointoken.ErrExpired, jointoken.ErrWrongSecret, jointoken.ErrNoType} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}
