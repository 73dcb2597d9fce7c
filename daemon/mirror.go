package daemon

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
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

	"github.com/raptiformica/raptiformica/internal/clock"
	"github.com/raptiformica/raptiformica/internal/fsutil"
	"github.com/raptiformica/raptiformica/internal/kvschema"
	"github.com/raptiformica/raptiformica/internal/state"
	"github.com/raptiformica/raptiformica/internal/telemetry"
	"github.com/raptiformica/raptiformica/internal/watch"
	"github.com/raptiformica/raptiformica/reconcile"
	"github.com/raptiformica/raptiformica/rules"
)

// mirror is this node's copy of the cluster's state. It follows the
// description and the inventory in KV with blocking queries, holds the last
// valid description (Platform), keeps both on disk so that a restarted node,
// or the last one standing, starts from them, and writes them back into a KV
// that lost them (reseed).
//
// What a node follows of the inventory depends on its role, so that a
// client's cost does not grow with the cluster:
//
//   - a Consul server (which may have to re-create the cluster from its
//     mirror, being the last one standing) mirrors every record, from the
//     snapshot the leader writes at a bounded rate (snapshot.go), read
//     with stale blocking queries that any server answers;
//   - a client follows its own record alone, and keeps the Consul
//     servers' addresses (asked of Consul now and then), where its Consul
//     looks for the cluster when it restarts. It never re-seeds: its
//     mirror holds no other machine's record, and its token may write
//     none.
//
// On disk (dir), each text sits beside a version file that names the text
// it belongs to by checksum, so that a version is never carried past its
// text (a write cut short between the two, a file damaged or edited):
//
//	platform            the description's source
//	platform.version    "VERSION sha256:HEX": the KV version it was stored under
//	inventory.json      the records, by machine ID
//	inventory.version   "EPOCH INDEX sha256:HEX"
//	servers.json        a client's: the Consul servers' addresses (a hint
//	                    for retry_join, not versioned)
//
// A mirror that cannot be read, or whose version is not its text's, is an
// error in the log, in MirrorError (the agent's status) and in
// raptiformica_mirror_unreadable, never taken as empty: the node does not
// re-seed KV from it until a good copy from KV has replaced it.
//
// The description's life on a node:
//
//	mirror on disk, else node config ─▶ loaded ─▶ KV's, when valid ─▶ ready
//	                                               invalid: kept, PlatformError says why
type mirror struct {
	dir  string
	self string // this node's machine ID
	// server is set on a Consul server: it mirrors every record, and
	// may re-seed KV from them.
	server    bool
	consul    *api.Client // a client asks it for the servers' addresses
	clock     clock.Clock
	parse     rules.Options
	store     *kvschema.Store
	inventory *reconcile.Inventory
	log       hclog.Logger
	metrics   *telemetry.Metrics
	// changed is called when the description changes, so that the
	// control loop looks again at once.
	changed func()
	// overlay, when set, makes the description Platform returns the
	// effective one: with the cluster's modules applied (moduleWatch).
	overlay func(*rules.Platform) *rules.Platform
	// leading, when set, says whether this node leads: the leader reads
	// the description consistently (forwardKey).
	leading func() bool

	keyOnce sync.Once
	key     *forwardKey // the description's; see platformKey

	mu          sync.RWMutex    // guards the fields below
	platform    *rules.Platform // last valid description
	version     uint64          // the version platform was stored under; 0: none (node config, or a KV write without one)
	platformErr string          // why the description in KV was rejected
	ready       bool            // Consul reachable and a description loaded from it
	fileErrs    map[string]string
	refused     string // the last re-seed refusal logged, so that retries do not flood the log
}

// The parts of the mirror, as MirrorError and the metric's label name them.
const (
	mirrorPlatform  = "platform"
	mirrorInventory = "inventory"
)

// maxMirrorFile caps what is read of a mirror file: far above any real
// inventory, low enough that a damaged file cannot exhaust memory.
const maxMirrorFile = 64 << 20

// Run watches the description and the inventory in KV; it blocks until ctx
// ends and returns nil. Failed reads are logged and retried.
func (m *mirror) Run(ctx context.Context) error {
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { m.watchPlatform(ctx); return nil })
	g.Go(func() error {
		if m.server {
			m.watchSnapshot(ctx)
		} else {
			m.watchOwnRecord(ctx)
		}
		return nil
	})
	return g.Wait()
}

// Platform returns the last valid description, with the overlay applied,
// or nil before the first.
func (m *mirror) Platform() *rules.Platform {
	m.mu.RLock()
	p := m.platform
	m.mu.RUnlock()
	if m.overlay != nil {
		return m.overlay(p)
	}
	return p
}

// current is the description in use and the version it was stored under,
// read together: a re-seed writes them as one.
func (m *mirror) current() (*rules.Platform, uint64) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return m.platform, m.version
}

// PlatformError says why the description in KV was rejected, "" when it
// was not.
func (m *mirror) PlatformError() string {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return m.platformErr
}

// MirrorError says why this node's mirror on disk cannot be used, "" when
// it can: the description's, then the inventory's.
func (m *mirror) MirrorError() string {
	m.mu.RLock()
	defer m.mu.RUnlock()
	var out []string
	for _, what := range []string{mirrorPlatform, mirrorInventory} {
		if e := m.fileErrs[what]; e != "" {
			out = append(out, e)
		}
	}
	return strings.Join(out, "; ")
}

// report records whether a part of the mirror can be used (err nil) and
// logs each change, so that a broken mirror is said once, not per read.
func (m *mirror) report(what string, err error) {
	msg := ""
	if err != nil {
		msg = fmt.Sprintf("%s mirror unusable, not re-seeding KV from it until KV replaces it: %v", what, err)
	}
	m.mu.Lock()
	was := m.fileErrs[what]
	if m.fileErrs == nil {
		m.fileErrs = map[string]string{}
	}
	m.fileErrs[what] = msg
	m.mu.Unlock()
	if msg == was {
		return
	}
	if err != nil {
		m.metrics.MirrorUnreadable.WithLabelValues(what).Set(1)
		m.log.Error("mirror unusable; not re-seeding KV from it until KV replaces it", telemetry.KeyWhat, what, telemetry.KeyError, err)
		return
	}
	m.metrics.MirrorUnreadable.WithLabelValues(what).Set(0)
	m.log.Info("mirror usable again", telemetry.KeyWhat, what)
}

// Ready reports whether Consul answered with a description and this node
// has a valid one.
func (m *mirror) Ready() bool {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return m.ready
}

// load reads the first description: the mirror's, else the node config's
// file, else its inline text. A node with none waits for KV's. A mirror
// that cannot be used is reported and passed over.
func (m *mirror) load(file, inline string) error {
	p, v, err := m.loadPlatform()
	m.report(mirrorPlatform, err)
	if p != nil {
		m.setPlatform(p, v)
		m.log.Info("loaded platform description from the local mirror", telemetry.KeyVersion, v)
		return nil
	}
	switch {
	case file != "":
		p, err := rules.ParseFile(file, m.parse)
		if err != nil {
			return err
		}
		m.setPlatform(p, 0)
	case inline != "":
		p, err := rules.Parse("node config platform", []byte(inline), m.parse)
		if err != nil {
			return err
		}
		m.setPlatform(p, 0)
	}
	return nil
}

func (m *mirror) setPlatform(p *rules.Platform, version uint64) {
	m.mu.Lock()
	m.platform, m.version = p, version
	m.platformErr = ""
	m.mu.Unlock()
	if m.changed != nil {
		m.changed()
	}
}

// loadPlatform reads and parses the mirrored description. A text that
// parses but whose version is not its own comes back with version 0 and
// the error: the best description this node has, known to be broken.
func (m *mirror) loadPlatform() (*rules.Platform, uint64, error) {
	src, v, err := m.platformFiles()
	if src == nil {
		return nil, 0, err
	}
	p, perr := rules.Parse(m.path(mirrorPlatformFile), src, m.parse)
	if perr != nil {
		return nil, 0, perr
	}
	return p, v, err
}

// The mirror's files; see the mirror's doc.
const (
	mirrorPlatformFile         = "platform"
	mirrorPlatformVersionFile  = "platform.version"
	mirrorInventoryFile        = "inventory.json"
	mirrorInventoryVersionFile = "inventory.version"
	mirrorServersFile          = "servers.json"
)

func (m *mirror) path(name string) string { return filepath.Join(m.dir, name) }

// readMirrorFile reads a mirror file, nil without error when there is none.
func readMirrorFile(name string) ([]byte, error) {
	f, err := os.Open(name)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxMirrorFile+1))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	if len(b) > maxMirrorFile {
		return nil, fmt.Errorf("%s: larger than the %d bytes a mirror file may be", name, maxMirrorFile)
	}
	if b == nil {
		b = []byte{}
	}
	return b, nil
}

// readVersion reads a version file: n unsigned numbers, then the checksum
// of the text it belongs to. A file without the checksum (written by an
// agent before checksums, after its text) is taken as it is: the old write
// order never let a version run ahead of its text.
func readVersion(name string, text []byte, n int) ([]uint64, error) {
	b, err := readMirrorFile(name)
	if err != nil {
		return nil, err
	}
	if b == nil {
		return nil, fmt.Errorf("%s: missing beside its text (a write cut short?)", name)
	}
	fields := strings.Fields(string(b))
	if len(fields) != n && len(fields) != n+1 {
		return nil, fmt.Errorf("%s:1: want %d numbers and a checksum, got %q", name, n, strings.TrimSpace(string(b)))
	}
	nums := make([]uint64, n)
	for i := range n {
		if nums[i], err = strconv.ParseUint(fields[i], 10, 64); err != nil {
			return nil, fmt.Errorf("%s:1: field %d: %q is no version number", name, i+1, fields[i])
		}
	}
	if len(fields) == n+1 && fields[n] != checksum(text) {
		return nil, fmt.Errorf("%s: does not belong to the text beside it (checksum %s, the text's %s)", name, fields[n], checksum(text))
	}
	return nums, nil
}

func checksum(b []byte) string {
	h := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(h[:])
}

// platformFiles reads the mirrored description's text and its version. A
// text whose version cannot be trusted comes back with version 0 and the
// error; no text is (nil, 0, nil).
func (m *mirror) platformFiles() ([]byte, uint64, error) {
	src, err := readMirrorFile(m.path(mirrorPlatformFile))
	if src == nil || err != nil {
		return nil, 0, err
	}
	v, err := readVersion(m.path(mirrorPlatformVersionFile), src, 1)
	if err != nil {
		return src, 0, err
	}
	return src, v[0], nil
}

// platformVersion is the version of the mirrored description, 0 when it
// has none or none that can be trusted.
func (m *mirror) platformVersion() uint64 {
	_, v, _ := m.platformFiles()
	return v
}

// writePlatform keeps a description and its version on disk, and clears a
// broken mirror's error once both are written.
func (m *mirror) writePlatform(src []byte, version uint64) {
	if err := fsutil.WriteFileAtomic(m.path(mirrorPlatformFile), src, 0o600); err != nil {
		m.log.Error("mirror platform description", telemetry.KeyError, err)
		return
	}
	if err := fsutil.WriteFileAtomic(m.path(mirrorPlatformVersionFile), fmt.Appendf(nil, "%d %s\n", version, checksum(src)), 0o600); err != nil {
		m.log.Error("mirror platform version", telemetry.KeyError, err)
		return
	}
	m.report(mirrorPlatform, nil)
}

// readInventory reads the mirrored records and their version; no mirror
// is (nil, zero, nil). Records whose version cannot be trusted come back
// with a zero version and the error.
func (m *mirror) readInventory() (map[string]reconcile.Record, inventoryVersion, error) {
	name := m.path(mirrorInventoryFile)
	b, err := readMirrorFile(name)
	if b == nil || err != nil {
		return nil, inventoryVersion{}, err
	}
	var recs map[string]reconcile.Record
	if err := json.Unmarshal(b, &recs); err != nil {
		return nil, inventoryVersion{}, jsonError(name, b, err)
	}
	if recs == nil {
		// "null" is no inventory the mirror writes.
		return nil, inventoryVersion{}, fmt.Errorf("%s:1: no records object", name)
	}
	boundToKeys(recs)
	nums, err := readVersion(m.path(mirrorInventoryVersionFile), b, 2)
	if err != nil {
		return recs, inventoryVersion{}, err
	}
	return recs, inventoryVersion{Epoch: nums[0], Index: nums[1]}, nil
}

// jsonError names the file and the line where a JSON document went wrong.
func jsonError(name string, b []byte, err error) error {
	var off int64 = -1
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.As(err, &syn):
		off = syn.Offset
	case errors.As(err, &typ):
		off = typ.Offset
	}
	if off < 0 {
		return fmt.Errorf("%s: %w", name, err)
	}
	off = min(off, int64(len(b)))
	return fmt.Errorf("%s:%d: %w", name, 1+bytes.Count(b[:off], []byte("\n")), err)
}

// records is the mirrored inventory, by machine ID; nil when there is none
// or it cannot be read (which is reported).
func (m *mirror) records() map[string]reconcile.Record {
	recs, _, err := m.readInventory()
	m.report(mirrorInventory, err)
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
// has none or none that can be trusted.
func (m *mirror) inventoryVersion() inventoryVersion {
	_, v, err := m.readInventory()
	m.report(mirrorInventory, err)
	return v
}

// writeInventory keeps an inventory and its version on disk, and clears a
// broken mirror's error once both are written.
func (m *mirror) writeInventory(b []byte, v inventoryVersion) error {
	if err := fsutil.WriteFileAtomic(m.path(mirrorInventoryFile), b, 0o600); err != nil {
		return err
	}
	if err := fsutil.WriteFileAtomic(m.path(mirrorInventoryVersionFile), fmt.Appendf(nil, "%d %d %s\n", v.Epoch, v.Index, checksum(b)), 0o600); err != nil {
		return err
	}
	m.report(mirrorInventory, nil)
	return nil
}

// peers are the addresses of the machines this node last knew of: where a
// restarted Consul looks for the cluster.
//
// They are the Consul servers' addresses: a node joins the cluster through
// any member, and the servers are the few that stay; listing every member
// made every agent's retry_join, and every restart's join attempts, grow
// with the cluster. Without a description to tell servers from clients, or
// without a server recorded, every member is named. A client, whose mirror
// holds no other record, names the servers its Consul last reported.
func (m *mirror) peers() []string {
	if !m.server {
		return m.servers()
	}
	p := m.Platform()
	var all, servers []string
	for _, r := range m.records() {
		if r.ID == m.self || r.Address == "" {
			continue
		}
		all = append(all, r.Address)
		if r.Seed || p != nil && p.Machines[r.Type].ConsulServer {
			servers = append(servers, r.Address)
		}
	}
	out := servers
	if len(out) == 0 {
		out = all
	}
	sort.Strings(out)
	return out
}

// watchPlatform follows the description in KV with a blocking query, read
// stale but only ever moving forward (forwardKey). A valid one replaces the
// current one and is mirrored to disk; an invalid one is reported and
// ignored, so the node keeps its last good description. When the key is
// missing (a new or wiped cluster) the node writes its own copy back.
func (m *mirror) watchPlatform(ctx context.Context) {
	key := m.platformKey()
	query := func(q *api.QueryOptions) (uint64, bool, error) {
		return key.read(ctx, q, m.apply, func() { m.reseed(ctx) })
	}
	_ = watch.Loop(ctx, 5*time.Minute, query, func() {}, func(err error) {
		m.log.Warn("watch platform", telemetry.KeyError, err)
	})
}

// platformKey is the description's forwardKey, made on first use.
func (m *mirror) platformKey() *forwardKey {
	m.keyOnce.Do(func() {
		m.key = &forwardKey{what: kvschema.Platform, get: m.store.Platform, leading: m.leading, log: m.log}
	})
	return m.key
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
	src, mine, ferr := m.platformFiles()
	older := src != nil && pair.Flags != 0 && pair.Flags < mine
	if ferr == nil && older {
		// Kept only while it still loads: a text that does not is no
		// newer copy of anything.
		if _, err := rules.Parse(m.path(mirrorPlatformFile), src, m.parse); err != nil {
			ferr = err
		}
	}
	m.report(mirrorPlatform, ferr)
	if ferr == nil && older {
		m.log.Warn("KV holds an older description than this node's mirror; keeping the mirror", telemetry.KeyKVVersion, pair.Flags, telemetry.KeyMirrorVersion, mine)
		m.metrics.MirrorKeptNewer.WithLabelValues("platform").Inc()
	} else {
		m.writePlatform(p.Source, pair.Flags)
	}
	m.mu.Lock()
	same := m.platform != nil && bytes.Equal(m.platform.Source, p.Source)
	if same {
		// The same text applied again carries a new version.
		m.version, m.platformErr = pair.Flags, ""
	}
	m.mu.Unlock()
	if !same {
		m.setPlatform(p, pair.Flags)
		m.log.Info("platform description loaded", telemetry.KeyIndex, pair.ModifyIndex, telemetry.KeyCluster, p.Cluster, telemetry.KeyVersion, pair.Flags)
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
// It reports whether the KV holds a description afterwards. A description
// the KV holds is read from the Raft leader and taken when it is not the
// one applied: a new leader calls reseed before its first plan, and plans
// with the KV's description, not a stale read's.
func (m *mirror) reseed(ctx context.Context) bool {
	// The text and the version it was stored under, as one: never the
	// mirror's version with another text (a node config's, an older KV's).
	p, version := m.current()
	if p == nil {
		return false
	}
	// The description is written last: while it is missing the KV counts
	// as lost, so a reseed cut short is done again by the next caller.
	// The read is consistent, and its description is taken when it is
	// not the one applied: a new leader plans with the KV's.
	exists, err := m.platformKey().confirm(ctx, m.apply)
	if err != nil || exists || !m.server {
		// A client's mirror holds only its own record: a server
		// re-seeds.
		return err == nil && exists
	}
	// A mirror that cannot be read is no copy to restore from: an empty
	// inventory makes every machine look like an orphan, and a node
	// config's text may be older than what the cluster ran. Another node,
	// or this one once its mirror is mended, re-seeds.
	mirrored, mirroredVersion, ierr := m.readInventory()
	m.report(mirrorInventory, ierr)
	if broken := m.MirrorError(); broken != "" {
		m.mu.Lock()
		again := m.refused == broken
		m.refused = broken
		m.mu.Unlock()
		if !again {
			m.log.Error("KV lost its state but this node's mirror is unusable: not re-seeding from it; move the named file aside to re-seed without it", telemetry.KeyError, broken)
		}
		return false
	}
	m.mu.Lock()
	m.refused = ""
	m.mu.Unlock()
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
		epoch := mirroredVersion.Epoch + 1
		if err := m.store.InitEpoch(ctx, epoch); err != nil {
			m.log.Warn("re-seed epoch", telemetry.KeyError, err)
			return false
		}
		for _, r := range mirrored {
			r.Index = 0
			if _, err := m.inventory.Put(ctx, r); err != nil && !errors.Is(err, state.ErrConflict) {
				m.log.Warn("re-seed inventory from the mirror", telemetry.KeyMachineID, r.ID, telemetry.KeyError, err)
				return false
			} else if err == nil {
				m.log.Info("re-seeded inventory record from the mirror", telemetry.KeyMachineID, r.ID)
			}
		}
	}
	ok, err := m.store.SeedPlatform(ctx, p.Source, version)
	if err == nil && ok {
		m.log.Info("seeded an empty KV with the platform description", telemetry.KeyFile, p.Filename, telemetry.KeyVersion, version)
	}
	return err == nil
}

// keepInventory writes recs at v to the mirror unless it already holds v
// or a newer version. A version of an older epoch is a KV of an older
// history (a cluster re-created from a staler copy than this node's): it
// is run, but never replaces what this node knows, and that is said. One of
// the same epoch and an older index is a stale read, from a server behind
// the one that answered before: it is passed over quietly.
func (m *mirror) keepInventory(recs map[string]reconcile.Record, v inventoryVersion) {
	mine := m.inventoryVersion()
	switch {
	case v == mine:
		return
	case v.Epoch < mine.Epoch:
		m.log.Warn("KV holds an older inventory than this node's mirror; keeping the mirror", telemetry.KeyKVVersion, v, telemetry.KeyMirrorVersion, mine)
		m.metrics.MirrorKeptNewer.WithLabelValues("inventory").Inc()
		return
	case v.less(mine):
		m.log.Debug("inventory read behind the mirror's (a stale read); keeping the mirror", telemetry.KeyKVVersion, v, telemetry.KeyMirrorVersion, mine)
		return
	}
	b, _ := json.MarshalIndent(recs, "", "  ")
	if err := m.writeInventory(b, v); err != nil {
		m.log.Error("mirror inventory", telemetry.KeyError, err)
	}
}

// watchSnapshot mirrors the inventory from the leader's snapshot, on a
// server. It follows the snapshot's head with a stale blocking query, so
// that the servers' watches spread over the servers rather than all land
// on the Raft leader; a head behind the mirror is passed over
// (keepInventory). No head (a wiped KV, or a leader that has not written
// one yet) keeps the mirror, to re-seed from.
func (m *mirror) watchSnapshot(ctx context.Context) {
	var last uint64
	query := func(q *api.QueryOptions) (uint64, bool, error) {
		q.AllowStale = true
		pair, meta, err := m.store.InventorySnapshotHead(ctx, q)
		if err != nil {
			return 0, false, err
		}
		if pair == nil || pair.ModifyIndex == last {
			return meta.LastIndex, false, nil
		}
		head, recs, err := readSnapshot(ctx, m.store, pair, &api.QueryOptions{AllowStale: true})
		if err != nil {
			return 0, false, err
		}
		if len(recs) > 0 {
			m.keepInventory(recs, head.version())
		}
		last = pair.ModifyIndex
		return meta.LastIndex, true, nil
	}
	_ = watch.Loop(ctx, 5*time.Minute, query, func() {}, func(err error) {
		m.log.Warn("watch inventory snapshot", telemetry.KeyError, err)
	})
}

// serversEvery is how often, at most, a client asks its Consul for the
// servers' addresses (at least every five minutes: the blocking query's
// wait).
const serversEvery = time.Minute

// watchOwnRecord mirrors this node's own record, on a client: one key,
// whatever the cluster's size, read with stale blocking queries. Its
// version is the record's own index; a read behind it is passed over. With
// it the client keeps the Consul servers' addresses, for peers.
func (m *mirror) watchOwnRecord(ctx context.Context) {
	var last uint64
	var asked time.Time
	query := func(q *api.QueryOptions) (uint64, bool, error) {
		q.AllowStale = true
		pair, meta, err := m.store.WatchRecord(ctx, m.self, q)
		if err != nil {
			return 0, false, err
		}
		if now := clock.Or(m.clock).Now(); now.Sub(asked) >= serversEvery && m.keepServers(ctx) {
			asked = now
		}
		if pair == nil || pair.ModifyIndex == last {
			// No record (a wiped KV, which the servers' mirrors write
			// back) or no change.
			return meta.LastIndex, false, nil
		}
		r, err := state.Decode[reconcile.Record](state.RecordKind, pair.Key, m.self, pair.Value, state.MaxRecordSize)
		if err != nil {
			return 0, false, err
		}
		ectx, cancel := context.WithTimeout(ctx, 10*time.Second)
		epoch, err := m.store.Epoch(ectx)
		cancel()
		if err != nil {
			return 0, false, err
		}
		recs := map[string]reconcile.Record{m.self: r}
		b, _ := json.MarshalIndent(recs, "", "  ")
		v := inventoryVersion{Epoch: epoch, Index: pair.ModifyIndex}
		old, mv, _ := m.readInventory()
		// Passed over: the same version, or a stale read behind it (same
		// epoch, older index). Anything else replaces the mirror, and
		// always a mirror of other records than this one (an older
		// agent's): a client's mirror never holds another's record.
		kept := v == mv || v.Epoch == mv.Epoch && v.Index < mv.Index
		if _, own := old[m.self]; len(old) != 1 || !own || !kept {
			if err := m.writeInventory(b, v); err != nil {
				m.log.Error("mirror own record", telemetry.KeyError, err)
				return meta.LastIndex, false, nil
			}
		}
		last = pair.ModifyIndex
		return meta.LastIndex, true, nil
	}
	_ = watch.Loop(ctx, 5*time.Minute, query, func() {}, func(err error) {
		m.log.Warn("watch own record", telemetry.KeyError, err)
	})
}

// keepServers asks this client's Consul for the servers' addresses (the
// Raft peers, a few whatever the cluster's size) and keeps them when they
// changed; it reports whether it had an answer. A failure keeps the last
// ones, and is asked again at the next look.
func (m *mirror) keepServers(ctx context.Context) bool {
	if m.consul == nil {
		return true
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	raft, err := m.consul.Status().PeersWithQueryOptions((&api.QueryOptions{AllowStale: true}).WithContext(ctx))
	if err != nil {
		m.log.Debug("consul servers", telemetry.KeyError, err)
		return false
	}
	var addrs []string
	for _, p := range raft {
		if host, _, err := net.SplitHostPort(p); err == nil && host != "" {
			addrs = append(addrs, host)
		}
	}
	if len(addrs) == 0 {
		return false
	}
	sort.Strings(addrs)
	b, _ := json.Marshal(addrs)
	if old, _ := readMirrorFile(m.path(mirrorServersFile)); bytes.Equal(old, b) {
		return true
	}
	if err := fsutil.WriteFileAtomic(m.path(mirrorServersFile), b, 0o600); err != nil {
		m.log.Error("mirror servers", telemetry.KeyError, err)
	}
	return true
}

// servers are the Consul servers' addresses a client last kept; none when
// it has not, or they cannot be read (a hint only: said at debug level).
func (m *mirror) servers() []string {
	b, err := readMirrorFile(m.path(mirrorServersFile))
	var addrs []string
	if err == nil && b != nil {
		err = json.Unmarshal(b, &addrs)
	}
	if err != nil {
		m.log.Debug("mirrored servers unusable", telemetry.KeyError, err)
		return nil
	}
	return addrs
}
