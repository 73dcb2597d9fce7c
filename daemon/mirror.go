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
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"
	"golang.org/x/sync/errgroup"

	"github.com/raptiformica/raptiformica/internal/fsutil"
	"github.com/raptiformica/raptiformica/internal/kvschema"
	"github.com/raptiformica/raptiformica/internal/telemetry"
	"github.com/raptiformica/raptiformica/internal/watch"
	"github.com/raptiformica/raptiformica/reconcile"
	"github.com/raptiformica/raptiformica/rules"
)

// mirror is this node's copy of the cluster's state. It follows the
// description and the inventory in KV with blocking queries, holds the last
// valid description (Platform), keeps both on disk (dir: platform,
// platform.version, inventory.json, inventory.version) so that a restarted
// node, or the last one standing, starts from them, and writes them back
// into a KV that lost them (reseed).
//
// The description's life on a node:
//
//	mirror on disk, else node config ─▶ loaded ─▶ KV's, when valid ─▶ ready
//	                                               invalid: kept, PlatformError says why
type mirror struct {
	dir       string
	self      string // this node's machine ID
	parse     rules.Options
	store     *kvschema.Store
	inventory *reconcile.Inventory
	log       hclog.Logger
	metrics   *telemetry.Metrics
	// changed is called when the description changes, so that the
	// control loop looks again at once.
	changed func()

	mu          sync.RWMutex    // guards platform, platformErr and ready
	platform    *rules.Platform // last valid description
	platformErr string          // why the description in KV was rejected
	ready       bool            // Consul reachable and a description loaded from it
}

// Run watches the description and the inventory in KV; it blocks until ctx
// ends and returns nil. Failed reads are logged and retried.
func (m *mirror) Run(ctx context.Context) error {
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { m.watchPlatform(ctx); return nil })
	g.Go(func() error { m.watchInventory(ctx); return nil })
	return g.Wait()
}

// Platform returns the last valid description, or nil before the first.
func (m *mirror) Platform() *rules.Platform {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return m.platform
}

// PlatformError says why the description in KV was rejected, "" when it
// was not.
func (m *mirror) PlatformError() string {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return m.platformErr
}

// Ready reports whether Consul answered with a description and this node
// has a valid one.
func (m *mirror) Ready() bool {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return m.ready
}

// load reads the first description: the mirror's, else the node config's
// file, else its inline text. A node with none waits for KV's.
func (m *mirror) load(file, inline string) error {
	if p, err := m.loadPlatform(); err == nil {
		m.setPlatform(p)
		m.log.Info("loaded platform description from the local mirror")
		return nil
	}
	switch {
	case file != "":
		p, err := rules.ParseFile(file, m.parse)
		if err != nil {
			return err
		}
		m.setPlatform(p)
	case inline != "":
		p, err := rules.Parse("node config platform", []byte(inline), m.parse)
		if err != nil {
			return err
		}
		m.setPlatform(p)
	}
	return nil
}

func (m *mirror) setPlatform(p *rules.Platform) {
	m.mu.Lock()
	m.platform = p
	m.platformErr = ""
	m.mu.Unlock()
	if m.changed != nil {
		m.changed()
	}
}

func (m *mirror) loadPlatform() (*rules.Platform, error) {
	src, err := os.ReadFile(filepath.Join(m.dir, "platform"))
	if err != nil {
		return nil, err
	}
	return rules.Parse(filepath.Join(m.dir, "platform"), src, m.parse)
}

// records is the mirrored inventory, by machine ID; nil when there is none.
func (m *mirror) records() map[string]reconcile.Record {
	var recs map[string]reconcile.Record
	b, err := os.ReadFile(filepath.Join(m.dir, "inventory.json"))
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

// inventoryVersion is the version of the mirrored inventory, zero when it
// has none.
func (m *mirror) inventoryVersion() inventoryVersion {
	var v inventoryVersion
	b, err := os.ReadFile(filepath.Join(m.dir, "inventory.version"))
	if err == nil {
		_, _ = fmt.Sscanf(string(b), "%d %d", &v.Epoch, &v.Index)
	}
	return v
}

// writeInventory keeps an inventory and its version on disk; like
// writePlatform, the records go first.
func (m *mirror) writeInventory(b []byte, v inventoryVersion) error {
	if err := fsutil.WriteFileAtomic(filepath.Join(m.dir, "inventory.json"), b, 0o600); err != nil {
		return err
	}
	return fsutil.WriteFileAtomic(filepath.Join(m.dir, "inventory.version"), []byte(fmt.Sprintf("%d %d\n", v.Epoch, v.Index)), 0o600)
}

// platformVersion is the version of the mirrored description, 0 when it
// has none.
func (m *mirror) platformVersion() uint64 {
	b, err := os.ReadFile(filepath.Join(m.dir, "platform.version"))
	if err != nil {
		return 0
	}
	v, _ := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	return v
}

// writePlatform keeps a description and its version on disk. The text goes
// first: cut short, the mirror holds a newer text under an older version,
// which the next apply simply overwrites.
func (m *mirror) writePlatform(src []byte, version uint64) {
	if err := fsutil.WriteFileAtomic(filepath.Join(m.dir, "platform"), src, 0o600); err != nil {
		m.log.Error("mirror platform description", telemetry.KeyError, err)
		return
	}
	if err := fsutil.WriteFileAtomic(filepath.Join(m.dir, "platform.version"), []byte(strconv.FormatUint(version, 10)+"\n"), 0o600); err != nil {
		m.log.Error("mirror platform version", telemetry.KeyError, err)
	}
}

// peers are the addresses of the machines this node last knew of: where a
// restarted Consul looks for the cluster.
func (m *mirror) peers() []string {
	var out []string
	for _, r := range m.records() {
		if r.ID != m.self && r.Address != "" {
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
func (m *mirror) watchPlatform(ctx context.Context) {
	var last uint64
	query := func(q *api.QueryOptions) (uint64, bool, error) {
		pair, meta, err := m.store.Platform(ctx, q)
		if err != nil {
			return 0, false, err
		}
		if pair == nil {
			m.reseed(ctx)
			last = 0
			return meta.LastIndex, false, nil
		}
		changed := pair.ModifyIndex != last
		last = pair.ModifyIndex
		if changed {
			m.apply(pair)
		}
		return meta.LastIndex, changed, nil
	}
	_ = watch.Loop(ctx, 5*time.Minute, query, func() {}, func(err error) {
		m.log.Warn("watch platform", telemetry.KeyError, err)
	})
}

func (m *mirror) apply(pair *api.KVPair) {
	p, err := rules.Parse(kvschema.PlatformSource, pair.Value, m.parse)
	if err != nil {
		m.mu.Lock()
		m.platformErr = err.Error()
		m.mu.Unlock()
		m.metrics.PlatformValid.Set(0)
		m.metrics.PlatformRejected.Inc()
		m.log.Error("platform description rejected; keeping the last good one", telemetry.KeyIndex, pair.ModifyIndex, telemetry.KeyError, err)
		m.markReady()
		return
	}
	m.metrics.PlatformValid.Set(1)
	// Versions come from `platform apply` (the pair's Flags); a description
	// written into KV by other means has none and is taken as the newest.
	if mine := m.platformVersion(); pair.Flags != 0 && pair.Flags < mine {
		m.log.Warn("KV holds an older description than this node's mirror; keeping the mirror", "kv_version", pair.Flags, "mirror_version", mine)
		m.metrics.MirrorKeptNewer.WithLabelValues("platform").Inc()
	} else {
		m.writePlatform(p.Source, pair.Flags)
	}
	if cur := m.Platform(); cur != nil && bytes.Equal(cur.Source, p.Source) {
		m.mu.Lock()
		m.platformErr = ""
		m.mu.Unlock()
	} else {
		m.setPlatform(p)
		m.log.Info("platform description loaded", telemetry.KeyIndex, pair.ModifyIndex, "cluster", p.Cluster)
	}
	m.markReady()
}

// markReady tells systemd the node is ready, once: Consul answers and a
// description is loaded.
func (m *mirror) markReady() {
	m.mu.Lock()
	first := !m.ready && m.platform != nil
	if first {
		m.ready = true
	}
	m.mu.Unlock()
	if first {
		notify("READY=1")
		m.log.Info("ready")
	}
}

// reseed writes this node's description, and its mirrored inventory, into an
// empty KV: the cluster is new, or its state was lost and this node is what
// remains of it. The watch, a new leader and a recovered survivor call it.
//
// It reports whether the KV holds a description afterwards.
func (m *mirror) reseed(ctx context.Context) bool {
	p := m.Platform()
	if p == nil {
		return false
	}
	// The description is written last: while it is missing the KV counts
	// as lost, so a reseed cut short is done again by the next caller.
	pair, _, err := m.store.Platform(ctx, &api.QueryOptions{RequireConsistent: true})
	if err != nil || pair != nil {
		return err == nil
	}
	recs, _, err := m.inventory.List(ctx, nil)
	if err != nil {
		return false
	}
	if len(recs) == 0 {
		// A new history starts here: its epoch is one past the mirror's,
		// so every node's mirror takes what follows as newer than what it
		// holds, though a fresh Consul counts its indexes from 1 again.
		// Written only when missing: a reseed cut short and run again
		// belongs to the same epoch.
		epoch := m.inventoryVersion().Epoch + 1
		if err := m.store.InitEpoch(ctx, epoch); err != nil {
			m.log.Warn("re-seed epoch", telemetry.KeyError, err)
			return false
		}
		for _, r := range m.records() {
			r.Index = 0
			if _, err := m.inventory.Put(ctx, r); err != nil && !errors.Is(err, reconcile.ErrConflict) {
				m.log.Warn("re-seed inventory from the mirror", telemetry.KeyMachineID, r.ID, telemetry.KeyError, err)
				return false
			} else if err == nil {
				m.log.Info("re-seeded inventory record from the mirror", telemetry.KeyMachineID, r.ID)
			}
		}
	}
	ok, err := m.store.SeedPlatform(ctx, p.Source, m.platformVersion())
	if err == nil && ok {
		m.log.Info("seeded an empty KV with the platform description", telemetry.KeyFile, p.Filename)
	}
	return err == nil
}

// watchInventory mirrors the inventory to disk on every change, unless the
// mirror already holds a newer version: a KV from an older history (a
// cluster re-created from a staler copy than this node's) is run but never
// replaces what this node knows.
func (m *mirror) watchInventory(ctx context.Context) {
	var last []byte
	query := func(q *api.QueryOptions) (uint64, bool, error) {
		recs, index, err := m.inventory.List(ctx, q)
		if err != nil {
			return 0, false, err
		}
		if len(recs) == 0 {
			// A running node always has its own record, so an empty
			// inventory is a wiped KV: keep the mirror to re-seed from.
			return index, false, nil
		}
		b, _ := json.MarshalIndent(recs, "", "  ")
		epoch, err := m.store.Epoch(ctx)
		if err != nil {
			return 0, false, err
		}
		v, mine := inventoryVersion{Epoch: epoch, Index: index}, m.inventoryVersion()
		// The same records in a new epoch (a re-seed) still move the
		// mirror's version forward.
		if bytes.Equal(b, last) && v.Epoch == mine.Epoch {
			return index, false, nil
		}
		if v.less(mine) {
			m.log.Warn("KV holds an older inventory than this node's mirror; keeping the mirror", "kv_version", v, "mirror_version", mine)
			m.metrics.MirrorKeptNewer.WithLabelValues("inventory").Inc()
			return index, false, nil
		}
		if err := m.writeInventory(b, v); err != nil {
			m.log.Error("mirror inventory", telemetry.KeyError, err)
			return index, false, nil
		}
		last = b
		return index, true, nil
	}
	_ = watch.Loop(ctx, 5*time.Minute, query, func() {}, func(err error) {
		m.log.Warn("watch inventory", telemetry.KeyError, err)
	})
}
