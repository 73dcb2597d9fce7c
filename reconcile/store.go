package reconcile

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"

	"github.com/hashicorp/consul/api"

	"github.com/raptiformica/raptiformica/internal/kvschema"
	"github.com/raptiformica/raptiformica/internal/state"
)

// ErrConflict means a check-and-set lost: someone else changed the record.
var ErrConflict = errors.New("inventory record changed underneath (check-and-set failed)")

// Inventory reads and writes machine records with check-and-set.
type Inventory struct {
	Store *kvschema.Store
}

// List returns every record, with its index set, and the KV index. A
// record refused by the state codec is left out; ListAll names it.
func (inv *Inventory) List(ctx context.Context, q *api.QueryOptions) (map[string]Record, uint64, error) {
	recs, _, index, err := inv.ListAll(ctx, q)
	return recs, index, err
}

// ListAll returns every record, with its index set, the records it
// refused, and the KV index. A record is refused when it cannot be read
// or names another machine than its key: it is kept out of planning, not
// a reason to fail the pass, and never speaks for the machine it names.
func (inv *Inventory) ListAll(ctx context.Context, q *api.QueryOptions) (map[string]Record, []state.Bad, uint64, error) {
	pairs, meta, err := inv.Store.Records(ctx, q)
	if err != nil {
		return nil, nil, 0, fmt.Errorf("list inventory: %w", err)
	}
	items, bad := state.DecodeAll[Record](state.RecordKind, kvschema.Inventory, statePairs(pairs), state.MaxRecordSize)
	recs := make(map[string]Record, len(items))
	for id, it := range items {
		r := it.Value
		r.Index = it.Index
		recs[id] = r
	}
	return recs, bad, meta.LastIndex, nil
}

// statePairs names Consul's pairs for the state codec.
func statePairs(pairs api.KVPairs) []state.Pair {
	out := make([]state.Pair, len(pairs))
	for i, p := range pairs {
		out[i] = state.Pair{Key: p.Key, Value: p.Value, Index: p.ModifyIndex}
	}
	return out
}

// Get reads one record; ok is false when there is none.
func (inv *Inventory) Get(ctx context.Context, id string) (Record, bool, error) {
	p, err := inv.Store.Record(ctx, id)
	if err != nil {
		return Record{}, false, fmt.Errorf("read inventory record %s: %w", id, err)
	}
	if p == nil {
		return Record{}, false, nil
	}
	r, err := state.Decode[Record](state.RecordKind, p.Key, id, p.Value, state.MaxRecordSize)
	if err != nil {
		return Record{}, false, err
	}
	r.Index = p.ModifyIndex
	return r, true, nil
}

// Put writes r if its Index still matches (0 means "only if absent") and
// returns it with the new index.
func (inv *Inventory) Put(ctx context.Context, r Record) (Record, error) {
	b, err := json.Marshal(r)
	if err != nil {
		return r, err
	}
	ok, err := inv.Store.CASRecord(ctx, r.ID, b, r.Index)
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

// PutAll writes every record of rs, each if its Index still matches, in
// transactions of at most kvschema.MaxTxnOps: one Raft write for a pass's
// marks instead of one per machine. A transaction that meets a record
// changed meanwhile writes nothing, and its records are written one by
// one, so that one busy record does not hold back the others. It returns
// the records with their new indexes, and the records it could not write
// with why.
func (inv *Inventory) PutAll(ctx context.Context, rs []Record) ([]Record, error) {
	out := make([]Record, 0, len(rs))
	var errs []error
	for chunk := range slices.Chunk(rs, kvschema.MaxTxnOps) {
		ws := make([]kvschema.RecordWrite, len(chunk))
		for i, r := range chunk {
			b, err := json.Marshal(r)
			if err != nil {
				return out, err
			}
			ws[i] = kvschema.RecordWrite{MachineID: r.ID, Value: b, Index: r.Index}
		}
		indexes, ok, err := inv.Store.CASRecords(ctx, ws)
		if err == nil && ok {
			for i, r := range chunk {
				r.Index = indexes[i]
				out = append(out, r)
			}
			continue
		}
		for _, r := range chunk {
			fresh, err := inv.Put(ctx, r)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			out = append(out, fresh)
		}
	}
	return out, errors.Join(errs...)
}

// Delete removes r if its Index still matches.
func (inv *Inventory) Delete(ctx context.Context, r Record) error {
	ok, err := inv.Store.DeleteRecord(ctx, r.ID, r.Index)
	if err != nil {
		return fmt.Errorf("delete inventory record %s: %w", r.ID, err)
	}
	if !ok {
		return fmt.Errorf("delete inventory record %s: %w", r.ID, ErrConflict)
	}
	return nil
}
