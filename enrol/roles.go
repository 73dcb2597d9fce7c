package enrol

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/raptiformica/raptiformica/internal/kvschema"
)

// roles are the roles a token may be made for, with `token create --role`:
// each its policy's name and rules (kvschema's); the operator's is
// Consul's global management, no policy of ours.
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
// right) on the way. It blocks on a few requests to Consul.
func CreateRoleToken(ctx context.Context, c *api.Client, role string, ttl time.Duration) (*api.ACLToken, error) {
	r, ok := roles[role]
	if !ok {
		return nil, fmt.Errorf("--role %s: want operator, read-only or metrics", role)
	}
	w := (&api.WriteOptions{}).WithContext(ctx)
	link := &api.ACLTokenPolicyLink{ID: kvschema.GlobalManagementPolicyID}
	if r.policy != "" {
		p, err := EnsurePolicy(ctx, c, r.policy, "raptiformica's "+role+" role", r.rules)
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

// RoleToken is a token CreateRoleToken made, as `token list` shows it:
// never its secret.
type RoleToken struct {
	AccessorID string
	Role       string
	Created    time.Time
	// Expires is nil for a token that never expires.
	Expires *time.Time
}

// RoleTokens lists the tokens made for roles, in Consul's order. It blocks
// on one request to Consul.
func RoleTokens(ctx context.Context, c *api.Client) ([]RoleToken, error) {
	list, _, err := c.ACL().TokenList((&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return nil, err
	}
	var out []RoleToken
	for _, t := range list {
		if role, ok := strings.CutPrefix(t.Description, roleDescription); ok {
			out = append(out, RoleToken{AccessorID: t.AccessorID, Role: role, Created: t.CreateTime, Expires: t.ExpirationTime})
		}
	}
	return out, nil
}

// RevokeRoleToken deletes the token of accessor ID id, if
// CreateRoleToken made it: nobody uses it after. A token of Consul's that
// is not a role's (a machine's, the cluster's) is refused, untouched.
func RevokeRoleToken(ctx context.Context, c *api.Client, id string) error {
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
