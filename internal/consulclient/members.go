package consulclient

import (
	"context"

	"github.com/hashicorp/consul/api"
)

// Members lists the LAN members c's agent knows, as Agent().Members(false)
// does, but within ctx: the API's own call takes no context, and an agent
// that stops answering would hold its caller (the control loop, a status
// page) for as long as the connection stays open.
func Members(ctx context.Context, c *api.Client) ([]*api.AgentMember, error) {
	var out []*api.AgentMember
	if _, err := c.Raw().Query("/v1/agent/members", &out, (&api.QueryOptions{}).WithContext(ctx)); err != nil {
		return nil, err
	}
	return out, nil
}
