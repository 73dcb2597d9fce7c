package enrol

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/raptiformica/raptiformica/internal/jointoken"
	"github.com/raptiformica/raptiformica/internal/kvschema"
	"github.com/raptiformica/raptiformica/internal/pki"
	"github.com/raptiformica/raptiformica/internal/state"
	"github.com/raptiformica/raptiformica/rules"
)

// JoinTokenSpec is what `token create` asks of a join token.
type JoinTokenSpec struct {
	// Type is the machine type its machines become; empty picks the
	// description's first client type (joinTokenType).
	Type string
	// Uses is how many machines it joins; zero is jointoken.DefaultUses.
	Uses int
	// TTL is how long it joins machines; it must be positive.
	TTL time.Duration
}

// joinTokenType is the machine type a join token asked for typ makes in
// the description p, and whether that is a Consul server: typ itself when
// the description has it; when empty, the first type by name that is not
// a server. A server is never picked for the caller: a server's node
// config holds the cluster's token and the CA key, so a token for one is
// made only when asked by name.
func joinTokenType(p *rules.Platform, typ string) (string, bool, error) {
	if typ != "" {
		mt, ok := p.Machines[typ]
		if !ok {
			return "", false, fmt.Errorf("--type %s: the description has no such machine type (it has %v)", typ, p.MachineNames())
		}
		return typ, mt.ConsulServer, nil
	}
	for _, n := range p.MachineNames() {
		if !p.Machines[n].ConsulServer {
			return n, false, nil
		}
	}
	return "", false, fmt.Errorf("the description has only server types (%v): name one with --type to make a server's token, which gives the cluster's token and the CA key", p.MachineNames())
}

// CreateJoinToken makes a join token as s asks and records it in the
// cluster c talks to; caCert is the cluster's CA, whose hash the token
// carries. It returns the token and its record, which names the type.
func CreateJoinToken(ctx context.Context, c *api.Client, p *rules.Platform, caCert string, s JoinTokenSpec) (jointoken.Token, state.JoinToken, error) {
	typ, _, err := joinTokenType(p, s.Type)
	if err != nil {
		return jointoken.Token{}, state.JoinToken{}, err
	}
	if s.TTL <= 0 {
		return jointoken.Token{}, state.JoinToken{}, fmt.Errorf("--ttl %s: must be positive", s.TTL)
	}
	uses := cmp.Or(s.Uses, jointoken.DefaultUses)
	if uses < 0 {
		return jointoken.Token{}, state.JoinToken{}, fmt.Errorf("--uses %d: must be positive", s.Uses)
	}
	hash, err := pki.Fingerprint(caCert)
	if err != nil {
		return jointoken.Token{}, state.JoinToken{}, fmt.Errorf("the cluster's CA certificate: %w", err)
	}
	tok, err := jointoken.New(hash)
	if err != nil {
		return tok, state.JoinToken{}, err
	}
	rec, err := state.JoinTokens(kvschema.New(c)).Put(ctx, jointoken.NewRecord(tok, typ, uses, time.Now(), s.TTL), 0)
	if errors.Is(err, state.ErrConflict) {
		err = errors.New("a token with its ID exists already: try again")
	}
	return tok, rec, err
}

// JoinTokens lists the records of the cluster's join tokens, oldest
// first, expired ones included (revoke removes them), and the records it
// could not read, to be shown (their IDs revoke them). It blocks on one
// read of KV.
func JoinTokens(ctx context.Context, c *api.Client) ([]state.JoinToken, []state.Bad, error) {
	recs, bad, _, err := state.JoinTokens(kvschema.New(c)).List(ctx, nil)
	if err != nil {
		return nil, nil, err
	}
	out := slices.SortedFunc(maps.Values(recs), func(a, b state.JoinToken) int { return a.Created.Compare(b.Created) })
	return out, bad, nil
}

// RevokeJoinToken removes join token id: no machine joins with it after.
// It blocks on a read and a delete in KV.
func RevokeJoinToken(ctx context.Context, c *api.Client, id string) error {
	f := kvschema.New(c).JoinTokens()
	v, _, err := f.Get(ctx, id)
	if err != nil {
		return err
	}
	if v == nil {
		return fmt.Errorf("no join token %s (`raptiformica token list`)", id)
	}
	return f.Delete(ctx, id)
}
