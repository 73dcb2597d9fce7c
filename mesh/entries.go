package mesh

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"

	"github.com/raptiformica/raptiformica/internal/kvschema"
	"github.com/raptiformica/raptiformica/internal/state"
	"github.com/raptiformica/raptiformica/mesh/peering"
)

// ReadEntries reads every member's mesh entry, by machine ID, leaving out
// the ones the folder or Believe refuses.
func ReadEntries(ctx context.Context, store *kvschema.Store) (map[string]state.MeshEntry, error) {
	nodes, bad, _, err := state.MeshEntries(store).List(ctx, nil)
	if err != nil {
		return nil, fmt.Errorf("read mesh entries: %w", err)
	}
	nodes, _ = Believe(nodes, bad)
	return nodes, nil
}

// Members are the members as the mesh's rule sees them, from their
// entries.
func Members(nodes map[string]state.MeshEntry) []peering.Member {
	out := make([]peering.Member, 0, len(nodes))
	for id, n := range nodes {
		out = append(out, peering.Member{ID: id, Server: n.Server, Listens: len(n.Endpoints) > 0})
	}
	return out
}

// Links returns, for each member with an entry, the members the mesh's
// rule links it to (package mesh/peering), by machine ID: what `members`
// shows. It costs O(maxLinks × N²): a table of a few thousand machines.
func Links(nodes map[string]state.MeshEntry, maxLinks int) map[string][]string {
	members := Members(nodes)
	out := make(map[string][]string, len(members))
	for _, m := range members {
		out[m.ID] = peering.Choose(m, members, maxLinks)
	}
	return out
}

// Believe keeps, of the members' entries as the folder decoded them
// (state.MeshEntries; bad are the ones it refused), those the mesh may
// believe, and adds the rest to bad. Each is its member's own word, so an
// entry is believed only for the machine its key names (state.Decode), only with
// the overlay address its public key gives, and only with a public key no
// other entry holds: a client's entry cannot take another member's place
// in every node's view, by its name or by its key. Two entries with one
// key are both refused, since neither proves the key its own (a client
// that copies another's key so keeps that machine out of the others'
// view, and itself, until the copy goes: named in the log, which the
// agent logs).
func Believe(decoded map[string]state.MeshEntry, bad []state.Bad) (map[string]state.MeshEntry, []state.Bad) {
	items := maps.Clone(decoded)
	refuse := func(id, why string) {
		bad = append(bad, state.Bad{Key: kvschema.MeshNodes + id, Error: fmt.Sprintf("mesh entry %s%s: %s", kvschema.MeshNodes, id, why)})
		delete(items, id)
	}
	holders := map[string][]string{}
	for _, id := range slices.Sorted(maps.Keys(items)) {
		n := items[id]
		if n.Key == "" && n.Address == "" {
			continue // the leader's first entry: endpoints only
		}
		if a, err := AddressOf(n.Key); err != nil || a.String() != n.Address {
			refuse(id, fmt.Sprintf("address %q is not its key's", n.Address))
			continue
		}
		holders[n.Key] = append(holders[n.Key], id)
	}
	for _, ids := range holders {
		if len(ids) > 1 {
			for _, id := range ids {
				refuse(id, "its key is held by "+strings.Join(ids, " and ")+" at once")
			}
		}
	}
	sort.Slice(bad, func(i, j int) bool { return bad[i].Key < bad[j].Key })
	return items, bad
}
