package consulclient

import (
	"context"
	"fmt"
	"net/url"

	"github.com/hashicorp/consul/api"
)

// The Consul API's agent calls below take no context: an agent that
// accepts the connection and stops answering would hold the caller (the
// control loop, the quorum watch, a status page) for as long as the
// connection stays open. These are the same requests within ctx.

// Members lists the LAN members c's agent knows, as Agent().Members(false).
func Members(ctx context.Context, c *api.Client) ([]*api.AgentMember, error) {
	var out []*api.AgentMember
	if _, err := c.Raw().Query("/v1/agent/members", &out, (&api.QueryOptions{}).WithContext(ctx)); err != nil {
		return nil, fmt.Errorf("consul members: %w", err)
	}
	return out, nil
}

// Self is the agent's configuration and statistics, as Agent().Self().
func Self(ctx context.Context, c *api.Client) (map[string]map[string]any, error) {
	var out map[string]map[string]any
	if _, err := c.Raw().Query("/v1/agent/self", &out, (&api.QueryOptions{}).WithContext(ctx)); err != nil {
		return nil, err
	}
	return out, nil
}

// Join asks the agent to join the LAN member at addr, as Agent().Join.
func Join(ctx context.Context, c *api.Client, addr string) error {
	_, err := c.Raw().Write("/v1/agent/join/"+url.PathEscape(addr), nil, nil, (&api.WriteOptions{}).WithContext(ctx))
	return err
}

// Leave asks the agent to leave the cluster gracefully, as Agent().Leave.
func Leave(ctx context.Context, c *api.Client) error {
	_, err := c.Raw().Write("/v1/agent/leave", nil, nil, (&api.WriteOptions{}).WithContext(ctx))
	return err
}

// Leader is the address of the Raft leader the agent knows, "" when there
// is none, as Status().Leader().
func Leader(ctx context.Context, c *api.Client) (string, error) {
	return c.Status().LeaderWithQueryOptions((&api.QueryOptions{}).WithContext(ctx))
}
