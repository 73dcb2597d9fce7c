package daemon

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"

	"github.com/raptiformica/raptiformica/internal/clock"
	"github.com/raptiformica/raptiformica/internal/kvschema"
	"github.com/raptiformica/raptiformica/internal/telemetry"
	"github.com/raptiformica/raptiformica/internal/watch"
	"github.com/raptiformica/raptiformica/reconcile"
)

// The inventory snapshot: what the servers mirror instead of each watching
// the whole inventory folder. Watching the folder cost every node a read of
// every record on every change: O(N²) bytes through the Consul leader per
// round of changes. The leader, which lists the folder anyway, writes the
// records as one gzipped JSON document at most once per snapshotEvery and
// only when they changed; the servers follow its small head with a stale
// blocking query (answered by whichever server they ask, not the Raft
// leader), and read the chunks it names. Clients read none of it.
//
// Size: a record is about 250 bytes of JSON and gzips to about 50 (IDs,
// addresses and times differ, field names, types and states repeat;
// TestScaleSnapshotChunks measures 47 on 5,000 records), so one chunk of
// snapshotChunk bytes holds some 7,000 records; a larger inventory is split
// over as many chunks as it needs, up to maxSnapshotChunks (several
// hundred thousand records, far beyond what one Consul cluster holds).
const (
	snapshotEvery     = 2 * time.Second
	snapshotChunk     = 384 << 10 // under Consul's 512 KiB value cap, with room
	maxSnapshotChunks = 64
	// snapshotIO bounds a snapshot's reads and writes (a few values).
	snapshotIO = 30 * time.Second
)

// snapshotHead is the snapshot's head: which version of the inventory it
// holds, and how to read and check its records.
type snapshotHead struct {
	// Epoch and Index are the version of the inventory (the KV's epoch
	// and the Raft index the leader listed it at): the mirror's version.
	Epoch uint64 `json:"epoch"`
	Index uint64 `json:"index"`
	// Records is how many records the snapshot holds, for whoever looks.
	Records int `json:"records"`
	// Chunks is how many values the gzipped document is split over, and
	// SHA256 its checksum, whole.
	Chunks int    `json:"chunks"`
	SHA256 string `json:"sha256"`
}

// version is the head's inventory version, and the folder of its chunks.
func (h snapshotHead) version() inventoryVersion {
	return inventoryVersion{Epoch: h.Epoch, Index: h.Index}
}

// encodeSnapshot makes a snapshot's head and chunks from records at v.
func encodeSnapshot(recs map[string]reconcile.Record, v inventoryVersion, chunkSize int) (snapshotHead, [][]byte, error) {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	if err := json.NewEncoder(zw).Encode(recs); err != nil {
		return snapshotHead{}, nil, err
	}
	if err := zw.Close(); err != nil {
		return snapshotHead{}, nil, err
	}
	b := buf.Bytes()
	var chunks [][]byte
	for len(b) > 0 {
		n := min(chunkSize, len(b))
		chunks = append(chunks, b[:n])
		b = b[n:]
	}
	if len(chunks) > maxSnapshotChunks {
		return snapshotHead{}, nil, fmt.Errorf("inventory of %d records is %d bytes gzipped: more than the %d chunks a snapshot may have", len(recs), buf.Len(), maxSnapshotChunks)
	}
	head := snapshotHead{Epoch: v.Epoch, Index: v.Index, Records: len(recs), Chunks: len(chunks), SHA256: checksum(buf.Bytes())}
	return head, chunks, nil
}

// decodeSnapshot checks the chunks against their head and returns the
// records; a document larger than a mirror file may be is refused.
func decodeSnapshot(head snapshotHead, chunks [][]byte) (map[string]reconcile.Record, error) {
	b := bytes.Join(chunks, nil)
	if sum := checksum(b); sum != head.SHA256 {
		return nil, fmt.Errorf("snapshot %s: checksum %s, its head says %s (chunks of another version?)", head.version(), sum, head.SHA256)
	}
	zr, err := gzip.NewReader(bytes.NewReader(b))
	if err != nil {
		return nil, fmt.Errorf("snapshot %s: %w", head.version(), err)
	}
	raw, err := io.ReadAll(io.LimitReader(zr, maxMirrorFile+1))
	if err != nil {
		return nil, fmt.Errorf("snapshot %s: %w", head.version(), err)
	}
	if len(raw) > maxMirrorFile {
		return nil, fmt.Errorf("snapshot %s: larger than the %d bytes a mirror file may be", head.version(), maxMirrorFile)
	}
	var recs map[string]reconcile.Record
	if err := json.Unmarshal(raw, &recs); err != nil {
		return nil, fmt.Errorf("snapshot %s: %w", head.version(), err)
	}
	boundToKeys(recs)
	return recs, nil
}

// boundToKeys drops the records of a copy of the inventory (a snapshot, a
// mirror) that name another machine than their key: as in KV, a record
// speaks only for the machine its key names.
func boundToKeys(recs map[string]reconcile.Record) {
	for id, r := range recs {
		if r.ID != id {
			delete(recs, id)
		}
	}
}

// readSnapshot reads the snapshot a head names, with q's consistency.
func readSnapshot(ctx context.Context, store *kvschema.Store, pair *api.KVPair, q *api.QueryOptions) (snapshotHead, map[string]reconcile.Record, error) {
	ctx, cancel := context.WithTimeout(ctx, snapshotIO)
	defer cancel()
	var head snapshotHead
	if err := json.Unmarshal(pair.Value, &head); err != nil {
		return head, nil, fmt.Errorf("%s: %w", kvschema.InventorySnapshot, err)
	}
	if head.Chunks < 1 || head.Chunks > maxSnapshotChunks {
		return head, nil, fmt.Errorf("%s: %d chunks, want 1 to %d", kvschema.InventorySnapshot, head.Chunks, maxSnapshotChunks)
	}
	chunks := make([][]byte, head.Chunks)
	for n := range chunks {
		c, err := store.InventorySnapshotChunk(ctx, head.version().String(), n, q)
		if err != nil {
			return head, nil, err
		}
		if c == nil {
			// A server behind the head's, or a version replaced
			// meanwhile: the next head will do.
			return head, nil, fmt.Errorf("snapshot %s: chunk %d of %d missing", head.version(), n, head.Chunks)
		}
		chunks[n] = c
	}
	recs, err := decodeSnapshot(head, chunks)
	return head, recs, err
}

// snapshotter writes the inventory snapshot while this node leads: on
// every change of the inventory, at most once per every. It lists the
// inventory with blocking queries as the control loop does, on the one
// node that leads.
type snapshotter struct {
	store     *kvschema.Store
	inventory *reconcile.Inventory
	every     time.Duration
	chunkSize int
	clock     clock.Clock
	log       hclog.Logger
}

// Run writes snapshots until ctx ends, then returns nil. Failed reads and
// writes are logged and retried.
func (s *snapshotter) Run(ctx context.Context) error {
	var written inventoryVersion
	inventoryWatch := watch.Watch{Wait: 5 * time.Minute, Clock: s.clock,
		Retry: clock.Backoff{Initial: time.Second, Max: 30 * time.Second},
		OnError: func(err error, failures int) {
			s.log.Warn("inventory snapshot", telemetry.KeyError, err, telemetry.KeyAttempt, failures)
		}}
	_ = inventoryWatch.Run(ctx, func(q *api.QueryOptions) (uint64, bool, error) {
		recs, next, err := s.inventory.List(ctx, q)
		if err == nil {
			err = s.write(ctx, recs, next, &written)
		}
		return next, false, err
	}, nil)
	return nil
}

// write stores the records at index as the snapshot, unless that version
// is already the stored one (written); after a write it waits out the
// rate bound, so that the next list takes in every change made meanwhile.
func (s *snapshotter) write(ctx context.Context, recs map[string]reconcile.Record, index uint64, written *inventoryVersion) error {
	if len(recs) == 0 {
		// An empty inventory is a wiped KV, which the leader re-seeds:
		// the servers keep the mirror they have.
		return nil
	}
	ectx, cancel := context.WithTimeout(ctx, snapshotIO)
	epoch, err := s.store.Epoch(ectx)
	cancel()
	if err != nil {
		return err
	}
	v := inventoryVersion{Epoch: epoch, Index: index}
	if v == *written {
		return nil
	}
	if *written == (inventoryVersion{}) {
		// A new leader: the last one may have stored this version.
		hctx, cancel := context.WithTimeout(ctx, snapshotIO)
		pair, _, err := s.store.InventorySnapshotHead(hctx, nil)
		cancel()
		if err == nil && pair != nil {
			var h snapshotHead
			if json.Unmarshal(pair.Value, &h) == nil && h.version() == v {
				*written = v
				return nil
			}
		}
	}
	head, chunks, err := encodeSnapshot(recs, v, s.chunkSize)
	if err != nil {
		return err
	}
	hb, _ := json.Marshal(head)
	wctx, cancel := context.WithTimeout(ctx, snapshotIO)
	defer cancel()
	if err := s.store.PutInventorySnapshot(wctx, v.String(), hb, chunks); err != nil {
		return err
	}
	*written = v
	s.log.Debug("inventory snapshot written", telemetry.KeyVersion, v, telemetry.KeyRecords, len(recs), telemetry.KeyChunks, len(chunks))
	_ = clock.Sleep(ctx, s.clock, s.every) // ends early only with ctx
	return nil
}
