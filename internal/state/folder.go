package state

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/hashicorp/consul/api"

	"github.com/raptiformica/raptiformica/internal/kvschema"
)

// ErrConflict means a check-and-set lost: someone else changed the record
// since it was read.
var ErrConflict = errors.New("record changed underneath (check-and-set failed)")

// Folder is one KV folder of per-machine records of type T, read and
// written only through the codec: every value it returns was at most its
// cap, JSON of T, and named the machine its key names; every write is a
// check-and-set against the index the record was read at.
type Folder[T Keyed] struct {
	raw  *kvschema.Folder
	kind string
	max  int
	// check refuses what the type's own rules forbid (a work order of an
	// unknown kind), after the codec's checks.
	check func(T) error
}

// NewFolder returns the folder raw of records of kind (a word for
// messages), at most max bytes each; check, if not nil, is what T's own
// rules add to the codec's.
func NewFolder[T Keyed](raw *kvschema.Folder, kind string, max int, check func(T) error) Folder[T] {
	return Folder[T]{raw: raw, kind: kind, max: max, check: check}
}

// Inventory is the servers' folder of machine records.
func Inventory(s *kvschema.Store) Folder[Record] {
	return NewFolder[Record](s.Folder(kvschema.Inventory), RecordKind, MaxRecordSize, nil)
}

// Offers is the members' folder of offers, each its member's own.
func Offers(s *kvschema.Store) Folder[Offer] {
	return NewFolder[Offer](s.Folder(kvschema.Offers), OfferKind, MaxOfferSize, nil)
}

// ProvisionedRecords is the members' folder of provisioning outcomes.
func ProvisionedRecords(s *kvschema.Store) Folder[Provisioned] {
	return NewFolder[Provisioned](s.Folder(kvschema.Provisioned), ProvisionedKind, MaxProvisionedSize, nil)
}

// WorkOrders is the folder of orders given to host.
func WorkOrders(s *kvschema.Store, host string) Folder[WorkOrder] {
	return NewFolder[WorkOrder](s.Work(host), WorkOrderKind, maxWorkOrderSize, WorkOrder.valid)
}

// Key is the whole KV key of machine id's record.
func (f Folder[T]) Key(id string) string { return f.raw.Prefix() + id }

// Decode reads the value stored for machine id.
func (f Folder[T]) Decode(id string, b []byte) (T, error) {
	v, err := Decode[T](f.kind, f.Key(id), id, b, f.max)
	if err == nil && f.check != nil {
		if err = f.check(v); err != nil {
			err = badRecord{fmt.Errorf("%s %s: %w", f.kind, f.Key(id), err)}
		}
	}
	return withIndex(v, 0), err
}

// List returns every record of the folder by machine ID, with its index,
// the records it refused (sorted by key), and the folder's index to wait
// from: a blocking query when q has a WaitIndex. Keys that name no
// machine (IDOf) are skipped.
func (f Folder[T]) List(ctx context.Context, q *api.QueryOptions) (map[string]T, []Bad, uint64, error) {
	es, index, err := f.raw.Entries(ctx, q)
	if err != nil {
		return nil, nil, 0, fmt.Errorf("list %s: %w", f.raw.Prefix(), err)
	}
	out, bad := f.decodeAll(es)
	return out, bad, index, nil
}

// DecodeList reads the folder's records out of a listing made elsewhere
// (one read of a parent folder, for one watch over several): keys not in
// the folder are left out, as are keys that name no machine.
func (f Folder[T]) DecodeList(pairs api.KVPairs) (map[string]T, []Bad) {
	es := make(map[string]kvschema.Entry, len(pairs))
	for _, p := range pairs {
		if rel, ok := strings.CutPrefix(p.Key, f.raw.Prefix()); ok {
			es[rel] = kvschema.Entry{Value: p.Value, Index: p.ModifyIndex}
		}
	}
	return f.decodeAll(es)
}

// decodeAll decodes a listing by key relative to the folder, with the
// records it refused sorted by key.
func (f Folder[T]) decodeAll(es map[string]kvschema.Entry) (map[string]T, []Bad) {
	out := make(map[string]T, len(es))
	var bad []Bad
	for _, rel := range slices.Sorted(maps.Keys(es)) {
		id, ok := IDOf(f.raw.Prefix(), f.Key(rel))
		if !ok {
			continue
		}
		v, err := f.Decode(id, es[rel].Value)
		if err != nil {
			bad = append(bad, Bad{Key: f.Key(id), Error: err.Error()})
			continue
		}
		out[id] = withIndex(v, es[rel].Index)
	}
	return out, bad
}

// Get reads machine id's record, waiting for a change past q's WaitIndex
// when it has one; ok is false when there is none, and next is the index
// to wait from.
func (f Folder[T]) Get(ctx context.Context, id string, q *api.QueryOptions) (v T, ok bool, next uint64, err error) {
	b, index, next, err := f.raw.Wait(ctx, id, q)
	if err != nil || b == nil {
		return v, false, next, err
	}
	if v, err = f.Decode(id, b); err != nil {
		return v, false, next, err
	}
	return withIndex(v, index), true, next, nil
}

// Put writes v if its record's index is still index (0: only if there is
// none), and returns it as stored, with its new index; ErrConflict when
// someone else wrote first.
func (f Folder[T]) Put(ctx context.Context, v T, index uint64) (T, error) {
	id := v.RecordKey()
	b, err := f.encode(v)
	if err != nil {
		return v, err
	}
	ok, err := f.raw.CAS(ctx, id, b, index)
	if err != nil {
		return v, fmt.Errorf("write %s %s: %w", f.kind, f.Key(id), err)
	}
	if !ok {
		return v, fmt.Errorf("write %s %s: %w", f.kind, f.Key(id), ErrConflict)
	}
	fresh, found, _, err := f.Get(ctx, id, nil)
	if err != nil {
		return v, err
	}
	if !found {
		return v, fmt.Errorf("write %s %s: %w", f.kind, f.Key(id), ErrConflict)
	}
	return fresh, nil
}

// Set writes v whatever is stored: only for a record that its own machine
// alone writes (its mesh entry), where the last word is its word.
func (f Folder[T]) Set(ctx context.Context, v T) error {
	b, err := f.encode(v)
	if err != nil {
		return err
	}
	if err := f.raw.Put(ctx, v.RecordKey(), b); err != nil {
		return fmt.Errorf("write %s %s: %w", f.kind, f.Key(v.RecordKey()), err)
	}
	return nil
}

// encode is v as stored, refused when over the folder's cap.
func (f Folder[T]) encode(v T) ([]byte, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	if len(b) > f.max {
		return nil, fmt.Errorf("write %s %s: %d bytes, more than %d", f.kind, f.Key(v.RecordKey()), len(b), f.max)
	}
	return b, nil
}

// Delete removes machine id's record if its index is still index;
// ErrConflict when it moved.
func (f Folder[T]) Delete(ctx context.Context, id string, index uint64) error {
	ok, err := f.raw.DeleteCAS(ctx, id, index)
	if err != nil {
		return fmt.Errorf("delete %s %s: %w", f.kind, f.Key(id), err)
	}
	if !ok {
		return fmt.Errorf("delete %s %s: %w", f.kind, f.Key(id), ErrConflict)
	}
	return nil
}

// Forget removes machine id's record whatever its index: for a machine
// that is gone, whose record nobody may still be writing.
func (f Folder[T]) Forget(ctx context.Context, id string) error {
	if err := f.raw.Delete(ctx, id); err != nil {
		return fmt.Errorf("delete %s %s: %w", f.kind, f.Key(id), err)
	}
	return nil
}

// indexed is a record that carries the KV index it was read at.
type indexed[T any] interface {
	withIndex(uint64) T
}

// withIndex sets v's index, for the types that keep one.
func withIndex[T any](v T, index uint64) T {
	if iv, ok := any(v).(indexed[T]); ok {
		return iv.withIndex(index)
	}
	return v
}
