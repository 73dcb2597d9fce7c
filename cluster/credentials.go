package cluster

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/raptiformica/raptiformica/internal/consulclient"
	"github.com/raptiformica/raptiformica/internal/nodeconfig"
)

// EnvToken is the token Consul's own CLI would use: $CONSUL_HTTP_TOKEN or
// the file $CONSUL_HTTP_TOKEN_FILE names. Commands talk to Consul and to
// agents with it when it is set.
func EnvToken() string {
	if tok := os.Getenv("CONSUL_HTTP_TOKEN"); tok != "" {
		return tok
	}
	if f := os.Getenv("CONSUL_HTTP_TOKEN_FILE"); f != "" {
		if b, err := os.ReadFile(f); err == nil {
			return strings.TrimSpace(string(b))
		}
	}
	return ""
}

// MemberClient is the client of this machine's own Consul, on loopback,
// for a member with no local cluster folder (installed from the package,
// adopted, joined): with the environment's token, else its node config's.
// A Consul without a cluster leader is an error, as for Local.Client: the
// machine then has nothing to ask.
func MemberClient(ctx context.Context, node nodeconfig.Config) (*api.Client, error) {
	node.ACLToken = cmp.Or(EnvToken(), node.ACLToken)
	c, err := consulclient.Local(node)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	leader, err := c.Status().LeaderWithQueryOptions((&api.QueryOptions{}).WithContext(ctx))
	if err == nil && leader == "" {
		err = errors.New("no Consul leader yet")
	}
	if err != nil {
		return nil, fmt.Errorf("this machine's Consul (%s): %w", consulclient.LocalHost(node), err)
	}
	return c, nil
}
