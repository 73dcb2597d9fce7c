// Package state is what raptiformica keeps about each machine in Consul's
// KV, and the one codec through which every such record is read.
//
// A per-machine record lives at <folder>/<machine id> and speaks for that
// machine alone (a join token's record, the one record not of a machine,
// lives at join-tokens/<token id> and the same rules hold for it). Whoever may write the key may write anything into the
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
	"errors"
	"fmt"
	"strings"
)

// Keyed is a record that names what its key names: a machine's record
// its machine ID, a join token's record its token ID.
type Keyed interface {
	// RecordKey is the last segment of the key the record belongs at.
	RecordKey() string
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

// ErrBadRecord is in every error of Decode: the stored value is not a
// record its reader may believe (too large, not JSON of its type, another
// key's, against its type's rules). A reader treats it as no record,
// reported.
var ErrBadRecord = errors.New("bad record")

// badRecord is an error of Decode: its own text, and ErrBadRecord for
// errors.Is.
type badRecord struct{ err error }

func (b badRecord) Error() string   { return b.err.Error() }
func (b badRecord) Unwrap() []error { return []error{b.err, ErrBadRecord} }

// Decode reads the value stored at key for the machine id, as a record of
// kind (a word for messages: "inventory record", "offer"): at most max
// bytes, JSON of T, naming id. The error names the key and what is wrong,
// and is an ErrBadRecord.
func Decode[T Keyed](kind, key, id string, b []byte, max int) (T, error) {
	var v T
	if len(b) > max {
		return v, badRecord{fmt.Errorf("%s %s: %d bytes, more than %d", kind, key, len(b), max)}
	}
	if err := json.Unmarshal(b, &v); err != nil {
		return v, badRecord{fmt.Errorf("%s %s: %w", kind, key, err)}
	}
	if got := v.RecordKey(); got != id {
		return v, badRecord{fmt.Errorf("%s %s names %q: a record speaks only for what its key names", kind, key, got)}
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
