// Package jointoken is the token with which a machine is joined to a
// cluster by hand, as k3s's secure token is: `raptiformica token create`
// prints it, `raptiformica join --token` spends it.
//
// A token reads RF1.<ca>.<id>.<secret>: the SHA-256 of the cluster's CA
// certificate, which the joining machine checks the member it asks against
// before it sends anything (so a token given to the wrong host, or caught
// by someone in the middle, proves nothing to it); the token's ID; and a
// secret of 256 bits. The cluster keeps a Record per token: its type, its
// expiry and the SHA-256 of its secret, never the secret itself, so that a
// reader of the KV cannot join with it.
package jointoken

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"
)

// version starts every token, so that a later format can be told apart.
const version = "RF1"

// DefaultTTL is how long a token is valid unless told otherwise.
const DefaultTTL = time.Hour

// Token is a join token.
type Token struct {
	// CAHash is the SHA-256 of the cluster's CA certificate (hex).
	CAHash string
	ID     string
	Secret string
}

// New makes a token for the cluster whose CA has the hash caHash.
func New(caHash string) (Token, error) {
	var id [6]byte
	var secret [32]byte
	if _, err := rand.Read(id[:]); err != nil {
		return Token{}, err
	}
	if _, err := rand.Read(secret[:]); err != nil {
		return Token{}, err
	}
	return Token{CAHash: caHash, ID: hex.EncodeToString(id[:]), Secret: hex.EncodeToString(secret[:])}, nil
}

// String is the token as printed and given to `join --token`.
func (t Token) String() string { return strings.Join([]string{version, t.CAHash, t.ID, t.Secret}, ".") }

// Parse reads a token, saying which part is wrong.
func Parse(s string) (Token, error) {
	parts := strings.Split(strings.TrimSpace(s), ".")
	if len(parts) != 4 || parts[0] != version {
		return Token{}, fmt.Errorf("join token: want %s.<ca-sha256>.<id>.<secret> (from `raptiformica token create`)", version)
	}
	t := Token{CAHash: parts[1], ID: parts[2], Secret: parts[3]}
	for _, p := range []struct {
		name, v string
		n       int
	}{{"CA hash", t.CAHash, 64}, {"id", t.ID, 12}, {"secret", t.Secret, 64}} {
		if _, err := hex.DecodeString(p.v); err != nil || len(p.v) != p.n {
			return Token{}, fmt.Errorf("join token: the %s must be %d hex digits", p.name, p.n)
		}
	}
	return t, nil
}

// Record is what the cluster keeps of a token.
type Record struct {
	ID string `json:"id"`
	// SecretSHA256 is the hash of the secret (hex), compared in constant
	// time.
	SecretSHA256 string `json:"secret_sha256"`
	// Type is the machine type a machine joined with the token becomes;
	// empty lets the joining machine say.
	Type    string    `json:"type,omitempty"`
	Created time.Time `json:"created"`
	Expires time.Time `json:"expires"`
}

// NewRecord is the record of t, for type typ, valid for ttl from now.
func NewRecord(t Token, typ string, now time.Time, ttl time.Duration) Record {
	sum := sha256.Sum256([]byte(t.Secret))
	return Record{ID: t.ID, SecretSHA256: hex.EncodeToString(sum[:]), Type: typ, Created: now.UTC(), Expires: now.Add(ttl).UTC()}
}

// Errors of Check: a token that does not match or has expired.
var (
	ErrWrongSecret = errors.New("join token: wrong secret")
	ErrExpired     = errors.New("join token: expired")
)

// Check says whether secret matches the record at now.
func (r Record) Check(secret string, now time.Time) error {
	sum := sha256.Sum256([]byte(secret))
	want, err := hex.DecodeString(r.SecretSHA256)
	if err != nil || subtle.ConstantTimeCompare(sum[:], want) != 1 {
		return ErrWrongSecret
	}
	if !now.Before(r.Expires) {
		return fmt.Errorf("%w at %s", ErrExpired, r.Expires.Format(time.RFC3339))
	}
	return nil
}
