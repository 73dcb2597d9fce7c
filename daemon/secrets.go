package daemon

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"

	"github.com/raptiformica/raptiformica/internal/fsutil"
	"github.com/raptiformica/raptiformica/internal/kvschema"
)

// How a node keeps the cluster's secrets that `raptiformica rotate`
// replaces on a live cluster. The node config holds the values the machine
// was made with, and nobody rewrites it (it may be on a read-only image,
// or written by a backend); what a node learns since is kept in its data
// folder and wins over the config when the agent starts:
//
//   - the gossip key: Consul keeps its keyring in its own data folder
//     (serf/local.keyring, primary key first) and, when that file exists,
//     ignores the config's `encrypt` (Consul 1.22.0, agent/keyring.go
//     setupBaseKeyrings: "keyring doesn't include key provided with
//     -encrypt, using keyring"). The one time the agent wipes Consul's
//     data folder, a recovery on a fresh Consul (ConsulProcess.RestartFresh),
//     the keyring is carried over (wipeConsulData), and the key the node
//     re-seeds an emptied KV with is its keyring's primary (gossipKeyOf).
//   - the mesh secrets: the overlay has no such file of its own, so the
//     agent writes mesh-secrets.json beside its mesh key before it takes a
//     rotation's step, and starts from it (startMesh).

// consulKeyringFile is where Consul keeps the LAN gossip keyring, in its
// data folder.
const consulKeyringFile = "serf/local.keyring"

// gossipKeyOf returns the key a node's Consul encrypts gossip with: its
// persisted keyring's primary (the first), else fallback, the key of the
// node config (a Consul not started yet).
func gossipKeyOf(consulDataDir, fallback string) string {
	b, err := os.ReadFile(filepath.Join(consulDataDir, consulKeyringFile))
	if err != nil {
		return fallback
	}
	var keys []string
	if json.Unmarshal(b, &keys) != nil || len(keys) == 0 || keys[0] == "" {
		return fallback
	}
	return keys[0]
}

// wipeConsulData empties Consul's data folder for a fresh start, all but
// the gossip keyring: the cluster's key may have been rotated since the
// node config was written, and a Consul started from the config's would
// be cut off from every member.
func wipeConsulData(dir string) error {
	keyring, err := os.ReadFile(filepath.Join(dir, consulKeyringFile))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("keep the gossip keyring: %w", err)
	}
	if err := os.RemoveAll(dir); err != nil {
		return err
	}
	if keyring == nil {
		return nil
	}
	name := filepath.Join(dir, consulKeyringFile)
	if err := os.MkdirAll(filepath.Dir(name), 0o700); err != nil {
		return fmt.Errorf("keep the gossip keyring: %w", err)
	}
	return fsutil.WriteFileAtomic(name, keyring, 0o600)
}

// meshSecretsFile is where a node keeps the mesh secrets it runs with, in
// its data folder.
const meshSecretsFile = "mesh-secrets.json"

// meshSecrets are the secrets a node's overlay runs with: it listens with
// Listen and dials with Listen and each of Dial.
type meshSecrets struct {
	Listen string   `json:"listen"`
	Dial   []string `json:"dial,omitempty"`
}

func (m meshSecrets) equal(o meshSecrets) bool {
	return m.Listen == o.Listen && slices.Equal(m.Dial, o.Dial)
}

// meshSecretsFor is what a node runs with at a rotation's step (see
// kvschema.MeshSecrets): it listens with the current secret and dials with
// every one the KV holds. False when the KV holds no secret (or the node
// may not read it): the node keeps what it has.
func meshSecretsFor(kv kvschema.MeshSecrets) (meshSecrets, bool) {
	if kv.Current == "" {
		return meshSecrets{}, false
	}
	m := meshSecrets{Listen: kv.Current}
	for _, s := range []string{kv.Next, kv.Previous} {
		if s != "" && s != kv.Current && !slices.Contains(m.Dial, s) {
			m.Dial = append(m.Dial, s)
		}
	}
	sort.Strings(m.Dial)
	return m, true
}

// loadMeshSecrets reads the secrets a node last ran with; false when it
// kept none (a node that never took a rotation's step) or the file is
// damaged, and the node config's secret is to be used.
func loadMeshSecrets(dataDir string) (meshSecrets, bool) {
	var m meshSecrets
	b, err := os.ReadFile(filepath.Join(dataDir, meshSecretsFile))
	if err != nil || json.Unmarshal(b, &m) != nil || m.Listen == "" {
		return meshSecrets{}, false
	}
	return m, true
}

// saveMeshSecrets keeps m as the secrets the node runs with, readable by
// its owner only.
func saveMeshSecrets(dataDir string, m meshSecrets) error {
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	return fsutil.WriteFileAtomic(filepath.Join(dataDir, meshSecretsFile), append(b, '\n'), 0o600)
}
