package main

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/spf13/cobra"

	"github.com/raptiformica/raptiformica/builtin"
	"github.com/raptiformica/raptiformica/cluster"
	"github.com/raptiformica/raptiformica/daemon/agentapi"
	"github.com/raptiformica/raptiformica/enrol"
	"github.com/raptiformica/raptiformica/internal/consulclient"
	"github.com/raptiformica/raptiformica/internal/nodeconfig"
	"github.com/raptiformica/raptiformica/internal/pki"
	"github.com/raptiformica/raptiformica/internal/termsafe"
	"github.com/raptiformica/raptiformica/localdc"
	"github.com/raptiformica/raptiformica/rules"
)

// target is the cluster a command talks to: $CONSUL_HTTP_ADDR's, or the
// local cluster in --dir (or the default folder).
type target struct {
	dir      string
	explicit bool // --dir was given
	local    *localdc.Local
	env      *api.Client // the client of $CONSUL_HTTP_ADDR, made once
	avoid    string      // a machine not to talk through: the one being destroyed
}

// addTarget gives a command --dir. Given, it wins over $CONSUL_HTTP_ADDR.
func addTarget(c *cobra.Command) *target {
	t := &target{}
	c.Flags().Func("dir", "`folder` of a local cluster (default "+localdc.DefaultDir()+")", func(s string) error {
		t.dir, t.explicit = s, true
		return nil
	})
	_ = c.MarkFlagDirname("dir")
	return t
}

// cluster is the local cluster of the folder, opened once: it keeps its
// Consul clients.
func (t *target) cluster() *localdc.Local {
	if t.local == nil {
		t.local = localdc.Open(t.dir, builtin.Registry())
	}
	return t.local
}

func (t *target) folder() string { return t.cluster().Dir }

// client connects to the cluster: $CONSUL_HTTP_ADDR unless --dir was given;
// else the Consul of a running machine of the cluster in the folder; else,
// on a member with no local cluster (installed from the package, adopted,
// joined), its own Consul on loopback, with its node config's token.
func (t *target) client(ctx context.Context) (*api.Client, error) {
	if t.env != nil {
		return t.env, nil
	}
	if t.viaEnv() {
		cfg := api.DefaultConfig()
		if cfg.Token == "" && cfg.TokenFile == "" {
			cfg.Token = t.credentials().Token
		}
		if cfg.Scheme == "https" && cfg.TLSConfig.CAFile == "" && cfg.TLSConfig.CAPath == "" {
			cfg.TLSConfig.CAPem = []byte(t.credentials().CA.CertPEM)
			cfg.TLSConfig.Address = cmp.Or(cfg.TLSConfig.Address, pki.ServerName)
		}
		c, err := consulclient.FromConfig(cfg, 0)
		t.env = c
		return c, err
	}
	if node, err := nodeconfig.Read(nodeConfigPath); err == nil && !t.explicit && t.cluster().Token() == "" {
		c, err := cluster.MemberClient(ctx, node)
		t.env = c
		return c, err
	}
	return t.cluster().ClientExcept(ctx, t.avoid)
}

// viaEnv reports whether the command talks to $CONSUL_HTTP_ADDR.
func (t *target) viaEnv() bool { return !t.explicit && os.Getenv("CONSUL_HTTP_ADDR") != "" }

// credentials are what the command shows and gives the machines it makes:
// Consul's environment and this machine's node config when it talks to
// $CONSUL_HTTP_ADDR or runs on a member with no local cluster, else the
// local cluster's (localdc.Local.Credentials).
func (t *target) credentials() enrol.Credentials {
	return t.cluster().Credentials(!t.explicit && (t.viaEnv() || t.cluster().Token() == ""), nodeConfigPath)
}

// agent is the agent at addr (HOST[:PORT]) with the credentials to ask it
// to act: this machine's own unless --dir names a local cluster.
//
// This machine's own agent, asked with its node config's token, is asked
// on its unix socket where it has one, not on loopback.
func (t *target) agent(addr string) (agentapi.Agent, error) {
	cred := t.cluster().Credentials(!t.explicit, nodeConfigPath)
	a, err := agentapi.NewAgent(addr, cmp.Or(cluster.EnvToken(), cred.Token), cred.CA.CertPEM)
	if err != nil {
		return a, fmt.Errorf("%w: --agent: %v", errUsage, err)
	}
	if node, err := nodeconfig.Read(nodeConfigPath); err == nil && addr == localAgent && !t.explicit {
		if sock := consulclient.AgentSocket(node); sock != "" {
			if fi, err := os.Stat(sock); err == nil && fi.Mode()&os.ModeSocket != 0 {
				a.Socket = sock
			}
		}
	}
	return a, nil
}

// reader is how this machine reads another's agent: with its own
// certificate when it is a member (its node config), else with the
// operator's token and the cluster's CA.
func (t *target) reader() agentapi.Reader {
	if node, err := nodeconfig.Read(nodeConfigPath); err == nil && node.TLS != nil && !t.explicit {
		return agentapi.Reader{CACert: node.TLS.CACert, Cert: node.TLS.Cert, Key: node.TLS.Key}
	}
	cred := t.credentials()
	return agentapi.Reader{CACert: cred.CA.CertPEM, Token: cmp.Or(cluster.EnvToken(), cred.Token)}
}

// nodeConfigPath is where a machine installed from the package, or adopted,
// keeps its node config.
const nodeConfigPath = "/etc/raptiformica/agent.json"

func parseOpts() rules.Options { return builtin.ParseOptions() }

func upCmd() *cobra.Command {
	c := newCommand("up", "boot a local virtual data center and wait for it", nArgs(0, 0),
		"raptiformica up", "raptiformica up --platform deploy/examples/docker.hcl --dir /tmp/dc2")
	t := addTarget(c)
	platformFile := c.Flags().String("platform", "", "platform description (default: 3 Consul servers on the local backend)")
	timeout := c.Flags().Duration("timeout", 5*time.Minute, "how long to wait for the desired members")
	c.RunE = func(c *cobra.Command, _ []string) error {
		plat, err := t.cluster().Up(c.Context(), *platformFile, termsafe.NewWriter(c.OutOrStdout()))
		if err != nil {
			return err
		}
		return waitAndPrint(c.Context(), t, plat, *timeout, c.OutOrStdout())
	}
	return c
}

// kvPlatform is the description the cluster stores.
func kvPlatform(ctx context.Context, c *api.Client) (*rules.Platform, error) {
	return cluster.Platform(ctx, c, parseOpts())
}

func downCmd() *cobra.Command {
	c := newCommand("down", "stop every local machine of DIR (the description stays for the next up)", nArgs(0, 0),
		"raptiformica down", "raptiformica down --dir /tmp/dc2")
	t := addTarget(c)
	c.RunE = func(c *cobra.Command, _ []string) error { return down(c.Context(), t, c.OutOrStdout()) }
	return c
}

func down(ctx context.Context, t *target, out io.Writer) error {
	n, err := t.cluster().Down(ctx)
	fmt.Fprintf(out, "stopped %d machines in %s\n", n, t.folder())
	return err
}

func membersCmd() *cobra.Command {
	c := newCommand("members", "list the cluster's members with type, state, role and the leader", nArgs(0, 0),
		"raptiformica members", "raptiformica members --json | jq -r '.[] | select(.status != \"alive\") | .name'")
	t := addTarget(c)
	asJSON := jsonFlag(c)
	c.RunE = func(c *cobra.Command, _ []string) error {
		cl, err := t.client(c.Context())
		if err != nil {
			return err
		}
		return printMembers(c.Context(), cl, c.OutOrStdout(), *asJSON)
	}
	return c
}

func printMembers(ctx context.Context, c *api.Client, out io.Writer, asJSON bool) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	rows, withMesh, err := cluster.Members(ctx, c, parseOpts())
	if err != nil {
		return err
	}
	if asJSON {
		return writeJSON(out, rows)
	}
	return cluster.WriteMembers(out, rows, withMesh)
}

// writeJSON prints v as indented JSON, with what members wrote kept as
// it is but as JSON escapes (termsafe.JSON): `--json` read on a terminal
// is printed there too.
func writeJSON(out io.Writer, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	_, err = out.Write(append(termsafe.JSON(b), '\n'))
	return err
}
