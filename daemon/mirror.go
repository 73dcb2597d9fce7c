package daemon

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/raptiformica/raptiformica/internal/fsutil"
	"github.com/raptiformica/raptiformica/internal/kvschema"
	"github.com/raptiformica/raptiformica/internal/telemetry"
	"github.com/raptiformica/raptiformica/internal/watch"
	"github.com/raptiformica/raptiformica/reconcile"
	"github.com/raptiformica/raptiformica/rules"
)

// KVSourceName is the file name given to descriptions read from KV, so that
// their problems point at where they live.
const KVSourceName = kvschema.PlatformSource

func (a *Agent) loadMirror() (*rules.Platform, error) {
	src, err := os.ReadFile(filepath.Join(a.mirrorDir(), "platform"))
	if err != nil {
		return nil, err
	}
	return rules.Parse(filepath.Join(a.mirrorDir(), "platform"), src, a.parseOptions())
}

func (a *Agent) loadMirroredInventory() map[string]reconcile.Record {
	var recs map[string]reconcile.Record
	b, err := os.ReadFile(filepath.Join(a.mirrorDir(), "inventory.json"))
	if err == nil {
		_ = json.Unmarshal(b, &recs)
	}
	return recs
}

// inventoryVersion orders copies of the inventory: the KV's epoch, then the
// Raft index the copy was read at.
type inventoryVersion struct {
	Epoch, Index uint64
}

func (v inventoryVersion) less(w inventoryVersion) bool {
	return v.Epoch < w.Epoch || v.Epoch == w.Epoch && v.Index < w.Index
}

func (v inventoryVersion) String() string {
	return fmt.Sprintf("%d.%d", v.Epoch, v.Index)
}

// mirroredInventoryVersion is the version of the mirrored inventory, zero
// when it has none.
func (a *Agent) mirroredInventoryVersion() inventoryVersion {
	var v inventoryVersion
	b, err := os.ReadFile(filepath.Join(a.mirrorDir(), "inventory.version"))
	if err == nil {
		_, _ = fmt.Sscanf(string(b), "%d %d", &v.Epoch, &v.Index)
	}
	return v
}

// writeInventoryMirror keeps an inventory and its version on disk; like
// writeMirror, the records go first.
func (a *Agent) writeInventoryMirror(b []byte, v inventoryVersion) error {
	if err := fsutil.WriteFileAtomic(filepath.Join(a.mirrorDir(), "inventory.json"), b, 0o600); err != nil {
		return err
	}
	return fsutil.WriteFileAtomic(filepath.Join(a.mirrorDir(), "inventory.version"), []byte(fmt.Sprintf("%d %d\n", v.Epoch, v.Index)), 0o600)
}

// kvEpoch reads the KV's epoch, 0 when it has none.
func (a *Agent) kvEpoch(ctx context.Context) (uint64, error) {
	return a.store.Epoch(ctx)
}

// mirroredVersion is the version of the mirrored description, 0 when it
// has none.
func (a *Agent) mirroredVersion() uint64 {
	b, err := os.ReadFile(filepath.Join(a.mirrorDir(), "platform.version"))
	if err != nil {
		return 0
	}
	v, _ := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	return v
}

// writeMirror keeps a description and its version on disk. The text goes
// first: cut short, the mirror holds a newer text under an older version,
// which the next apply simply overwrites.
func (a *Agent) writeMirror(src []byte, version uint64) {
	if err := fsutil.WriteFileAtomic(filepath.Join(a.mirrorDir(), "platform"), src, 0o600); err != nil {
		a.Log.Error("mirror platform description", telemetry.KeyError, err)
		return
	}
	if err := fsutil.WriteFileAtomic(filepath.Join(a.mirrorDir(), "platform.version"), []byte(strconv.FormatUint(version, 10)+"\n"), 0o600); err != nil {
		a.Log.Error("mirror platform version", telemetry.KeyError, err)
	}
}

// mirroredPeers are the addresses of the machines this node last knew of.
func (a *Agent) mirroredPeers() []string {
	var out []string
	for _, r := range a.loadMirroredInventory() {
		if r.ID != a.Config.MachineID && r.Address != "" {
			out = append(out, r.Address)
		}
	}
	sort.Strings(out)
	return out
}

// watchPlatform follows the description in KV with a blocking query. A valid
// one replaces the current one and is mirrored to disk; an invalid one is
// reported and ignored, so the node keeps its last good description. When the
// key is missing (a new or wiped cluster) the node writes its own copy back.
func (a *Agent) watchPlatform(ctx context.Context) {
	var last uint64
	query := func(q *api.QueryOptions) (uint64, bool, error) {
		pair, meta, err := a.store.Platform(ctx, q)
		if err != nil {
			return 0, false, err
		}
		if pair == nil {
			a.reseed(ctx)
			last = 0
			return meta.LastIndex, false, nil
		}
		changed := pair.ModifyIndex != last
		last = pair.ModifyIndex
		if changed {
			a.applyKV(pair)
		}
		return meta.LastIndex, changed, nil
	}
	_ = watch.Loop(ctx, 5*time.Minute, query, func() {}, func(err error) {
		a.Log.Warn("watch platform", telemetry.KeyError, err)
	})
}

func (a *Agent) applyKV(pair *api.KVPair) {
	p, err := rules.Parse(KVSourceName, pair.Value, a.parseOptions())
	if err != nil {
		a.mu.Lock()
		a.platformErr = err.Error()
		a.mu.Unlock()
		a.metrics.PlatformValid.Set(0)
		a.metrics.PlatformRejected.Inc()
		a.Log.Error("platform description rejected; keeping the last good one", telemetry.KeyIndex, pair.ModifyIndex, telemetry.KeyError, err)
		a.markReady()
		return
	}
	a.metrics.PlatformValid.Set(1)
	// Versions come from `platform apply` (the pair's Flags); a description
	// written into KV by other means has none and is taken as the newest.
	if mine := a.mirroredVersion(); pair.Flags != 0 && pair.Flags < mine {
		a.Log.Warn("KV holds an older description than this node's mirror; keeping the mirror", "kv_version", pair.Flags, "mirror_version", mine)
		a.metrics.MirrorKeptNewer.WithLabelValues("platform").Inc()
	} else {
		a.writeMirror(p.Source, pair.Flags)
	}
	if cur := a.Platform(); cur != nil && bytes.Equal(cur.Source, p.Source) {
		a.mu.Lock()
		a.platformErr = ""
		a.mu.Unlock()
	} else {
		a.setPlatform(p)
		a.Log.Info("platform description loaded", telemetry.KeyIndex, pair.ModifyIndex, "cluster", p.Cluster)
	}
	a.markReady()
}

// markReady tells systemd the node is ready, once: Consul answers and a
// description is loaded.
func (a *Agent) markReady() {
	a.mu.Lock()
	first := !a.ready && a.platform != nil
	if first {
		a.ready = true
	}
	a.mu.Unlock()
	if first {
		notify("READY=1")
		a.Log.Info("ready")
	}
}

// reseed writes this node's description, and its mirrored inventory, into an
// empty KV: the cluster is new, or its state was lost and this node is what
// remains of it.
//
// It reports whether the KV holds a description afterwards.
func (a *Agent) reseed(ctx context.Context) bool {
	p := a.Platform()
	if p == nil {
		return false
	}
	// The description is written last: while it is missing the KV counts
	// as lost, so a reseed cut short is done again by the next caller.
	pair, _, err := a.store.Platform(ctx, &api.QueryOptions{RequireConsistent: true})
	if err != nil || pair != nil {
		return err == nil
	}
	recs, _, err := a.inventory.List(ctx, nil)
	if err != nil {
		return false
	}
	if len(recs) == 0 {
		// A new history starts here: its epoch is one past the mirror's,
		// so every node's mirror takes what follows as newer than what it
		// holds, though a fresh Consul counts its indexes from 1 again.
		// Written only when missing: a reseed cut short and run again
		// belongs to the same epoch.
		epoch := a.mirroredInventoryVersion().Epoch + 1
		if err := a.store.InitEpoch(ctx, epoch); err != nil {
			a.Log.Warn("re-seed epoch", telemetry.KeyError, err)
			return false
		}
		for _, r := range a.loadMirroredInventory() {
			r.Index = 0
			if _, err := a.inventory.Put(ctx, r); err != nil && !errors.Is(err, reconcile.ErrConflict) {
				a.Log.Warn("re-seed inventory from the mirror", telemetry.KeyMachineID, r.ID, telemetry.KeyError, err)
				return false
			} else if err == nil {
				a.Log.Info("re-seeded inventory record from the mirror", telemetry.KeyMachineID, r.ID)
			}
		}
	}
	ok, err := a.store.SeedPlatform(ctx, p.Source, a.mirroredVersion())
	if err == nil && ok {
		a.Log.Info("seeded an empty KV with the platform description", telemetry.KeyFile, p.Filename)
	}
	return err == nil
}

// watchInventory mirrors the inventory to disk on every change, unless the
// mirror already holds a newer version: a KV from an older history (a
// cluster re-created from a staler copy than this node's) is run but never
// replaces what this node knows.
func (a *Agent) watchInventory(ctx context.Context) {
	var last []byte
	query := func(q *api.QueryOptions) (uint64, bool, error) {
		recs, index, err := a.inventory.List(ctx, q)
		if err != nil {
			return 0, false, err
		}
		if len(recs) == 0 {
			// A running node always has its own record, so an empty
			// inventory is a wiped KV: keep the mirror to re-seed from.
			return index, false, nil
		}
		b, _ := json.MarshalIndent(recs, "", "  ")
		epoch, err := a.kvEpoch(ctx)
		if err != nil {
			return 0, false, err
		}
		v, mine := inventoryVersion{Epoch: epoch, Index: index}, a.mirroredInventoryVersion()
		// The same records in a new epoch (a re-seed) still move the
		// mirror's version forward.
		if bytes.Equal(b, last) && v.Epoch == mine.Epoch {
			return index, false, nil
		}
		if v.less(mine) {
			a.Log.Warn("KV holds an older inventory than this node's mirror; keeping the mirror", "kv_version", v, "mirror_version", mine)
			a.metrics.MirrorKeptNewer.WithLabelValues("inventory").Inc()
			return index, false, nil
		}
		if err := a.writeInventoryMirror(b, v); err != nil {
			a.Log.Error("mirror inventory", telemetry.KeyError, err)
			return index, false, nil
		}
		last = b
		return index, true, nil
	}
	_ = watch.Loop(ctx, 5*time.Minute, query, func() {}, func(err error) {
		a.Log.Warn("watch inventory", telemetry.KeyError, err)
	})
}
