package daemon

import (
	"context"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"

	"github.com/raptiformica/raptiformica/internal/telemetry"
)

// forwardKey follows one KV key (the description, the modules) for a
// watch that reads it stale, and takes only answers that move forward from
// the one last applied.
//
// A stale read is answered by whichever server the node's Consul asks, so
// that N members' watches spread over the servers instead of all being held
// on the Raft leader; but a follower behind the leader answers with what it
// holds, and after a failed query the watch starts again at index 0 and any
// server answers at once. The order is the key's ModifyIndex: it is the
// same on every server of one Raft history, where the query's LastIndex of
// a missing key is the answering server's own. An answer ahead of the one
// applied is newer, whoever gave it (a server is never ahead of the
// leader). One behind it, or without the key, is either a server behind
// the leader, passed over, or a KV that really went back (a snapshot
// restored, a cluster recovered on a fresh Consul and re-seeded from a
// mirror, where the indexes count from 1 again): only a consistent read
// tells them apart, and it is asked only then, so that an old high index
// is never held against the KV's word for long.
//
// Reads are consistent, not stale, while nothing has been applied in this
// process (there is nothing to compare a stale answer with) and while this
// node leads: the leader writes intents from what it plans with, so it
// plans with the KV's description, not a follower's.
type forwardKey struct {
	what string // names the key in the log
	get  func(ctx context.Context, q *api.QueryOptions) (*api.KVPair, *api.QueryMeta, error)
	// leading, when set, says whether this node leads.
	leading func() bool
	log     hclog.Logger

	mu      sync.Mutex // serializes judging and applying an answer; guards applied
	applied uint64     // the ModifyIndex of the key last applied; 0: none in this process
}

// confirmTimeout bounds the consistent read that checks a stale answer.
const confirmTimeout = 10 * time.Second

// readVerdict is what a watch does with one answer about its key.
type readVerdict int

const (
	readSame    readVerdict = iota // the key as applied: nothing to do
	readTake                       // apply it
	readConfirm                    // a stale answer behind the one applied, or without the key: ask the leader
	readMissing                    // the leader's word: the KV has no such key
)

// judgeRead decides what to do with an answer that holds the key at index
// got (0: no key), given the index of the key last applied (0: none), and
// whether the answer is the leader's (a consistent read). It is pure: see
// forwardKey for why.
func judgeRead(applied, got uint64, consistent bool) readVerdict {
	switch {
	case got != 0 && got == applied:
		return readSame
	case consistent && got == 0:
		return readMissing
	case consistent:
		// Ahead, or behind: the KV went back (restore, re-seed), and
		// what it holds now is what the cluster runs.
		return readTake
	case applied != 0 && got > applied:
		return readTake
	default:
		return readConfirm
	}
}

func modifyIndex(p *api.KVPair) uint64 {
	if p == nil {
		return 0
	}
	return p.ModifyIndex
}

// read is one query of a watch.Loop: q is the loop's. An answer to apply
// is handed to take; when the leader says the key is missing, missing is
// called (to re-seed it). It returns the index for the loop and whether
// take was called.
func (k *forwardKey) read(ctx context.Context, q *api.QueryOptions, take func(*api.KVPair), missing func()) (uint64, bool, error) {
	k.mu.Lock()
	applied := k.applied
	k.mu.Unlock()
	consistent := applied == 0 || k.leading != nil && k.leading()
	q.AllowStale, q.RequireConsistent = !consistent, consistent
	pair, meta, err := k.get(ctx, q)
	if err != nil {
		return 0, false, err
	}
	index := meta.LastIndex
	k.mu.Lock()
	v := judgeRead(k.applied, modifyIndex(pair), consistent)
	if v == readConfirm {
		behind := modifyIndex(pair)
		pair, index, err = k.consistent(ctx)
		if err != nil {
			k.mu.Unlock()
			return 0, false, err
		}
		v = judgeRead(k.applied, modifyIndex(pair), true)
		if v == readSame {
			// The loop waits from the applied index, so that the next
			// stale query blocks on the server behind until it has
			// caught up rather than answering with the old key again.
			k.log.Debug("stale read behind the one applied; passed over", telemetry.KeyWhat, k.what, telemetry.KeyReadIndex, behind, telemetry.KeyAppliedIndex, k.applied)
		}
	}
	switch v {
	case readTake:
		if pair.ModifyIndex < k.applied {
			k.log.Warn("the KV's key went back (a restore, or a re-seed on a fresh Consul): taking the KV's", telemetry.KeyWhat, k.what, telemetry.KeyKVIndex, pair.ModifyIndex, telemetry.KeyAppliedIndex, k.applied)
		}
		take(pair)
		k.applied = pair.ModifyIndex
		k.mu.Unlock()
		return index, true, nil
	case readMissing:
		// The next answer, the re-seeded key's, is taken from a
		// consistent read whatever its index.
		k.applied = 0
		k.mu.Unlock()
		missing()
		return index, false, nil
	}
	k.mu.Unlock()
	return index, false, nil
}

// confirm reads the key consistently and applies it with take when it is
// not the one applied; it reports whether the KV holds the key. A new
// leader calls it before its first plan (through the mirror's reseed), so
// that it plans with the KV's description even while its watch still
// waits on a stale query.
func (k *forwardKey) confirm(ctx context.Context, take func(*api.KVPair)) (bool, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	pair, _, err := k.consistent(ctx)
	if err != nil || pair == nil {
		return false, err
	}
	if judgeRead(k.applied, pair.ModifyIndex, true) == readTake {
		take(pair)
		k.applied = pair.ModifyIndex
	}
	return true, nil
}

// consistent reads the key from the Raft leader. Callers hold mu.
func (k *forwardKey) consistent(ctx context.Context) (*api.KVPair, uint64, error) {
	ctx, cancel := context.WithTimeout(ctx, confirmTimeout)
	defer cancel()
	pair, meta, err := k.get(ctx, &api.QueryOptions{RequireConsistent: true})
	if err != nil {
		return nil, 0, err
	}
	return pair, meta.LastIndex, nil
}
