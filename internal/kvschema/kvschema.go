// Package kvschema is everything raptiformica keeps in Consul's KV: the
// contract that lets any node, and a new leader above all, resume from what
// the cluster holds. No other package spells a key; the ACL policies are
// written against this map.
//
//	raptiformica/
//	  platform             the description's source; Flags carry its version,
//	                       raised by one on every apply (check-and-set)
//	  modules              the modules added (`module add`), in order (JSON: name,
//	                       file, source); written by check-and-set, by a
//	                       token that may write the description (the
//	                       operator's), read by every node; [] when none,
//	                       so that a missing key means a KV that lost it
//	  modules.watch        empty, kept by the leader so that a watch of the
//	                       modules' prefix wakes only for them (Modules)
//	  inventory/<id>       a machine's record (JSON), written by the leader by
//	                       check-and-set before it acts, so that a new leader
//	                       neither forgets nor repeats an action
//	  inventory-snapshot   the inventory in one read, for the servers' mirrors:
//	                       a head (JSON: version, chunk count, checksum) the
//	                       leader rewrites at a bounded rate when the
//	                       inventory changed; clients never read it
//	  inventory-snapshot-chunks/<version>/<n>
//	                       the head's gzipped records, in values under
//	                       Consul's 512 KiB cap; written before the head that
//	                       names them, older versions deleted after it
//	  leader               the leader lock (a session lock; value: machine ID)
//	  status               the leader's last pass (JSON), for status and the page
//	  epoch                times the KV was re-created from a node's mirror:
//	                       orders inventory copies across fresh Consuls
//	  gossip-key           the gossip key given to new machines (set by the
//	                       seed, replaced by `rotate gossip`)
//	  mesh/secret          the overlay's link secret: what every node listens
//	                       with (set by the seed, replaced by `rotate mesh`)
//	  mesh/secret-next     during a mesh rotation, the secret being brought in
//	  mesh/secret-previous during a mesh rotation, the secret being retired;
//	                       nodes dial with every secret of the three they find
//	                       (the prefix mesh/secret covers them for ACL rules)
//	  mesh/nodes/<id>      how the others reach a member over the overlay (JSON)
//	  ssh-pool/<backend>/  an ssh backend's claims: <host:port> -> machine (JSON)
//	  hostkeys/<host:port> SSH host keys trusted on first use (authorized_keys)
//	  offers/<id>          the backends a machine can run, and the machines it
//	                       holds on those it ran work orders on (JSON), as its
//	                       own agent found them
//	  provisioned/<id>     how a machine's provisioners ran on it (JSON)
//	  join-tokens/<id>     a join token's record (JSON: type, uses left,
//	                       expiry, the SHA-256 of its secret, never the
//	                       secret), spent by check-and-set; no read-only
//	                       or client token reads it
//
//	raptiformica-work/<host>/<id>
//	                       a work order: the spawn or destroy of machine <id>
//	                       the leader gave the machine <host>, and its outcome
//	                       (JSON); a new spawn's carries the new machine's
//	                       node config, so it lives outside raptiformica/,
//	                       where only <host>'s own policy and the servers'
//	                       token reach it
//
// Reads take a context, so that a node cut off from the servers gives up;
// the blocking reads that watches make take the caller's QueryOptions
// (WaitIndex, consistency) as well.
package kvschema

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/hashicorp/consul/api"
)

// The keys and folders; see the package doc for what each holds. Each
// has a doc comment of its own: docs/kv.md is generated from them
// (go generate), and a key without one fails the generator.
const (
	// Prefix is the cluster's folder: every key but the work orders.
	Prefix = "raptiformica/"
	// Platform is the description's source; the pair's Flags carry its
	// version, raised by one on every apply (see PutPlatform).
	Platform = Prefix + "platform"
	// Modules is the modules added (`module add`), in order, as one JSON
	// list (name, file, source); [] when none, so that a missing key
	// means a KV that lost it.
	Modules = Prefix + "modules"
	// Inventory holds one record per machine (inventory/<machine id>,
	// JSON), written by the leader by check-and-set before it acts.
	Inventory = Prefix + "inventory/"
	// Leader is the leader lock: a session lock whose value is the
	// holder's machine ID.
	Leader = Prefix + "leader"
	// InventorySnapshot and InventorySnapshotChunks hold the inventory
	// in one read; see PutInventorySnapshot.
	InventorySnapshot = Prefix + "inventory-snapshot"
	// InventorySnapshotChunks holds the snapshot's gzipped records
	// (<version>/<n>), each under Consul's value cap.
	InventorySnapshotChunks = Prefix + "inventory-snapshot-chunks/"
	// Status is the leader's last pass (JSON), for `status` and the page.
	Status = Prefix + "status"
	// Epoch counts the times the KV was re-created from a node's mirror:
	// it orders inventory copies across fresh Consuls.
	Epoch = Prefix + "epoch"
	// GossipKey is the gossip key new machines are given: set by the
	// seed, replaced by `rotate gossip`.
	GossipKey = Prefix + "gossip-key"
	// MeshSecret is the overlay's link secret every node listens with:
	// set by the seed, replaced by `rotate mesh`. As a prefix it covers
	// the rotation's two keys too, for ACL rules.
	MeshSecret = Prefix + "mesh/secret"
	// MeshNodes holds each member's overlay entry (mesh/nodes/<machine
	// id>, JSON): how the others reach it.
	MeshNodes = Prefix + "mesh/nodes/"
	// SSHPool holds each ssh backend's claims (ssh-pool/<backend>/<host:port>,
	// JSON): which host runs which machine.
	SSHPool = Prefix + "ssh-pool/"
	// HostKeys holds the SSH host keys trusted on first use, one per
	// host:port, in authorized_keys form.
	HostKeys = Prefix + "hostkeys/"
	// JoinTokens holds each join token's record (join-tokens/<token id>,
	// JSON): its type, uses left, expiry and the SHA-256 of its secret,
	// never the secret. Read-only and client tokens are denied it.
	JoinTokens = Prefix + "join-tokens/"
	// Scale holds, per machine type that scales on a signal
	// (scale/<type>, JSON), the leader's last reading and decision and
	// its cooldowns, so that a new leader honours them. Only servers
	// write it.
	Scale = Prefix + "scale/"
	// Offers holds, per machine, which of the description's backends
	// that machine can run (offers/<machine id>), as its agent found.
	Offers = Prefix + "offers/"
	// Provisioned holds, per machine, the outcome of its provisioners
	// (provisioned/<machine id>), as its agent ran them on itself.
	Provisioned = Prefix + "provisioned/"
	// Work holds the work orders the leader gives the members that run
	// its actions (<host>/<machine id>). It is outside Prefix on purpose:
	// orders carry new machines' credentials, and every role that reads
	// the cluster's folder would read them; here only the host's own
	// policy and the servers' token reach them, with no denial to keep
	// up to date.
	Work = "raptiformica-work/"
)

// MeshSecretNext and MeshSecretPrevious exist only while a mesh rotation
// runs; see MeshSecrets.
const (
	// MeshSecretNext is, during a mesh rotation, the secret being
	// brought in.
	MeshSecretNext = MeshSecret + "-next"
	// MeshSecretPrevious is, during a mesh rotation, the secret being
	// retired.
	MeshSecretPrevious = MeshSecret + "-previous"
)

// PlatformSource names the stored description in messages and in mirrors,
// as a file name would.
const PlatformSource = "consul:" + Platform

// Store reads and writes the cluster's KV along the layout above.
type Store struct {
	kv *api.KV
}

// New returns the Store of the cluster c talks to.
func New(c *api.Client) *Store { return &Store{kv: c.KV()} }

func query(ctx context.Context, q *api.QueryOptions) *api.QueryOptions {
	if q == nil {
		q = &api.QueryOptions{}
	}
	return q.WithContext(ctx)
}

func write(ctx context.Context) *api.WriteOptions { return (&api.WriteOptions{}).WithContext(ctx) }

// segment makes a host:port one KV path segment: IPv6 brackets go and a
// slash cannot start a folder.
func segment(s string) string {
	return strings.NewReplacer("/", "_", "[", "", "]", "").Replace(s)
}

// Platform reads the stored description; the pair is nil when there is none.
func (s *Store) Platform(ctx context.Context, q *api.QueryOptions) (*api.KVPair, *api.QueryMeta, error) {
	return s.kv.Get(Platform, query(ctx, q))
}

// PutPlatform stores a description's source as the next version: the pair's
// Flags carry a counter that every apply raises by one (by check-and-set, so
// two concurrent applies cannot share a version), and that mirrors keep, so
// that no node replaces its copy with an older one.
func (s *Store) PutPlatform(ctx context.Context, src []byte) (uint64, error) {
	for range 10 {
		cur, _, err := s.Platform(ctx, &api.QueryOptions{RequireConsistent: true})
		if err != nil {
			return 0, err
		}
		p := &api.KVPair{Key: Platform, Value: src, Flags: 1}
		if cur != nil {
			p.Flags, p.ModifyIndex = cur.Flags+1, cur.ModifyIndex
		}
		ok, _, err := s.kv.CAS(p, write(ctx))
		if err != nil {
			return 0, err
		}
		if ok {
			return p.Flags, nil
		}
	}
	return 0, errors.New("the description kept changing underneath: try again")
}

// SeedPlatform stores a description at version only when the KV holds none:
// a node re-seeding an empty KV from its mirror never overwrites an apply.
func (s *Store) SeedPlatform(ctx context.Context, src []byte, version uint64) (bool, error) {
	ok, _, err := s.kv.CAS(&api.KVPair{Key: Platform, Value: src, Flags: version}, write(ctx))
	return ok, err
}

// ModulesSource names the stored modules in messages and in mirrors.
const ModulesSource = "consul:" + Modules

// ModulesAnchor is a key beside the modules that the leader keeps (see
// AnchorModules); it holds nothing.
const ModulesAnchor = Modules + ".watch"

// Modules reads the stored modules; the pair is nil when there are none.
// It lists the modules' prefix, which holds the anchor too: Consul answers
// a blocking read of a missing key with the whole KV's index and ends its
// wait on any write anywhere in the KV, so every member's watch of a
// cluster that never added a module woke on each of the leader's status
// writes (ten consistent reads a second at rest at 103 machines). A
// listed prefix that holds a key wakes only for its own keys.
func (s *Store) Modules(ctx context.Context, q *api.QueryOptions) (*api.KVPair, *api.QueryMeta, error) {
	pairs, meta, err := s.kv.List(Modules, query(ctx, q))
	if err != nil {
		return nil, meta, err
	}
	for _, p := range pairs {
		if p.Key == Modules {
			return p, meta, nil
		}
	}
	return nil, meta, nil
}

// AnchorModules writes the modules' anchor unless it is there (see
// Modules). It is never the modules themselves: a KV that lost its
// modules still reads as having none, and is seeded again from a mirror.
func (s *Store) AnchorModules(ctx context.Context) error {
	_, _, err := s.kv.CAS(&api.KVPair{Key: ModulesAnchor, ModifyIndex: 0}, write(ctx))
	return err
}

// CASModules replaces the stored modules if they are still at index (0:
// only if there are none), and reports whether it did.
func (s *Store) CASModules(ctx context.Context, value []byte, index uint64) (bool, error) {
	ok, _, err := s.kv.CAS(&api.KVPair{Key: Modules, Value: value, ModifyIndex: index}, write(ctx))
	return ok, err
}

// Leader returns the machine ID holding the leader lock, or "" when the
// lock is free or cannot be read before ctx ends.
func (s *Store) Leader(ctx context.Context) string {
	pair, _, err := s.kv.Get(Leader, query(ctx, nil))
	if err != nil || pair == nil || pair.Session == "" {
		return ""
	}
	return string(pair.Value)
}

// Status reads the leader's last published pass; nil when there is none.
func (s *Store) Status(ctx context.Context) ([]byte, error) {
	pair, _, err := s.kv.Get(Status, query(ctx, nil))
	if err != nil || pair == nil {
		return nil, err
	}
	return pair.Value, nil
}

// PutStatus publishes the leader's pass.
func (s *Store) PutStatus(ctx context.Context, b []byte) error {
	_, err := s.kv.Put(&api.KVPair{Key: Status, Value: b}, write(ctx))
	return err
}

// Epoch reads the KV's epoch, 0 when it has none.
func (s *Store) Epoch(ctx context.Context) (uint64, error) {
	pair, _, err := s.kv.Get(Epoch, query(ctx, nil))
	if err != nil || pair == nil {
		return 0, err
	}
	n, err := strconv.ParseUint(strings.TrimSpace(string(pair.Value)), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", Epoch, err)
	}
	return n, nil
}

// InitEpoch sets the epoch unless one is set: a re-seed cut short and run
// again belongs to the same epoch.
func (s *Store) InitEpoch(ctx context.Context, epoch uint64) error {
	_, _, err := s.kv.CAS(&api.KVPair{Key: Epoch, Value: []byte(strconv.FormatUint(epoch, 10))}, write(ctx))
	return err
}

// GossipKey reads the gossip key new machines are given; "" when none.
func (s *Store) GossipKey(ctx context.Context) (string, error) {
	return s.value(ctx, GossipKey, nil)
}

// InitGossipKey stores key unless a key is stored.
func (s *Store) InitGossipKey(ctx context.Context, key string) error {
	_, _, err := s.kv.CAS(&api.KVPair{Key: GossipKey, Value: []byte(key)}, write(ctx))
	return err
}

// PutGossipKey replaces the gossip key new machines are given: `rotate
// gossip` does, once every member holds the new key.
func (s *Store) PutGossipKey(ctx context.Context, key string) error {
	_, err := s.kv.Put(&api.KVPair{Key: GossipKey, Value: []byte(key)}, write(ctx))
	return err
}

// MeshSecret reads the overlay's link secret; "" when none.
func (s *Store) MeshSecret(ctx context.Context, q *api.QueryOptions) (string, error) {
	return s.value(ctx, MeshSecret, q)
}

// InitMeshSecret stores secret unless a secret is stored.
func (s *Store) InitMeshSecret(ctx context.Context, secret string) error {
	return s.InitMeshSecrets(ctx, MeshSecrets{Current: secret})
}

// InitMeshSecrets stores each secret of m that is set unless that key is
// stored: a node re-seeding an emptied KV in the middle of a rotation puts
// back the step its own links are at.
func (s *Store) InitMeshSecrets(ctx context.Context, m MeshSecrets) error {
	for key, v := range map[string]string{MeshSecret: m.Current, MeshSecretNext: m.Next, MeshSecretPrevious: m.Previous} {
		if v == "" {
			continue
		}
		if _, _, err := s.kv.CAS(&api.KVPair{Key: key, Value: []byte(v)}, write(ctx)); err != nil {
			return err
		}
	}
	return nil
}

// MeshSecrets is where a mesh rotation stands: the secret nodes listen
// with, and the one being brought in (Next) or retired (Previous), with
// which nodes dial too. At rest only Current is set. A rotation moves
//
//	{Current: S} ─▶ {Current: S, Next: N} ─▶ {Current: N, Previous: S} ─▶ {Current: N}
//
// each step taken once every member has applied the one before it.
type MeshSecrets struct {
	Current, Next, Previous string

	// The indexes the rotation's check-and-set writes are made against.
	currentIndex, nextIndex, previousIndex uint64
}

// Newest is the secret a new machine is given: the one the rotation
// brings in, else the current one. A node with it alone is dialled by
// every member at every step of a rotation.
func (m MeshSecrets) Newest() string {
	if m.Next != "" {
		return m.Next
	}
	return m.Current
}

// MeshSecrets reads the mesh secrets in one consistent list.
func (s *Store) MeshSecrets(ctx context.Context, q *api.QueryOptions) (MeshSecrets, error) {
	pairs, _, err := s.kv.List(MeshSecret, query(ctx, q))
	if err != nil {
		return MeshSecrets{}, err
	}
	return meshSecretsOf(pairs), nil
}

// meshSecretsOf picks the mesh secrets out of pairs (other keys are
// ignored).
func meshSecretsOf(pairs api.KVPairs) MeshSecrets {
	var m MeshSecrets
	for _, p := range pairs {
		switch p.Key {
		case MeshSecret:
			m.Current, m.currentIndex = string(p.Value), p.ModifyIndex
		case MeshSecretNext:
			m.Next, m.nextIndex = string(p.Value), p.ModifyIndex
		case MeshSecretPrevious:
			m.Previous, m.previousIndex = string(p.Value), p.ModifyIndex
		}
	}
	return m
}

// Mesh reads the overlay's folder in one list: every member's entry and
// the secrets, so that a node's watch wakes for a change of either.
func (s *Store) Mesh(ctx context.Context, q *api.QueryOptions) (api.KVPairs, MeshSecrets, *api.QueryMeta, error) {
	pairs, meta, err := s.kv.List(Prefix+"mesh/", query(ctx, q))
	if err != nil {
		return nil, MeshSecrets{}, nil, err
	}
	var nodes api.KVPairs
	for _, p := range pairs {
		if strings.HasPrefix(p.Key, MeshNodes) {
			nodes = append(nodes, p)
		}
	}
	return nodes, meshSecretsOf(pairs), meta, nil
}

// ErrMeshMoved is returned by the rotation's writes when the secrets
// changed since they were read: another rotation runs.
var ErrMeshMoved = errors.New("the mesh secrets changed underneath (is another `rotate mesh` running?)")

// StartMeshRotation brings next in beside the current secret, if the
// secrets are still cur.
func (s *Store) StartMeshRotation(ctx context.Context, cur MeshSecrets, next string) error {
	if cur.Next != "" || cur.Previous != "" || cur.Current == "" {
		return fmt.Errorf("a mesh rotation can start only from rest: %w", ErrMeshMoved)
	}
	return s.meshTxn(ctx, api.KVTxnOps{
		{Verb: api.KVCheckIndex, Key: MeshSecret, Index: cur.currentIndex},
		{Verb: api.KVCheckNotExists, Key: MeshSecretPrevious},
		{Verb: api.KVCAS, Key: MeshSecretNext, Value: []byte(next), Index: 0},
	})
}

// PromoteMeshSecret makes the secret being brought in the current one and
// the current one the previous, in one transaction, if the secrets are
// still cur.
func (s *Store) PromoteMeshSecret(ctx context.Context, cur MeshSecrets) error {
	if cur.Next == "" {
		return fmt.Errorf("no secret to promote: %w", ErrMeshMoved)
	}
	return s.meshTxn(ctx, api.KVTxnOps{
		{Verb: api.KVCAS, Key: MeshSecret, Value: []byte(cur.Next), Index: cur.currentIndex},
		{Verb: api.KVDeleteCAS, Key: MeshSecretNext, Index: cur.nextIndex},
		{Verb: api.KVSet, Key: MeshSecretPrevious, Value: []byte(cur.Current)},
	})
}

// FinishMeshRotation retires the previous secret, if the secrets are still
// cur.
func (s *Store) FinishMeshRotation(ctx context.Context, cur MeshSecrets) error {
	if cur.Previous == "" {
		return fmt.Errorf("no secret to retire: %w", ErrMeshMoved)
	}
	return s.meshTxn(ctx, api.KVTxnOps{
		{Verb: api.KVCheckIndex, Key: MeshSecret, Index: cur.currentIndex},
		{Verb: api.KVDeleteCAS, Key: MeshSecretPrevious, Index: cur.previousIndex},
	})
}

func (s *Store) meshTxn(ctx context.Context, ops api.KVTxnOps) error {
	ok, resp, _, err := s.kv.Txn(ops, query(ctx, nil))
	if err != nil {
		return err
	}
	if !ok {
		var why []string
		if resp != nil {
			for _, e := range resp.Errors {
				why = append(why, e.What)
			}
		}
		return fmt.Errorf("%w: %s", ErrMeshMoved, strings.Join(why, "; "))
	}
	return nil
}

func (s *Store) value(ctx context.Context, key string, q *api.QueryOptions) (string, error) {
	pair, _, err := s.kv.Get(key, query(ctx, q))
	if err != nil || pair == nil {
		return "", err
	}
	return string(pair.Value), nil
}

// Offers lists every machine's offer of backends, by machine ID, each with
// the index it was written at: the Raft order in which offers and records
// were written, which no machine's clock can disturb.
func (s *Store) Offers(ctx context.Context, q *api.QueryOptions) (map[string]Entry, uint64, error) {
	return (&Folder{kv: s.kv, prefix: Offers}).Entries(ctx, q)
}

// PutOffer writes a machine's offer of backends.
// It returns the index the offer was written at, which orders it after or
// before the records (one transaction: a write and its index at once).
func (s *Store) PutOffer(ctx context.Context, machineID string, b []byte) (uint64, error) {
	ok, resp, _, err := s.kv.Txn(api.KVTxnOps{{Verb: api.KVSet, Key: Offers + machineID, Value: b}}, query(ctx, nil))
	if err != nil {
		return 0, err
	}
	if !ok || resp == nil || len(resp.Results) != 1 {
		return 0, fmt.Errorf("write the offer of %s: the transaction was refused", machineID)
	}
	return resp.Results[0].ModifyIndex, nil
}

// ProvisionedRecords lists every machine's provisioning record, by
// machine ID.
func (s *Store) ProvisionedRecords(ctx context.Context, q *api.QueryOptions) (map[string][]byte, uint64, error) {
	pairs, meta, err := s.kv.List(Provisioned, query(ctx, q))
	if err != nil {
		return nil, 0, err
	}
	out := make(map[string][]byte, len(pairs))
	for _, p := range pairs {
		out[strings.TrimPrefix(p.Key, Provisioned)] = p.Value
	}
	return out, meta.LastIndex, nil
}

// PutProvisioned writes a machine's provisioning record.
func (s *Store) PutProvisioned(ctx context.Context, machineID string, b []byte) error {
	_, err := s.kv.Put(&api.KVPair{Key: Provisioned + machineID, Value: b}, write(ctx))
	return err
}

// WatchRecord reads one machine's record with q, for a blocking query on
// it alone: what a client's mirror follows instead of the whole folder.
func (s *Store) WatchRecord(ctx context.Context, machineID string, q *api.QueryOptions) (*api.KVPair, *api.QueryMeta, error) {
	return s.kv.Get(Inventory+machineID, query(ctx, q))
}

// MaxValueBytes is the largest value Consul's KV takes (kv_max_value_size).
const MaxValueBytes = 512 << 10

// InventorySnapshotHead reads the inventory snapshot's head with q (a
// blocking, stale query for the servers' mirrors); nil when there is none.
func (s *Store) InventorySnapshotHead(ctx context.Context, q *api.QueryOptions) (*api.KVPair, *api.QueryMeta, error) {
	return s.kv.Get(InventorySnapshot, query(ctx, q))
}

// InventorySnapshotChunk reads chunk n of the snapshot of version with q;
// nil when there is none (a read from a server behind the head's, or a
// version deleted since).
func (s *Store) InventorySnapshotChunk(ctx context.Context, version string, n int, q *api.QueryOptions) ([]byte, error) {
	p, _, err := s.kv.Get(snapshotChunk(version, n), query(ctx, q))
	if err != nil || p == nil {
		return nil, err
	}
	return p.Value, nil
}

func snapshotChunk(version string, n int) string {
	return InventorySnapshotChunks + version + "/" + strconv.Itoa(n)
}

// PutInventorySnapshot stores a snapshot of version (one path segment):
// its chunks first, then the head that names them, so that a reader that
// sees the head finds them; then it deletes the chunks of every other
// version. A reader still on an older head meets its chunks gone and reads
// the new head. Each chunk must be at most MaxValueBytes.
func (s *Store) PutInventorySnapshot(ctx context.Context, version string, head []byte, chunks [][]byte) error {
	if version == "" || strings.Contains(version, "/") {
		return fmt.Errorf("bad snapshot version %q", version)
	}
	for n, c := range chunks {
		if len(c) > MaxValueBytes {
			return fmt.Errorf("snapshot chunk %d: %d bytes, more than Consul's %d", n, len(c), MaxValueBytes)
		}
		if _, err := s.kv.Put(&api.KVPair{Key: snapshotChunk(version, n), Value: c}, write(ctx)); err != nil {
			return fmt.Errorf("snapshot chunk %d: %w", n, err)
		}
	}
	if _, err := s.kv.Put(&api.KVPair{Key: InventorySnapshot, Value: head}, write(ctx)); err != nil {
		return fmt.Errorf("snapshot head: %w", err)
	}
	folders, _, err := s.kv.Keys(InventorySnapshotChunks, "/", query(ctx, nil))
	if err != nil {
		return fmt.Errorf("list snapshot versions: %w", err)
	}
	for _, f := range folders {
		if f == InventorySnapshotChunks+version+"/" || !strings.HasSuffix(f, "/") {
			continue
		}
		if _, err := s.kv.DeleteTree(f, write(ctx)); err != nil {
			return fmt.Errorf("delete snapshot %s: %w", f, err)
		}
	}
	return nil
}

// CASRecord writes a machine's record if its index is still index (0: only
// if there is none) and reports whether it did.
func (s *Store) CASRecord(ctx context.Context, machineID string, b []byte, index uint64) (bool, error) {
	if machineID == "" || strings.Contains(machineID, "/") {
		return false, fmt.Errorf("bad machine id %q", machineID)
	}
	ok, _, err := s.kv.CAS(&api.KVPair{Key: Inventory + machineID, Value: b, ModifyIndex: index}, write(ctx))
	return ok, err
}

// MaxTxnOps is how many operations Consul takes in one transaction.
const MaxTxnOps = 64

// RecordWrite is one record of a CASRecords transaction.
type RecordWrite struct {
	MachineID string
	Value     []byte
	// Index is the record's ModifyIndex it was read at (0: only if absent).
	Index uint64
}

// CASRecords writes several machines' records in one transaction, each
// only if its index still matches: all or none. It returns the new
// ModifyIndex of each, in order; ok is false when any index had moved.
func (s *Store) CASRecords(ctx context.Context, ws []RecordWrite) (indexes []uint64, ok bool, err error) {
	if len(ws) > MaxTxnOps {
		return nil, false, fmt.Errorf("%d records in one transaction, more than Consul's %d", len(ws), MaxTxnOps)
	}
	ops := make(api.KVTxnOps, 0, len(ws))
	for _, w := range ws {
		if w.MachineID == "" || strings.Contains(w.MachineID, "/") {
			return nil, false, fmt.Errorf("bad machine id %q", w.MachineID)
		}
		ops = append(ops, &api.KVTxnOp{Verb: api.KVCAS, Key: Inventory + w.MachineID, Value: w.Value, Index: w.Index})
	}
	ok, resp, _, err := s.kv.Txn(ops, query(ctx, nil))
	if err != nil || !ok {
		return nil, false, err
	}
	byKey := map[string]uint64{}
	for _, r := range resp.Results {
		byKey[r.Key] = r.ModifyIndex
	}
	for _, w := range ws {
		indexes = append(indexes, byKey[Inventory+w.MachineID])
	}
	return indexes, true, nil
}

// PoolClaims is the folder in which the ssh backend named backend records
// which host runs which machine.
func (s *Store) PoolClaims(backend string) *Folder {
	return &Folder{kv: s.kv, prefix: SSHPool + backend + "/"}
}

// TrustedHostKeys is the folder of SSH host keys trusted on first use, one
// per host:port.
func (s *Store) TrustedHostKeys() *Folder {
	return &Folder{kv: s.kv, prefix: HostKeys}
}

// Work is the folder of the work orders given to the machine host, one per
// machine it is to spawn or destroy.
func (s *Store) Work(host string) *Folder {
	return &Folder{kv: s.kv, prefix: Work + host + "/"}
}

// DeleteWork removes a removed machine's folder of work orders, its anchor
// included: a machine that is gone runs no order, and a thousand machines
// replaced over time would leave a thousand anchors.
func (s *Store) DeleteWork(ctx context.Context, host string) error {
	if host == "" || strings.Contains(host, "/") {
		return fmt.Errorf("delete work orders: bad machine id %q", host)
	}
	_, err := s.kv.DeleteTree(Work+host+"/", write(ctx))
	return err
}

// JoinTokens is the folder of join tokens' records, one per token ID.
func (s *Store) JoinTokens() *Folder {
	return &Folder{kv: s.kv, prefix: JoinTokens}
}

// Folder is one folder of the KV, handed to code that keeps its own entries
// there (a backend's claims, the host keys) without seeing the rest: what a
// backends.Store asks for. Keys are relative to the folder; a host:port is
// made one segment.
type Folder struct {
	kv     *api.KV
	prefix string
}

// List returns the folder's values by key.
func (f *Folder) List(ctx context.Context) (map[string][]byte, error) {
	pairs, _, err := f.kv.List(f.prefix, query(ctx, nil))
	if err != nil {
		return nil, err
	}
	out := make(map[string][]byte, len(pairs))
	for _, p := range pairs {
		out[strings.TrimPrefix(p.Key, f.prefix)] = p.Value
	}
	return out, nil
}

// Entry is a value and the index it was written at.
type Entry struct {
	Value []byte
	Index uint64
}

// Entries returns the folder's values by key, with their indexes, and the
// folder's index: a blocking query when q has a WaitIndex.
func (f *Folder) Entries(ctx context.Context, q *api.QueryOptions) (map[string]Entry, uint64, error) {
	pairs, meta, err := f.kv.List(f.prefix, query(ctx, q))
	if err != nil {
		return nil, 0, err
	}
	out := make(map[string]Entry, len(pairs))
	for _, p := range pairs {
		out[strings.TrimPrefix(p.Key, f.prefix)] = Entry{Value: p.Value, Index: p.ModifyIndex}
	}
	return out, meta.LastIndex, nil
}

// Get returns the value at key and the index to check-and-set it against;
// index 0 when there is none.
func (f *Folder) Get(ctx context.Context, key string) (value []byte, index uint64, err error) {
	p, _, err := f.kv.Get(f.prefix+segment(key), query(ctx, nil))
	if err != nil || p == nil {
		return nil, 0, err
	}
	return p.Value, p.ModifyIndex, nil
}

// Wait returns the value at key (nil when there is none), its index, and
// the index to wait from next: a blocking query when q has a WaitIndex.
func (f *Folder) Wait(ctx context.Context, key string, q *api.QueryOptions) (value []byte, index, next uint64, err error) {
	p, meta, err := f.kv.Get(f.prefix+segment(key), query(ctx, q))
	if err != nil {
		return nil, 0, 0, err
	}
	if p != nil {
		value, index = p.Value, p.ModifyIndex
	}
	return value, index, meta.LastIndex, nil
}

// CAS writes value at key if its index is still index (0: only if there is
// none) and reports whether it did.
func (f *Folder) CAS(ctx context.Context, key string, value []byte, index uint64) (bool, error) {
	ok, _, err := f.kv.CAS(&api.KVPair{Key: f.prefix + segment(key), Value: value, ModifyIndex: index}, write(ctx))
	return ok, err
}

// DeleteCAS removes key if its index is still index, and reports whether
// it did.
func (f *Folder) DeleteCAS(ctx context.Context, key string, index uint64) (bool, error) {
	ok, _, err := f.kv.DeleteCAS(&api.KVPair{Key: f.prefix + segment(key), ModifyIndex: index}, write(ctx))
	return ok, err
}

// Put writes value at key whatever is there.
func (f *Folder) Put(ctx context.Context, key string, value []byte) error {
	_, err := f.kv.Put(&api.KVPair{Key: f.prefix + segment(key), Value: value}, write(ctx))
	return err
}

// Delete removes key, whatever its index.
func (f *Folder) Delete(ctx context.Context, key string) error {
	_, err := f.kv.Delete(f.prefix+segment(key), write(ctx))
	return err
}

// Folder returns the folder at prefix (one of the per-machine folders
// above), for package state's typed folders.
func (s *Store) Folder(prefix string) *Folder {
	return &Folder{kv: s.kv, prefix: prefix}
}

// Prefix is the folder's whole key prefix, ending in a slash.
func (f *Folder) Prefix() string { return f.prefix }

// ForgetMachine removes every key a removed machine left, in one
// transaction: its offer, its provisioning record, its mesh entry, its
// own folder of work orders, and the order for it in host's folder (none
// when host is empty). Its inventory record goes first, by its remover's
// check-and-set: once that is gone, nothing reads these keys as a
// machine's, and a leader that dies between the two leaves only keys the
// next removal of nothing, the mesh's prune or this sweep, clears.
func (s *Store) ForgetMachine(ctx context.Context, id, host string) error {
	if id == "" || strings.Contains(id, "/") || strings.Contains(host, "/") {
		return fmt.Errorf("forget machine: bad machine id %q (host %q)", id, host)
	}
	ops := api.KVTxnOps{
		{Verb: api.KVDelete, Key: Offers + id},
		{Verb: api.KVDelete, Key: Provisioned + id},
		{Verb: api.KVDelete, Key: MeshNodes + id},
		{Verb: api.KVDeleteTree, Key: Work + id + "/"},
	}
	if host != "" && host != id {
		ops = append(ops, &api.KVTxnOp{Verb: api.KVDelete, Key: Work + host + "/" + id})
	}
	ok, resp, _, err := s.kv.Txn(ops, query(ctx, nil))
	if err != nil {
		return fmt.Errorf("forget machine %s: %w", id, err)
	}
	if !ok {
		var why []string
		if resp != nil {
			for _, e := range resp.Errors {
				why = append(why, e.What)
			}
		}
		return fmt.Errorf("forget machine %s: %s", id, strings.Join(why, "; "))
	}
	return nil
}
