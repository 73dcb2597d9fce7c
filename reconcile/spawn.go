package reconcile

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"

	"github.com/hashicorp/go-hclog"

	"github.com/raptiformica/raptiformica/backends"
	"github.com/raptiformica/raptiformica/internal/state"
	"github.com/raptiformica/raptiformica/internal/telemetry"
	"github.com/raptiformica/raptiformica/rules"
)

// NewMachineID returns a fresh machine ID for a machine type: the type name
// and 8 random hex digits, short enough for a hostname and a Consul node name.
func NewMachineID(machineType string) string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return machineType + "-" + hex.EncodeToString(b[:])
}

func (e *Executor) spawn(ctx context.Context, p *rules.Platform, bes map[string]backends.Backend, a state.Action, log hclog.Logger) (string, error) {
	be, ok := bes[a.Backend]
	if !ok && a.Host == "" {
		return "", fmt.Errorf("backend %q is not configured", a.Backend)
	}
	id := NewMachineID(a.Type)
	now := e.Clock.Now()
	// The intent goes to KV before anything is created: a leader that dies
	// right after this line leaves a record the next leader will see, wait
	// for, and clean up if it never joins.
	host := cmp.Or(a.Host, e.Self)
	rec, err := e.Inventory.Put(ctx, Record{ID: id, Type: a.Type, Backend: a.Backend, Host: host, Scope: a.Scope, State: StateSpawning, Created: now, Updated: now, Reason: a.Reason, Manual: a.Manual, Spare: a.Spare})
	if err != nil {
		return "", err
	}
	e.mu.Lock()
	e.lastSpawn[a.Type] = now
	e.mu.Unlock()
	a.MachineID = id
	log = log.With(telemetry.KeyMachineID, id, telemetry.KeyBackend, a.Backend)
	e.start(id, a, func() { e.spawnOn(ctx, p, be, rec, a, log) })
	return id, nil
}
