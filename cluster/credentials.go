package cluster

import (
	"cmp"
	"os"
	"strings"

	"github.com/raptiformica/raptiformica/daemon"
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
func (l *Local) Credentials(machine bool, nodeConfig string) daemon.Credentials {
	var cred daemon.Credentials
	if machine {
		if cfg, err := nodeconfig.Read(nodeConfig); err == nil {
			cred = daemon.Credentials{Token: cfg.ACLToken, CA: cfg.TLS.CA()}
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
