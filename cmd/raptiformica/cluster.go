package main

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/spf13/cobra"

	"github.com/raptiformica/raptiformica/backends"
	"github.com/raptiformica/raptiformica/builtin"
	"github.com/raptiformica/raptiformica/cluster"
	"github.com/raptiformica/raptiformica/daemon"
	"github.com/raptiformica/raptiformica/internal/kvschema"
	"github.com/raptiformica/raptiformica/internal/nodeconfig"
	"github.com/raptiformica/raptiformica/reconcile"
	"github.com/raptiformica/raptiformica/rules"
)

// target is the cluster a command talks to: $CONSUL_HTTP_ADDR's, or the
// local cluster in --dir (or the default folder).
type target struct {
	dir      string
	explicit bool // --dir was given
	local    *cluster.Local
	env      *api.Client // the client of $CONSUL_HTTP_ADDR, made once
	avoid    string      // a machine not to talk through: the one being destroyed
}

// addTarget gives a command --dir. Given, it wins over $CONSUL_HTTP_ADDR.
func addTarget(c *cobra.Command) *target {
	t := &target{}
	c.Flags().Func("dir", "`folder` of a local cluster (default "+cluster.DefaultDir()+")", func(s string) error {
		t.dir, t.explicit = s, true
		return nil
	})
	_ = c.MarkFlagDirname("dir")
	return t
}

// cluster is the local cluster of the folder, opened once: it keeps its
// Consul clients.
func (t *target) cluster() *cluster.Local {
	if t.local == nil {
		t.local = cluster.Open(t.dir, builtin.Registry())
	}
	return t.local
}

func (t *target) folder() string { return t.cluster().Dir }

// client connects to the cluster: $CONSUL_HTTP_ADDR unless --dir was given,
// else the Consul of a running machine of the cluster in the folder.
func (t *target) client(ctx context.Context) (*api.Client, error) {
	if !t.explicit && os.Getenv("CONSUL_HTTP_ADDR") != "" {
		if t.env == nil {
			c, err := api.NewClient(api.DefaultConfig())
			if err != nil {
				return nil, err
			}
			t.env = c
		}
		return t.env, nil
	}
	return t.cluster().ClientExcept(ctx, t.avoid)
}

// token is the ACL token the command uses and gives the machines it makes:
// Consul's environment ($CONSUL_HTTP_TOKEN, $CONSUL_HTTP_TOKEN_FILE) when
// the command talks to $CONSUL_HTTP_ADDR, else the local cluster's.
func (t *target) token() string {
	if !t.explicit && os.Getenv("CONSUL_HTTP_ADDR") != "" {
		return envToken()
	}
	return t.cluster().Token()
}

// credentials are what the command gives the machines it makes: the
// token, and the CA that signs their certificates, from the local
// cluster's identity, else this machine's node config (a member's: root
// reads it).
func (t *target) credentials() daemon.Credentials {
	if !t.explicit && os.Getenv("CONSUL_HTTP_ADDR") != "" {
		cred := daemon.Credentials{Token: envToken()}
		if cfg, err := nodeconfig.Read(nodeConfigPath); err == nil {
			cred.CA = cfg.TLS.CA()
		}
		return cred
	}
	return daemon.Credentials{Token: t.cluster().Token(), CA: t.cluster().CA()}
}

// agentToken is the token an agent acts for: Consul's environment, else
// this machine's own node config (a member's: root reads it), else the
// local cluster's.
func (t *target) agentToken() string {
	if tok := envToken(); tok != "" || t.explicit {
		return cmp.Or(tok, t.cluster().Token())
	}
	if cfg, err := nodeconfig.Read(nodeConfigPath); err == nil && cfg.ACLToken != "" {
		return cfg.ACLToken
	}
	return t.cluster().Token()
}

// nodeConfigPath is where a machine installed from the package, or adopted,
// keeps its node config.
const nodeConfigPath = "/etc/raptiformica/agent.json"

// envToken is the token Consul's own CLI would use: $CONSUL_HTTP_TOKEN or
// the file $CONSUL_HTTP_TOKEN_FILE names.
func envToken() string {
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

// backends builds the description's backends on this host, with the KV
// folders of the cluster when it answers.
func (t *target) backends(ctx context.Context, p *rules.Platform) (map[string]backends.Backend, error) {
	c, err := t.client(ctx)
	if err != nil {
		c = nil
	}
	return t.cluster().Backends(p, c)
}

func parseOpts() rules.Options { return reconcile.ParseOptions(builtin.Registry()) }

func upCmd() *cobra.Command {
	c := newCommand("up", "boot a local virtual data center and wait for it", nArgs(0, 0),
		"raptiformica up", "raptiformica up --platform deploy/examples/docker.hcl --dir /tmp/dc2")
	t := addTarget(c)
	platformFile := c.Flags().String("platform", "", "platform description (default: 3 Consul servers on the local backend)")
	timeout := c.Flags().Duration("timeout", 5*time.Minute, "how long to wait for the desired members")
	c.RunE = func(c *cobra.Command, _ []string) error {
		plat, err := t.cluster().Up(c.Context(), *platformFile, c.OutOrStdout())
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

// memberRow is one line of `members`.
type memberRow struct {
	Name    string `json:"name"`
	Address string `json:"address"`
	Status  string `json:"status"`
	Type    string `json:"machine_type"`
	State   string `json:"state"`
	Role    string `json:"role"`
	Leader  bool   `json:"leader"`
	// MeshEndpoints are where the member accepts overlay links; MeshPeers
	// the members it has a link to. Both empty without the mesh.
	MeshEndpoints []string `json:"mesh_endpoints,omitempty"`
	MeshPeers     []string `json:"mesh_peers,omitempty"`
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
		return printMembers(cl, c.OutOrStdout(), *asJSON)
	}
	return c
}

func printMembers(c *api.Client, out io.Writer, asJSON bool) error {
	members, err := c.Agent().Members(false)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	store := kvschema.New(c)
	recs, _, err := (&reconcile.Inventory{Store: store}).List(ctx, nil)
	if err != nil {
		return err
	}
	leader := store.Leader(ctx)
	meshNodes, err := daemon.MeshNodes(ctx, store)
	if err != nil {
		return err
	}
	nameOf := map[string]string{}
	for _, m := range members {
		nameOf[m.Addr] = m.Name
	}
	rows := []memberRow{}
	for _, m := range members {
		role := "client"
		if m.Tags[api.MemberTagKeyRole] == api.MemberTagValueRoleServer {
			role = "server"
		}
		r := recs[m.Name]
		row := memberRow{Name: m.Name, Address: m.Addr, Status: string(reconcile.SerfStatus(m.Status)), Type: r.Type, State: string(r.State), Role: role, Leader: m.Name == leader}
		if mn, ok := meshNodes[m.Name]; ok {
			row.MeshEndpoints = mn.Endpoints
			for _, l := range mn.Links {
				row.MeshPeers = append(row.MeshPeers, cmp.Or(nameOf[l], l))
			}
			sort.Strings(row.MeshPeers)
		}
		rows = append(rows, row)
	}
	sort.Slice(rows, func(i, j int) bool { return rows[i].Name < rows[j].Name })
	if asJSON {
		return writeJSON(out, rows)
	}
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	withMesh := len(meshNodes) > 0
	head := "NODE\tADDRESS\tSTATUS\tTYPE\tSTATE\tROLE\tLEADER"
	if withMesh {
		head += "\tMESH ENDPOINTS\tMESH PEERS"
	}
	fmt.Fprintln(w, head)
	for _, r := range rows {
		mark := ""
		if r.Leader {
			mark = "*"
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s", r.Name, r.Address, r.Status, dash(r.Type), dash(r.State), r.Role, mark)
		if withMesh {
			fmt.Fprintf(w, "\t%s\t%s", dash(strings.Join(r.MeshEndpoints, ",")), dash(strings.Join(r.MeshPeers, ",")))
		}
		fmt.Fprintln(w)
	}
	return w.Flush()
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func writeJSON(out io.Writer, v any) error {
	enc := json.NewEncoder(out)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
