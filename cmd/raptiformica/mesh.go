package main

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/raptiformica/raptiformica/cluster"
	"github.com/raptiformica/raptiformica/daemon/agentapi"
	"github.com/raptiformica/raptiformica/internal/endpoint"
	"github.com/raptiformica/raptiformica/internal/nodeconfig"
	"github.com/raptiformica/raptiformica/internal/termsafe"
	"github.com/raptiformica/raptiformica/rules"
)

// localAgent is where the CLI on a machine finds its own agent: a mesh node
// serves its HTTP on loopback too.
var localAgent = net.JoinHostPort("127.0.0.1", strconv.Itoa(nodeconfig.AgentHTTPPort))

// joinCmd is join, which asks an agent to link to a member (or, run against
// a member with --agent, to a new machine) and waits until the link is up.
func joinCmd() *cobra.Command {
	c := newCommand("join HOST[:PORT]",
		"link this machine's overlay to a member (default port 9651); with --agent, have that member dial a machine instead (the original's inject); with --token, make this machine a member", nArgs(1, 1),
		"raptiformica join vps1.example.org", "raptiformica join 192.0.2.20:9651 --agent 10.0.0.5",
		"raptiformica join --token RF1.… vps1.example.org && systemctl start raptiformica")
	t := addTarget(c)
	agent := c.Flags().String("agent", localAgent, "the agent that dials, HOST[:PORT]: this machine's by default; a server's (over TLS, port 9551 unless given; its certificate must be a server's before the token is sent) to have it dial a machine that cannot dial out")
	timeout := c.Flags().Duration("timeout", time.Minute, "how long to wait for the link, or the member's answer")
	var js cluster.JoinSpec
	c.Flags().StringVar(&js.Token, "token", "", "a join token (`raptiformica token create` on a member): HOST is then a server's agent (TLS port 9551 unless given), checked by the token's CA hash and for a server's certificate; this machine's node config is written")
	c.Flags().StringVar(&js.Type, "type", "", "with --token: the machine type this machine expects to become (a token of another type is refused, unspent)")
	c.Flags().StringVar(&js.Config, "config", nodeConfigPath, "with --token: where to write the node config")
	c.Flags().StringVar(&js.DataDir, "data-dir", "/var/lib/raptiformica", "with --token: this machine's data folder")
	c.Flags().StringVar(&js.BindAddr, "bind", nodeconfig.BindAuto, "with --token: this machine's address (auto: the one with the default route)")
	c.Flags().BoolVar(&js.Force, "force", false, "with --token: replace a node config in place")
	c.RunE = func(c *cobra.Command, args []string) error {
		ctx, cancel := context.WithTimeout(c.Context(), *timeout)
		defer cancel()
		if js.Token != "" {
			js.Agent = args[0]
			cfg, err := cluster.Join(ctx, js)
			if err != nil {
				return err
			}
			fmt.Fprintf(c.OutOrStdout(), "joined as %s (type %s): wrote %s; start the agent: systemctl start raptiformica (or raptiformica agent --config %s)\n",
				termsafe.String(cfg.MachineID), termsafe.String(cfg.MachineType), js.Config, js.Config)
			return nil
		}
		a, err := t.agent(*agent)
		if err != nil {
			return err
		}
		return join(ctx, args[0], a, *timeout, c.OutOrStdout())
	}
	return c
}

func join(ctx context.Context, ep string, agent agentapi.Agent, timeout time.Duration, out io.Writer) error {
	if _, _, err := net.SplitHostPort(strings.TrimPrefix(ep, "tcp://")); err != nil {
		ep = net.JoinHostPort(strings.Trim(strings.TrimPrefix(ep, "tcp://"), "[]"), strconv.Itoa(rules.DefaultMeshPort))
	}
	u, err := endpoint.Parse(ep)
	if err != nil {
		return fmt.Errorf("%w: %v", errUsage, err)
	}
	overlay, err := agentapi.Link(ctx, agent, u)
	if err != nil {
		return fmt.Errorf("%w (waited up to %s)", err, timeout)
	}
	fmt.Fprintf(out, "agent at %s dials %s\nlink up to %s (overlay %s)\n", agent, u.Host, u.Host, termsafe.String(overlay))
	return nil
}

// localMeshProblem is why this machine's agent has no overlay link, or ""
// when it has one, runs no mesh, or does not answer.
func localMeshProblem(ctx context.Context) string {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	st, err := agentapi.FetchStatus(ctx, "127.0.0.1", nodeconfig.AgentHTTPPort, nodeconfig.AgentHTTPSPort, agentapi.Reader{})
	if err != nil || st.Mesh == nil {
		return ""
	}
	return st.Mesh.Problem
}

// meshCmd is mesh, which shows an agent's overlay: its address, links and
// why it has none; or prints the cluster's mesh secret for a machine joined
// by hand.
func meshCmd() *cobra.Command {
	c := newCommand("mesh", "show this machine's overlay: address, links, and why it has none", nArgs(0, 0),
		"raptiformica mesh", "raptiformica mesh --json | jq '.peers[] | select(.up | not)'", "raptiformica mesh --secret")
	agent := c.Flags().String("agent", localAgent, "the agent to ask, HOST[:PORT]: this machine's by default; another machine's over TLS (port 9551 unless given), with this machine's certificate, or else the operator's token (sent to a server only)")
	secret := c.Flags().Bool("secret", false, "print the cluster's mesh secret (from KV) instead, for a machine's node config")
	asJSON := jsonFlag(c)
	timeout := c.Flags().Duration("timeout", 10*time.Second, "how long to wait for the agent's answer")
	t := addTarget(c)
	c.RunE = func(c *cobra.Command, _ []string) error {
		if *secret {
			return meshSecret(c.Context(), t, c.OutOrStdout())
		}
		return showMesh(c.Context(), *agent, t.reader(), *asJSON, *timeout, c.OutOrStdout())
	}
	return c
}

// meshSecret prints the cluster's mesh secret, for a machine joined by
// hand.
func meshSecret(ctx context.Context, t *target, out io.Writer) error {
	c, err := t.client(ctx)
	if err != nil {
		return err
	}
	return cluster.WriteMeshSecret(ctx, c, out)
}

// showMesh prints what the agent at agent says of its overlay.
// Another machine's agent is read over TLS (port 9551 unless given), as r
// says.
func showMesh(ctx context.Context, agent string, r agentapi.Reader, asJSON bool, timeout time.Duration, out io.Writer) error {
	host, port, err := agentapi.ParseAddr(agent, 0)
	if err != nil {
		return fmt.Errorf("%w: --agent: %v", errUsage, err)
	}
	httpPort, httpsPort := cmp.Or(port, nodeconfig.AgentHTTPPort), cmp.Or(port, nodeconfig.AgentHTTPSPort)
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	st, err := agentapi.FetchStatus(ctx, host, httpPort, httpsPort, r)
	if err != nil {
		return err
	}
	if st.Mesh == nil {
		return fmt.Errorf("machine %s runs without the mesh (mesh = \"none\")", st.MachineID)
	}
	if asJSON {
		return writeJSON(out, st.Mesh)
	}
	return cluster.WriteMesh(out, st.MachineID, st.Mesh)
}
