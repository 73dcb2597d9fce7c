// Package recoverfile is the file by which a node is asked to recover the
// cluster alone once its Consul has lost quorum: `raptiformica recover`
// (and the node's own quorum watch, on backend evidence) writes it in the
// node's data folder; the agent's quorum watch reads it, acts on it, and
// removes it. A file rather than an HTTP call, so that only who may write
// the node's folder may ask. The CLI and the agent share this package so
// that neither imports the other.
package recoverfile

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"time"

	"github.com/raptiformica/raptiformica/internal/fsutil"
)

// Name is the request's file name in a node's data folder.
const Name = "recover"

// TTL is how long a request holds: one left behind (quorum came back
// first, or the recovery failed) must not make the node recover alone at
// the next partition, which would split the cluster in two.
const TTL = 10 * time.Minute

// Request is what the file holds.
type Request struct {
	// Nonce tells requests apart in the logs.
	Nonce     string    `json:"nonce"`
	Requested time.Time `json:"requested"`
	Expires   time.Time `json:"expires"`
	// Why is kept for whoever looks.
	Why string `json:"why"`
}

// Write asks the node whose data folder is dataDir to recover the cluster
// alone, once its Consul has lost quorum; the request holds for TTL from
// now. The file is written atomically, readable by its owner only.
func Write(dataDir string, now time.Time, why string) error {
	var nonce [8]byte
	_, _ = rand.Read(nonce[:])
	b, _ := json.Marshal(Request{Nonce: hex.EncodeToString(nonce[:]), Requested: now.UTC(), Expires: now.Add(TTL).UTC(), Why: why})
	return fsutil.WriteFileAtomic(filepath.Join(dataDir, Name), append(b, '\n'), 0o600)
}

// Pending is the request in dataDir that holds at now. One that expired,
// or that cannot be read (an older version's), is removed, and dropped
// says why.
func Pending(dataDir string, now time.Time) (req Request, ok bool, dropped string) {
	name := filepath.Join(dataDir, Name)
	b, err := os.ReadFile(name)
	if err != nil {
		return req, false, ""
	}
	switch {
	case json.Unmarshal(b, &req) != nil || req.Expires.IsZero():
		dropped = "it cannot be read: ask again with raptiformica recover"
	case !now.Before(req.Expires):
		dropped = "it expired at " + req.Expires.Format(time.RFC3339)
	default:
		return req, true, ""
	}
	_ = os.Remove(name)
	return req, false, dropped
}

// Drop removes the request in dataDir, if any, and says whether there was
// one.
func Drop(dataDir string) bool {
	return os.Remove(filepath.Join(dataDir, Name)) == nil
}
