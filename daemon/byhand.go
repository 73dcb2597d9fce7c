package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"time"

	"github.com/raptiformica/raptiformica/daemon/agentapi"
	"github.com/raptiformica/raptiformica/internal/state"
	"github.com/raptiformica/raptiformica/reconcile"
	"github.com/raptiformica/raptiformica/rules"
)

// actTimeout bounds how long a request for an action by hand waits for it:
// beyond the longest a backend call is given (a spawn's provision
// timeout), the action goes on and the asker reads the outcome in status.
const actTimeout = 30 * time.Minute

// serveSpawn spawns one machine asked for by hand (`raptiformica spawn`),
// placed as the loop places its own, and answers with its record.
func (h *httpServer) serveSpawn(w http.ResponseWriter, r *http.Request) {
	var req agentapi.SpawnRequest
	if err := json.NewDecoder(io.LimitReader(r.Body, 4<<10)).Decode(&req); err != nil || req.Type == "" {
		http.Error(w, "the body must be JSON with machine_type (and backend, optionally)\n", http.StatusBadRequest)
		return
	}
	h.act(w, r, http.StatusOK, func(p *rules.Platform, obs reconcile.Observed, now time.Time) (state.Action, error) {
		return reconcile.PlaceByHand(p, obs, now, req.Type, req.Backend)
	})
}

// serveDestroy removes one machine asked for by hand (`raptiformica
// destroy`), gracefully, where the loop would remove it.
func (h *httpServer) serveDestroy(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	h.act(w, r, http.StatusNoContent, func(p *rules.Platform, obs reconcile.Observed, now time.Time) (state.Action, error) {
		return reconcile.DestroyByHand(p, obs, now, id)
	})
}

// act runs the action choose picks on the leader's executor and answers
// with the record it left (ok) or nothing (done). An action can run for
// as long as its backend call: this request alone may write for that
// long.
func (h *httpServer) act(w http.ResponseWriter, r *http.Request, done int, choose func(*rules.Platform, reconcile.Observed, time.Time) (state.Action, error)) {
	_ = http.NewResponseController(w).SetWriteDeadline(time.Now().Add(actTimeout + 15*time.Second))
	ctx, cancel := context.WithTimeout(r.Context(), actTimeout)
	defer cancel()
	rec, err := h.elector.Act(ctx, choose)
	var refused refusal
	switch {
	case errors.Is(err, errNotLeading):
		http.Error(w, err.Error()+": ask the leader\n", http.StatusConflict)
		return
	case errors.As(err, &refused):
		http.Error(w, err.Error()+"\n", http.StatusUnprocessableEntity)
		return
	case err != nil:
		http.Error(w, err.Error()+"\n", http.StatusInternalServerError)
		return
	}
	if done == http.StatusNoContent {
		w.WriteHeader(done)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(rec)
}
