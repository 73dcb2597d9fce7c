package agentapi

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"

	"github.com/raptiformica/raptiformica/internal/state"
)

// MachinesPath is where the leader's agent takes the actions an operator
// asks for by hand: POST spawns one machine, DELETE MachinesPath/<id>
// removes one. The leader places and runs them as it runs its own, on
// whichever member offers the backend: the operator's machine runs no
// backend.
const MachinesPath = "/v1/machines"

// SpawnRequest is the body of POST /v1/machines.
type SpawnRequest struct {
	// Type is the machine type to spawn.
	Type string `json:"machine_type"`
	// Backend, when set, is the backend to spawn it on; empty: the first
	// of the type's backends that a member can take now.
	Backend string `json:"backend,omitempty"`
}

// maxRecordAnswer bounds the record an agent answers with.
const maxRecordAnswer = 1 << 20

// Spawn asks the leader's agent to spawn one machine by hand, on top of
// the description, and returns its record once its backend made it
// (joining, with its address). It blocks until then or until ctx ends;
// the spawn goes on when ctx ends first.
func Spawn(ctx context.Context, a Agent, req SpawnRequest) (state.Record, error) {
	var rec state.Record
	resp, err := a.do(ctx, http.MethodPost, MachinesPath, req, http.StatusOK)
	if err != nil {
		return rec, err
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(io.LimitReader(resp.Body, maxRecordAnswer)).Decode(&rec); err != nil {
		return rec, fmt.Errorf("agent at %s: spawn: %w", a, err)
	}
	return rec, nil
}

// Destroy asks the leader's agent to remove machine id gracefully, and
// returns once it is gone. It blocks until then or until ctx ends; the
// removal goes on when ctx ends first.
func Destroy(ctx context.Context, a Agent, id string) error {
	resp, err := a.do(ctx, http.MethodDelete, MachinesPath+"/"+url.PathEscape(id), nil, http.StatusNoContent)
	if err != nil {
		return err
	}
	return resp.Body.Close()
}
