package cluster

import (
	"cmp"
	"os"
	"strings"

	"github.com/raptiformica/raptiformica/daemon"
	"github.com/raptiformica/raptiformica/internal/nodeconfig"
)

// Credentials are the cluster's credentials as an operator's command finds
// them: the token it shows, and the CA it checks members with (and signs
// the machines it makes with, when it holds the key). With machine set
// (the command talks to $CONSUL_HTTP_ADDR, or to this machine's agent),
// they come from where Consul's own CLI looks ($CONSUL_HTTP_TOKEN,
// $CONSUL_HTTP_TOKEN_FILE, $CONSUL_CACERT), then from this machine's node
// config at nodeConfig (a member's: root reads it); what is still missing,
// and everything without machine, comes from the local cluster's folder.
func (l *Local) Credentials(machine bool, nodeConfig string) daemon.Credentials {
	var cred daemon.Credentials
	if machine {
		cred.Token = EnvToken()
		if f := os.Getenv("CONSUL_CACERT"); f != "" {
			if b, err := os.ReadFile(f); err == nil {
				cred.CA.CertPEM = string(b)
			}
		}
		if cfg, err := nodeconfig.Read(nodeConfig); err == nil {
			cred.Token = cmp.Or(cred.Token, cfg.ACLToken)
			if ca := cfg.TLS.CA(); cred.CA.CertPEM == "" || cred.CA.CertPEM == ca.CertPEM {
				cred.CA = ca
			}
		}
	}
	if cred.Token == "" {
		cred.Token = l.Token()
	}
	if cred.CA.CertPEM == "" {
		cred.CA = l.CA()
	}
	return cred
}

// EnvToken is the token Consul's own CLI would use: $CONSUL_HTTP_TOKEN or
// the file $CONSUL_HTTP_TOKEN_FILE names.
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
