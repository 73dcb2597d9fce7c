package reconcile

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/hashicorp/consul/api"
)

// KV keys. Everything raptiformica keeps in Consul is under Prefix.
const (
	Prefix = "raptiformica/"
	// KeyPlatform holds the platform description's source text.
	KeyPlatform = Prefix + "platform"
	// KeyInventory is the folder of machine records.
	KeyInventory = Prefix + "inventory/"
	// KeyLeader is the leader lock.
	KeyLeader = Prefix + "leader"
	// KeyGossip holds the gossip encryption key new machines are given.
	KeyGossip = Prefix + "gossip-key"
	// KeyStatus holds the leader's last published Status.
	KeyStatus = Prefix + "status"
	// KeyEpoch counts the times the cluster's KV was re-created from a
	// node's on-disk mirror. Raft indexes restart with a fresh Consul, so
	// the epoch is what orders copies of the inventory across those
	// restarts.
	KeyEpoch = Prefix + "epoch"
)

// ErrConflict means a check-and-set lost: someone else changed the record.
var ErrConflict = errors.New("inventory record changed underneath (check-and-set failed)")

// LeaderOf returns the machine ID holding the leader lock, or "" when the
// lock is free or cannot be read.
func LeaderOf(kv *api.KV) string { return LeaderWithin(context.Background(), kv) }

// LeaderWithin is LeaderOf giving up when ctx ends: a node cut off from
// the servers waits seconds for each read.
func LeaderWithin(ctx context.Context, kv *api.KV) string {
	pair, _, err := kv.Get(KeyLeader, (&api.QueryOptions{}).WithContext(ctx))
	if err != nil || pair == nil || pair.Session == "" {
		return ""
	}
	return string(pair.Value)
}

// Inventory reads and writes machine records with check-and-set.
type Inventory struct {
	KV *api.KV
}

// List returns every record, with its index set, and the KV index.
func (inv *Inventory) List(ctx context.Context, q *api.QueryOptions) (map[string]Record, uint64, error) {
	if q == nil {
		q = &api.QueryOptions{}
	}
	pairs, meta, err := inv.KV.List(KeyInventory, q.WithContext(ctx))
	if err != nil {
		return nil, 0, fmt.Errorf("list inventory: %w", err)
	}
	recs := make(map[string]Record, len(pairs))
	for _, p := range pairs {
		var r Record
		if err := json.Unmarshal(p.Value, &r); err != nil || r.ID == "" {
			// A record we cannot read is kept out of planning rather than
			// failing every pass; its key names it for the operator.
			continue
		}
		r.Index = p.ModifyIndex
		recs[r.ID] = r
	}
	return recs, meta.LastIndex, nil
}

// Get reads one record; ok is false when there is none.
func (inv *Inventory) Get(ctx context.Context, id string) (Record, bool, error) {
	p, _, err := inv.KV.Get(KeyInventory+id, (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return Record{}, false, fmt.Errorf("read inventory record %s: %w", id, err)
	}
	if p == nil {
		return Record{}, false, nil
	}
	var r Record
	if err := json.Unmarshal(p.Value, &r); err != nil {
		return Record{}, false, fmt.Errorf("inventory record %s: %w", id, err)
	}
	r.Index = p.ModifyIndex
	return r, true, nil
}

// Put writes r if its Index still matches (0 means "only if absent") and
// returns it with the new index.
func (inv *Inventory) Put(ctx context.Context, r Record) (Record, error) {
	if r.ID == "" || strings.Contains(r.ID, "/") {
		return r, fmt.Errorf("bad machine id %q", r.ID)
	}
	b, err := json.Marshal(r)
	if err != nil {
		return r, err
	}
	ok, _, err := inv.KV.CAS(&api.KVPair{Key: KeyInventory + r.ID, Value: b, ModifyIndex: r.Index}, (&api.WriteOptions{}).WithContext(ctx))
	if err != nil {
		return r, fmt.Errorf("write inventory record %s: %w", r.ID, err)
	}
	if !ok {
		return r, fmt.Errorf("write inventory record %s: %w", r.ID, ErrConflict)
	}
	fresh, found, err := inv.Get(ctx, r.ID)
	if err != nil {
		return r, err
	}
	if !found {
		return r, fmt.Errorf("write inventory record %s: %w", r.ID, ErrConflict)
	}
	return fresh, nil
}

// Delete removes r if its Index still matches.
func (inv *Inventory) Delete(ctx context.Context, r Record) error {
	ok, _, err := inv.KV.DeleteCAS(&api.KVPair{Key: KeyInventory + r.ID, ModifyIndex: r.Index}, (&api.WriteOptions{}).WithContext(ctx))
	if err != nil {
		return fmt.Errorf("delete inventory record %s: %w", r.ID, err)
	}
	if !ok {
		return fmt.Errorf("delete inventory record %s: %w", r.ID, ErrConflict)
	}
	return nil
}

// PutPlatform stores a description's source as the next version: the
// KV pair's Flags carry a counter that every apply raises by one (by
// check-and-set, so two concurrent applies cannot share a version), and
// that mirrors keep, so that no node replaces its copy with an older one.
func PutPlatform(kv *api.KV, src []byte) (uint64, error) {
	for range 10 {
		cur, _, err := kv.Get(KeyPlatform, &api.QueryOptions{RequireConsistent: true})
		if err != nil {
			return 0, err
		}
		p := &api.KVPair{Key: KeyPlatform, Value: src, Flags: 1}
		if cur != nil {
			p.Flags, p.ModifyIndex = cur.Flags+1, cur.ModifyIndex
		}
		ok, _, err := kv.CAS(p, nil)
		if err != nil {
			return 0, err
		}
		if ok {
			return p.Flags, nil
		}
	}
	return 0, errors.New("the description kept changing underneath: try again")
}
