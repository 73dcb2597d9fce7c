// Package state is what raptiformica keeps about each machine in Consul's
// KV, and the one codec through which every such record is read.
//
// A per-machine record lives at <folder>/<machine id> and speaks for that
// machine alone. Whoever may write the key may write anything into the
// value, and a client machine may write its own keys (its offer, its
// provisioning record, its mesh entry): so a record is believed only for
// the machine its key names. Decode refuses a value larger than its
// folder's cap, one that is not JSON of the folder's type, and one that
// names another machine than its key; a refused record is a Bad, which the
// reader reports (status, a metric) and never acts on, and which never
// stops it reading the rest of the folder.
//
// Which folders a client may write, and which fields decide what the
// leader destroys or where credentials go, are in the KV map (package
// kvschema) and the ACL rules written against it: the inventory is the
// servers' alone; what a client says of itself is a claim bounded to
// itself.
package state

import (
	"encoding/json"
	"fmt"
	"sort"
	"strings"
)

// Keyed is a record that names the machine it speaks for.
type Keyed interface {
	// MachineKey is the machine ID the record names.
	MachineKey() string
}

// Bad is a stored record that Decode refused: where it is and why. It is
// reported, never acted on.
type Bad struct {
	// Key is the record's whole KV key.
	Key string `json:"key"`
	// Error says why it was refused.
	Error string `json:"error"`
}

// String is how status lines and logs name it.
func (b Bad) String() string { return b.Key + ": " + b.Error }

// Decode reads the value stored at key for the machine id, as a record of
// kind (a word for messages: "inventory record", "offer"): at most max
// bytes, JSON of T, naming id. The error names the key and what is wrong.
func Decode[T Keyed](kind, key, id string, b []byte, max int) (T, error) {
	var v T
	if len(b) > max {
		return v, fmt.Errorf("%s %s: %d bytes, more than %d", kind, key, len(b), max)
	}
	if err := json.Unmarshal(b, &v); err != nil {
		return v, fmt.Errorf("%s %s: %w", kind, key, err)
	}
	if got := v.MachineKey(); got != id {
		return v, fmt.Errorf("%s %s names machine %q: a record speaks only for the machine its key names", kind, key, got)
	}
	return v, nil
}

// IDOf is the machine ID a key of folder names: the key's last segment,
// and ok false for the folder itself, a key in a subfolder, or an anchor
// (a name starting with a dot), which name no machine.
func IDOf(folder, key string) (string, bool) {
	id, found := strings.CutPrefix(key, folder)
	if !found || id == "" || strings.Contains(id, "/") || strings.HasPrefix(id, ".") {
		return "", false
	}
	return id, true
}

// Pair is one stored value of a folder: its key, its bytes and the index
// it was last written at. It is what Consul's KV list returns, named here
// so that this package needs no Consul client.
type Pair struct {
	Key   string
	Value []byte
	Index uint64
}

// Item is a record read from a folder with the KV index it was written
// at, for check-and-set.
type Item[T Keyed] struct {
	Value T
	Index uint64
}

// DecodeAll reads every record of a folder's listing, by machine ID, and
// returns the ones it refused beside them, sorted by key. Keys that name
// no machine (see IDOf) are skipped, not refused.
func DecodeAll[T Keyed](kind, folder string, pairs []Pair, max int) (map[string]Item[T], []Bad) {
	out := make(map[string]Item[T], len(pairs))
	var bad []Bad
	for _, p := range pairs {
		id, ok := IDOf(folder, p.Key)
		if !ok {
			continue
		}
		v, err := Decode[T](kind, p.Key, id, p.Value, max)
		if err != nil {
			bad = append(bad, Bad{Key: p.Key, Error: err.Error()})
			continue
		}
		out[id] = Item[T]{Value: v, Index: p.Index}
	}
	sort.Slice(bad, func(i, j int) bool { return bad[i].Key < bad[j].Key })
	return out, bad
}
