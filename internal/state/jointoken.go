package state

import (
	"time"

	"github.com/raptiformica/raptiformica/internal/kvschema"
)

// JoinToken is what the cluster keeps of a join token, stored as JSON at
// kvschema.JoinTokens/<token id>; package jointoken makes, checks and
// spends it. Only servers read or write the folder: the secret is kept
// only as its hash.
type JoinToken struct {
	ID string `json:"id"`
	// SecretSHA256 is the hash of the secret (hex), compared in constant
	// time.
	SecretSHA256 string `json:"secret_sha256"`
	// Type is the machine type a machine joined with the token becomes.
	// A record of before types were required may have none: it joins no
	// machine.
	Type    string    `json:"type,omitempty"`
	Created time.Time `json:"created"`
	Expires time.Time `json:"expires"`
	// UsesLeft is how many more machines may join with the token. A
	// record of before uses were counted has none left.
	UsesLeft int `json:"uses_left"`
	// Index is the record's KV ModifyIndex, for check-and-set.
	Index uint64 `json:"-"`
}

// RecordKey is the token's ID (Keyed).
func (t JoinToken) RecordKey() string { return t.ID }

func (t JoinToken) withIndex(i uint64) JoinToken { t.Index = i; return t }

// MaxJoinTokenSize bounds one stored join token: an ID, a hash, a type
// name and two times.
const MaxJoinTokenSize = 4 << 10

// JoinTokenKind names join tokens' records in messages.
const JoinTokenKind = "join token"

// JoinTokens is the servers' folder of join tokens' records.
func JoinTokens(s *kvschema.Store) Folder[JoinToken] {
	return NewFolder[JoinToken](s.JoinTokens(), JoinTokenKind, MaxJoinTokenSize, nil)
}
