package cluster

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/raptiformica/raptiformica/daemon"
	"github.com/raptiformica/raptiformica/internal/kvschema"
)

// Roles a token may be made for, with `token create --role`.
var roles = map[string]struct{ policy, rules string }{
	"operator":  {},
	"read-only": {kvschema.ReadOnlyPolicy, kvschema.ReadOnlyRules},
	"metrics":   {kvschema.MetricsPolicy, kvschema.MetricsRules},
}

// roleDescription starts the description of every token made for a role,
// so that `token list` finds them among Consul's.
const roleDescription = "raptiformica role "

// CreateRoleToken makes a Consul ACL token for role (operator, read-only
// or metrics), expiring after ttl unless it is zero, and returns it. It
// needs an operator's token: the policies of the roles are made (or made
// right) on the way.
func CreateRoleToken(ctx context.Context, c *api.Client, role string, ttl time.Duration) (*api.ACLToken, error) {
	r, ok := roles[role]
	if !ok {
		return nil, fmt.Errorf("--role %s: want operator, read-only or metrics", role)
	}
	w := (&api.WriteOptions{}).WithContext(ctx)
	link := &api.ACLTokenPolicyLink{ID: kvschema.GlobalManagementPolicyID}
	if r.policy != "" {
		p, err := daemon.EnsurePolicy(ctx, c, r.policy, "raptiformica's "+role+" role", r.rules)
		if err != nil {
			return nil, err
		}
		link = &api.ACLTokenPolicyLink{ID: p.ID}
	}
	tok := &api.ACLToken{Description: roleDescription + role, Policies: []*api.ACLTokenPolicyLink{link}, ExpirationTTL: ttl}
	out, _, err := c.ACL().TokenCreate(tok, w)
	if err != nil {
		return nil, fmt.Errorf("create the %s token: %w", role, err)
	}
	return out, nil
}

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

// Tokens lists the cluster's join tokens, expired ones included, then the
// tokens made for roles.
func Tokens(ctx context.Context, c *api.Client) ([]Token, error) {
	recs, err := joinTokens(ctx, c)
	if err != nil {
		return nil, err
	}
	var out []Token
	for _, r := range recs {
		out = append(out, Token{ID: r.ID, Kind: "join", For: r.Type, Created: r.Created, Expires: &r.Expires})
	}
	list, _, err := c.ACL().TokenList((&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return nil, err
	}
	for _, t := range list {
		if role, ok := strings.CutPrefix(t.Description, roleDescription); ok {
			out = append(out, Token{ID: t.AccessorID, Kind: "role", For: role, Created: t.CreateTime, Expires: t.ExpirationTime})
		}
	}
	return out, nil
}

// RevokeToken removes a join token (by its ID) or a token made for a role
// (by its accessor ID, a UUID): nobody uses it after.
func RevokeToken(ctx context.Context, c *api.Client, id string) error {
	if len(id) != 36 {
		return revokeJoinToken(ctx, c, id)
	}
	t, _, err := c.ACL().TokenRead(id, (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return fmt.Errorf("token %s: %w", id, err)
	}
	if t == nil || !strings.HasPrefix(t.Description, roleDescription) {
		return errors.New("token " + id + " was not made by `raptiformica token create --role`")
	}
	_, err = c.ACL().TokenDelete(id, (&api.WriteOptions{}).WithContext(ctx))
	return err
}
