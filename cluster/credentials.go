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

	"github.com/raptiformica/raptiformica/enrol"
	"github.com/raptiformica/raptiformica/internal/consulclient"
	"github.com/raptiformica/raptiformica/internal/nodeconfig"
)

// Credentials are the cluster's credentials as an operator's command finds
// them: the token new machines get, and the CA the command checks members
// with (and signs the machines it makes with, when it holds the key). With
// machine set (the command talks to $CONSUL_HTTP_ADDR, or to this
// machine's agent), they come from this machine's node config at
// nodeConfig (a member's: root reads it); what is still missing, and
// everything without machine, comes from the local cluster's folder, then
// from where Consul's own CLI looks ($CONSUL_HTTP_TOKEN,
// $CONSUL_HTTP_TOKEN_FILE, $CONSUL_CACERT). The token a command shows is
// another: the environment's first (see EnvToken), so that a person with a
// read-only token reads with it.
func (l *Local) Credentials(machine bool, nodeConfig string) enrol.Credentials {
	var cred enrol.Credentials
	if machine {
		if cfg, err := nodeconfig.Read(nodeConfig); err == nil {
			cred = enrol.Credentials{Token: cfg.ACLToken, CA: cfg.TLS.CA()}
		}
	}
	if cred.Token == "" {
		cred.Token = cmp.Or(l.Token(), EnvToken())
	}
	if cred.CA.CertPEM == "" {
		cred.CA = l.CA()
	}
	if f := os.Getenv("CONSUL_CACERT"); f != "" && cred.CA.CertPEM == "" {
		if b, err := os.ReadFile(f); err == nil {
			cred.CA.CertPEM = string(b)
		}
	}
	return cred
}

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
