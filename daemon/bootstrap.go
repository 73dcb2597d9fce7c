package daemon

import (
	"context"
	"errors"
	"net/http"
	"path/filepath"
	"slices"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"

	"github.com/raptiformica/raptiformica/internal/clock"
	"github.com/raptiformica/raptiformica/internal/kvschema"
	"github.com/raptiformica/raptiformica/internal/nodeconfig"
	"github.com/raptiformica/raptiformica/internal/state"
	"github.com/raptiformica/raptiformica/internal/telemetry"
	"github.com/raptiformica/raptiformica/reconcile"
)

// kvSeed puts in KV what the cluster needs from this node: the gossip key
// and the mesh secret when the cluster has none yet (the seed), and this
// server's inventory record when it has none (the seed, or a server joined
// by hand). Every write is idempotent, so the agent runs it at start
// and the quorum watch again on a recovered, emptied KV. It has no state.
type kvSeed struct {
	cfg       nodeconfig.Config
	store     *kvschema.Store
	inventory *reconcile.Inventory
	clock     clock.Clock
	log       hclog.Logger
}

// run writes it all, retrying every second; it blocks until it succeeds
// (nil) or ctx ends (ctx's error).
func (s *kvSeed) run(ctx context.Context) error {
	attempt := 0
	return clock.Poll(ctx, s.clock, time.Second, func() (bool, error) {
		attempt++
		var err error
		if s.cfg.ConsulServer {
			// A client may write only its own keys: the cluster's are
			// a server's to put back.
			err = s.gossipKey(ctx)
			if err == nil {
				err = s.meshSecret(ctx)
			}
		}
		if err == nil {
			err = s.record(ctx)
		}
		if err != nil {
			s.log.Warn("bootstrap KV", telemetry.KeyError, err, telemetry.KeyAttempt, attempt)
		}
		return err == nil, nil
	})
}

// gossipKey puts the key this node's Consul encrypts gossip with in KV
// when the cluster has none (the seed, or a KV re-created on a fresh
// Consul): its keyring's, which a rotation may have changed since the node
// config was written.
func (s *kvSeed) gossipKey(ctx context.Context) error {
	key := gossipKeyOf(filepath.Join(s.cfg.DataDir, "consul"), s.cfg.Encrypt)
	if key == "" {
		return nil
	}
	return s.store.InitGossipKey(ctx, key)
}

// meshSecret puts the node's mesh secret in KV when the cluster has none
// yet (the seed, or a KV re-created on a fresh Consul), so that the leader
// can give it to new machines: the one it runs with, and in the middle of
// a rotation the other it dials with as the secret being retired (a later
// `rotate mesh` finishes the rotation from there).
func (s *kvSeed) meshSecret(ctx context.Context) error {
	if s.cfg.Mesh == nil {
		return nil
	}
	m, ok := loadMeshSecrets(s.cfg.DataDir)
	if !ok {
		return s.store.InitMeshSecret(ctx, s.cfg.Mesh.Secret)
	}
	kv := kvschema.MeshSecrets{Current: m.Listen}
	if len(m.Dial) > 0 {
		kv.Previous = m.Dial[0]
	}
	return s.store.InitMeshSecrets(ctx, kv)
}

// record writes this machine's inventory record when it has none, and its
// overlay address into it once the mesh gave it one.
//
// The inventory is the servers': a client machine's own token may not
// write even its own record (kvschema.MachineRules), which whoever made
// or enrolled it wrote. Consul refuses such a write, and a client takes
// that as done. A machine whose node config an operator wrote by hand,
// with a token that may write it, records itself as before.
func (s *kvSeed) record(ctx context.Context) error {
	err := s.writeRecord(ctx)
	if se := (api.StatusError{}); !s.cfg.ConsulServer && errors.As(err, &se) && se.Code == http.StatusForbidden {
		return nil
	}
	return err
}

func (s *kvSeed) writeRecord(ctx context.Context) error {
	rec, found, err := s.inventory.Get(ctx, s.cfg.MachineID)
	if err != nil {
		return err
	}
	if found && s.cfg.Mesh != nil && rec.Address != s.cfg.BindAddr {
		// The spawner recorded the machine's own network address; over
		// the mesh the others reach it at its overlay address.
		// The old address stays among Addresses: members dial it until
		// this node's mesh entry is in KV.
		if !slices.Contains(rec.Addresses, rec.Address) {
			rec.Addresses = append(rec.Addresses, rec.Address)
		}
		rec.Address, rec.Updated = s.cfg.BindAddr, s.clock.Now()
		if _, err := s.inventory.Put(ctx, rec); err != nil && !errors.Is(err, state.ErrConflict) {
			return err
		}
		return nil
	}
	if found {
		return nil
	}
	now := s.clock.Now()
	_, err = s.inventory.Put(ctx, reconcile.Record{
		ID: s.cfg.MachineID, Type: s.cfg.MachineType, Backend: s.cfg.Backend, State: reconcile.StateJoined,
		Address: s.cfg.BindAddr, Seed: s.cfg.Bootstrap, Created: now, Updated: now,
	})
	if errors.Is(err, state.ErrConflict) {
		return nil // written by the leader meanwhile
	}
	return err
}
