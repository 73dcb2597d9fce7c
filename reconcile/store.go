package reconcile

import (
	"context"
	"encoding/json"
	"errors"
	"slices"

	"github.com/hashicorp/consul/api"

	"github.com/raptiformica/raptiformica/internal/kvschema"
	"github.com/raptiformica/raptiformica/internal/state"
)

// Inventory reads and writes machine records with check-and-set, through
// the state codec (state.Inventory).
type Inventory struct {
	Store *kvschema.Store
}

func (inv *Inventory) folder() state.Folder[state.Record] { return state.Inventory(inv.Store) }

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
	return inv.folder().List(ctx, q)
}

// Get reads one record; ok is false when there is none.
func (inv *Inventory) Get(ctx context.Context, id string) (Record, bool, error) {
	r, ok, _, err := inv.folder().Get(ctx, id, nil)
	return r, ok, err
}

// Put writes r if its Index still matches (0: only if there is none) and
// returns it with its new index; state.ErrConflict when someone else
// wrote first.
func (inv *Inventory) Put(ctx context.Context, r Record) (Record, error) {
	return inv.folder().Put(ctx, r, r.Index)
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
	return inv.folder().Delete(ctx, r.ID, r.Index)
}
