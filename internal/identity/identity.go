// Package identity is a cluster's credentials: what the seed makes when a
// cluster is created and every machine after it is given by whoever makes
// it: the Consul ACL management token, which Consul's ACLs are
// bootstrapped with (default deny: nobody without a token reads or writes
// anything), the gossip key, and the cluster's certificate authority, which
// signs each machine's certificate for Consul's TLS. They are kept in files
// readable by their owner only, in a folder only its owner may enter.
package identity

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/raptiformica/raptiformica/internal/fsutil"
	"github.com/raptiformica/raptiformica/internal/pki"
)

// File is where a folder keeps its cluster's identity.
const File = "identity.json"

// Identity is a cluster's credentials.
type Identity struct {
	// ManagementToken is the Consul ACL token that may do everything: the
	// servers bootstrap ACLs with it, on a fresh Consul too.
	ManagementToken string `json:"management_token"`
	// GossipKey encrypts Consul's gossip.
	GossipKey string `json:"gossip_key"`
	// CACert and CAKey are the cluster's certificate authority (PEM).
	CACert string `json:"ca_cert,omitempty"`
	CAKey  string `json:"ca_key,omitempty"`
}

// New makes the credentials of the cluster named cluster.
func New(cluster string) (Identity, error) {
	tok, err := NewToken()
	if err != nil {
		return Identity{}, err
	}
	key, err := NewGossipKey()
	if err != nil {
		return Identity{}, err
	}
	id := Identity{ManagementToken: tok, GossipKey: key}
	return id, id.EnsureCA(cluster)
}

// EnsureCA gives an identity made before the cluster had a CA one of its
// own.
func (id *Identity) EnsureCA(cluster string) error {
	if id.CACert != "" && id.CAKey != "" {
		return nil
	}
	ca, err := pki.NewCA(cluster)
	if err != nil {
		return err
	}
	id.CACert, id.CAKey = ca.CertPEM, ca.KeyPEM
	return nil
}

// CA is the identity's certificate authority.
func (id Identity) CA() pki.CA { return pki.CA{CertPEM: id.CACert, KeyPEM: id.CAKey} }

// NewGossipKey returns a fresh Consul gossip key: 32 random bytes, base64.
func NewGossipKey() (string, error) {
	var key [32]byte
	if _, err := rand.Read(key[:]); err != nil {
		return "", err
	}
	return base64.StdEncoding.EncodeToString(key[:]), nil
}

// NewToken returns a fresh Consul ACL secret: a random UUID, the form
// Consul expects.
func NewToken() (string, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	b[6] = b[6]&0x0f | 0x40 // version 4
	b[8] = b[8]&0x3f | 0x80 // RFC 4122 variant
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:]), nil
}

// Write keeps id in dir (created 0700 if missing), in a file only its
// owner reads.
func Write(dir string, id Identity) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	// A folder made before (a local cluster's) is closed too: it also
	// holds the machines' configs and the backends' settings.
	if err := os.Chmod(dir, 0o700); err != nil {
		return err
	}
	b, err := json.MarshalIndent(id, "", "  ")
	if err != nil {
		return err
	}
	return fsutil.WriteFileAtomic(filepath.Join(dir, File), append(b, '\n'), 0o600)
}

// ErrNone is Read's error for a folder that keeps no identity.
var ErrNone = errors.New("no cluster identity")

// Read returns the identity kept in dir. A file that cannot be read or is
// damaged is an error naming it, never taken for a missing one: a node
// must not make itself a second identity.
func Read(dir string) (Identity, error) {
	name := filepath.Join(dir, File)
	b, err := os.ReadFile(name)
	if errors.Is(err, fs.ErrNotExist) {
		return Identity{}, fmt.Errorf("%s: %w", name, ErrNone)
	}
	if err != nil {
		return Identity{}, err
	}
	var id Identity
	if err := json.Unmarshal(b, &id); err != nil || id.ManagementToken == "" {
		return Identity{}, fmt.Errorf("%s: damaged cluster identity (%v); restore it from a server's data folder", name, err)
	}
	return id, nil
}
