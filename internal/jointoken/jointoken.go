// Package jointoken is the token with which a machine is joined to a
// cluster by hand, as k3s's secure token is: `raptiformica token create`
// prints it, `raptiformica join --token` spends it.
//
// A token reads RF1.<ca>.<id>.<secret>: the SHA-256 of the cluster's CA
// certificate, which the joining machine checks the member it asks against
// before it sends anything (so a token given to the wrong host, or caught
// by someone in the middle, proves nothing to it); the token's ID; and a
// secret of 256 bits. The cluster keeps a record per token (state.JoinToken): its type, its
// expiry, the uses it has left and the SHA-256 of its secret, never the
// secret itself, so that a reader of the KV cannot join with it.
//
// A token always names the type its machines become (the joining machine
// does not choose: a token it could name a server with would buy it the
// cluster's token and the CA key), and is spent by Redeem, one use per
// machine, by check-and-set on its record: two machines that redeem the
// last use at once cannot both have it.
package jointoken

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/raptiformica/raptiformica/internal/state"
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

// DefaultUses is how many machines a token joins unless told otherwise.
const DefaultUses = 1

// NewRecord is the record of t, for type typ, for uses machines, valid for
// ttl from now.
func NewRecord(t Token, typ string, uses int, now time.Time, ttl time.Duration) state.JoinToken {
	sum := sha256.Sum256([]byte(t.Secret))
	return state.JoinToken{ID: t.ID, SecretSHA256: hex.EncodeToString(sum[:]), Type: typ, Created: now.UTC(), Expires: now.Add(ttl).UTC(), UsesLeft: uses}
}

// Errors of Check and Redeem: a token that does not match, has expired, is
// spent, names no type, or is not (or no longer) in the cluster.
var (
	ErrWrongSecret = errors.New("join token: wrong secret")
	ErrExpired     = errors.New("join token: expired")
	ErrUsedUp      = errors.New("join token: used up")
	ErrNoType      = errors.New("join token: names no machine type (made by an older version): create another")
	ErrUnknown     = errors.New("join token: unknown or revoked")
)

// Check says whether secret matches r at now, and r may still join a
// machine.
func Check(r state.JoinToken, secret string, now time.Time) error {
	sum := sha256.Sum256([]byte(secret))
	want, err := hex.DecodeString(r.SecretSHA256)
	if err != nil || subtle.ConstantTimeCompare(sum[:], want) != 1 {
		return ErrWrongSecret
	}
	if !now.Before(r.Expires) {
		return fmt.Errorf("%w at %s", ErrExpired, r.Expires.Format(time.RFC3339))
	}
	if r.Type == "" {
		return ErrNoType
	}
	if r.UsesLeft <= 0 {
		return ErrUsedUp
	}
	return nil
}

// Folder is where the cluster keeps the records (state.JoinTokens).
type Folder = state.Folder[state.JoinToken]

// maxCASTries bounds Redeem's and Refund's retries: each lost
// check-and-set means another redeem or refund of the token won, so this
// many is only reached by a token redeemed by that many machines at once.
const maxCASTries = 64

// Redeem spends one use of token id if secret matches its record at now,
// and returns the record as it was before. It blocks until the record is
// written (or ctx ends); a check-and-set lost to another redeem reads the
// record again and checks it anew, so a use is never given twice. The
// errors are Check's, ErrUnknown, or the KV's.
func Redeem(ctx context.Context, f Folder, id, secret string, now time.Time) (state.JoinToken, error) {
	return update(ctx, f, id, func(r *state.JoinToken) error {
		if err := Check(*r, secret, now); err != nil {
			return err
		}
		r.UsesLeft--
		return nil
	})
}

// Refund gives back the use a redeem took, for a join that failed before
// the machine got its config. A token revoked meanwhile stays revoked.
func Refund(ctx context.Context, f Folder, id string) error {
	_, err := update(ctx, f, id, func(r *state.JoinToken) error {
		r.UsesLeft++
		return nil
	})
	if errors.Is(err, ErrUnknown) {
		return nil
	}
	return err
}

// update applies change to the record of token id by check-and-set, and
// returns the record before it. A record the folder refuses (too large,
// not JSON, under another ID) is as good as none: it joins nothing.
func update(ctx context.Context, f Folder, id string, change func(*state.JoinToken) error) (state.JoinToken, error) {
	for range maxCASTries {
		r, found, _, err := f.Get(ctx, id, nil)
		if err != nil && !errors.Is(err, state.ErrBadRecord) {
			return state.JoinToken{}, fmt.Errorf("read join token %s: %w", id, err)
		}
		if !found {
			return state.JoinToken{}, ErrUnknown
		}
		before, next := r, r
		if err := change(&next); err != nil {
			return before, err
		}
		_, err = f.Put(ctx, next, r.Index)
		if err == nil {
			return before, nil
		}
		if !errors.Is(err, state.ErrConflict) {
			return before, err
		}
	}
	return state.JoinToken{}, fmt.Errorf("join token %s: changed by others %d times in a row: try again", id, maxCASTries)
}

// Request is what a machine sends a member to exchange a token for its
// node config: the body of the agent's POST /v1/join.
type Request struct {
	TokenID string `json:"token_id"`
	Secret  string `json:"secret"`
	// Type, when set, is the machine type the machine expects to join
	// as: a token of another type is refused rather than spent.
	Type string `json:"type,omitempty"`
}
