package cluster

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/raptiformica/raptiformica/enrol"
	"github.com/raptiformica/raptiformica/internal/kvschema"
	"github.com/raptiformica/raptiformica/internal/state"
)

// Token is one line of `token list`: a join token, or a token made for a
// role; never a secret.
type Token struct {
	// ID is a join token's ID, or a role token's accessor ID.
	ID   string `json:"id"`
	Kind string `json:"kind"` // join or role
	// For is the machine type a join token makes ("" for any), or the
	// role.
	For     string     `json:"for"`
	Created time.Time  `json:"created"`
	Expires *time.Time `json:"expires,omitempty"`
}

// RevokeToken removes a join token (by its ID) or a token made for a role
// (by its accessor ID, a UUID): nobody uses it after.
func RevokeToken(ctx context.Context, c *api.Client, id string) error {
	if len(id) != 36 {
		return enrol.RevokeJoinToken(ctx, c, id)
	}
	return enrol.RevokeRoleToken(ctx, c, id)
}

// JoinTokenLine is one line of `token list`: a token, with the uses a join
// token has left.
type JoinTokenLine struct {
	Token
	// UsesLeft is how many more machines a join token joins; nil for a
	// role's token.
	UsesLeft *int `json:"uses_left,omitempty"`
}

// TokenList is the cluster's join tokens, oldest first, expired ones
// included, each with its uses left, then the tokens made for roles. A
// join token's record that cannot be read is listed by its ID with why,
// so that it can be revoked.
func TokenList(ctx context.Context, c *api.Client) ([]JoinTokenLine, error) {
	recs, bad, err := enrol.JoinTokens(ctx, c)
	if err != nil {
		return nil, err
	}
	var out []JoinTokenLine
	for _, r := range recs {
		out = append(out, JoinTokenLine{
			Token:    Token{ID: r.ID, Kind: "join", For: r.Type, Created: r.Created, Expires: &r.Expires},
			UsesLeft: &r.UsesLeft,
		})
	}
	for _, b := range bad {
		id, _ := state.IDOf(kvschema.JoinTokens, b.Key)
		out = append(out, JoinTokenLine{Token: Token{ID: id, Kind: "join", For: "unreadable, refused: " + b.Error}})
	}
	roles, err := enrol.RoleTokens(ctx, c)
	if err != nil {
		return nil, err
	}
	for _, t := range roles {
		out = append(out, JoinTokenLine{Token: Token{ID: t.AccessorID, Kind: "role", For: t.Role, Created: t.Created, Expires: t.Expires}})
	}
	return out, nil
}

// WriteTokenList prints lines as `token list` shows them (WriteTokens),
// a join token's uses left after its type.
func WriteTokenList(out io.Writer, lines []JoinTokenLine, now time.Time) error {
	toks := make([]Token, len(lines))
	for i, l := range lines {
		toks[i] = l.Token
		switch {
		case l.UsesLeft == nil:
		case *l.UsesLeft <= 0:
			toks[i].For += ", used up"
		case *l.UsesLeft == 1:
			toks[i].For += ", 1 use left"
		default:
			toks[i].For += fmt.Sprintf(", %d uses left", *l.UsesLeft)
		}
	}
	return writeTokens(out, toks, now)
}
