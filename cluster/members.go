package cluster

import (
	"context"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"

	"github.com/hashicorp/consul/api"

	"github.com/raptiformica/raptiformica/internal/consulclient"
	"github.com/raptiformica/raptiformica/internal/kvschema"
	"github.com/raptiformica/raptiformica/internal/state"
	"github.com/raptiformica/raptiformica/internal/termsafe"
	"github.com/raptiformica/raptiformica/mesh"
	"github.com/raptiformica/raptiformica/mesh/peering"
	"github.com/raptiformica/raptiformica/reconcile"
	"github.com/raptiformica/raptiformica/rules"
)

// Member is one line of `members`: a Consul member with what the
// inventory, the lock and the mesh say of it.
type Member struct {
	Name    string `json:"name"`
	Address string `json:"address"`
	Status  string `json:"status"`
	Type    string `json:"machine_type"`
	State   string `json:"state"`
	Role    string `json:"role"`
	Leader  bool   `json:"leader"`
	// MeshEndpoints are where the member accepts overlay links; MeshPeers
	// the members the mesh's rule links it to (mesh.Links). Both
	// empty without the mesh.
	MeshEndpoints []string `json:"mesh_endpoints,omitempty"`
	MeshPeers     []string `json:"mesh_peers,omitempty"`
	// Offers are the backends the member can run, as its agent found on
	// it; nil when it published no offer (an older agent, or just started).
	Offers []string `json:"offers"`
	// OfferDetails say how the member runs an offered backend's machines,
	// where the backend tells (qemu: kvm or tcg), by backend.
	OfferDetails map[string]string `json:"offer_details,omitempty"`
	// NotOffered are the backends the member cannot run, with why.
	NotOffered map[string]string `json:"not_offered,omitempty"`
	// Arch ("linux/arm64") and Version are the member's and its agent's,
	// as its offer says; ConsulVersion its Consul's, as its Consul
	// gossips it. Empty where nothing says.
	Arch          string `json:"arch,omitempty"`
	Version       string `json:"version,omitempty"`
	ConsulVersion string `json:"consul_version,omitempty"`
	// Provisioned is the member's provisioning: ok, running, failed,
	// outdated (done for an earlier description) or waiting (nothing
	// published yet); empty when its type provisions nothing.
	Provisioned string `json:"provisioned,omitempty"`
}

// Members lists the cluster's members by name, and whether it runs the
// mesh. opts parse the description, which says which types provision.
func Members(ctx context.Context, c *api.Client, opts rules.Options) ([]Member, bool, error) {
	members, err := consulclient.Members(ctx, c)
	if err != nil {
		return nil, false, err
	}
	store := kvschema.New(c)
	recs, _, err := (&reconcile.Inventory{Store: store}).List(ctx, nil)
	if err != nil {
		return nil, false, err
	}
	leader := store.Leader(ctx)
	meshNodes, err := mesh.ReadEntries(ctx, store)
	if err != nil {
		return nil, false, err
	}
	maxLinks := peering.DefaultMaxLinks
	if p, err := Platform(ctx, c, rules.Options{}); err == nil {
		maxLinks = p.Mesh.Links()
	}
	meshLinks := mesh.Links(meshNodes, maxLinks)
	offers, _, _, err := state.Offers(store).List(ctx, nil)
	if err != nil {
		return nil, false, err
	}
	provisioned, err := Provisioning(ctx, store)
	if err != nil {
		return nil, false, err
	}
	// The description says which types provision and for what checksum;
	// without a valid one the records are shown as they are.
	plat, _ := Platform(ctx, c, opts)
	rows := []Member{}
	for _, m := range members {
		role := "client"
		if m.Tags[api.MemberTagKeyRole] == api.MemberTagValueRoleServer {
			role = "server"
		}
		r := recs[m.Name]
		row := Member{Name: m.Name, Address: m.Addr, Status: string(reconcile.SerfStatus(m.Status)), Type: r.Type, State: string(r.State), Role: role, Leader: m.Name == leader}
		// Consul's "build" tag is its version, then ":" and its commit.
		row.ConsulVersion, _, _ = strings.Cut(m.Tags["build"], ":")
		if o, ok := offers[m.Name]; ok {
			row.Offers = append([]string{}, o.Offered()...)
			row.Arch, row.Version = o.Arch, o.Version
			for name, b := range o.Backends {
				switch {
				case b.Available && b.Detail != "":
					if row.OfferDetails == nil {
						row.OfferDetails = map[string]string{}
					}
					row.OfferDetails[name] = b.Detail
				case !b.Available:
					if row.NotOffered == nil {
						row.NotOffered = map[string]string{}
					}
					row.NotOffered[name] = b.Reason
				}
			}
		}
		pr, has := provisioned[m.Name]
		row.Provisioned = provisionState(plat, r.Type, pr, has)
		if mn, ok := meshNodes[m.Name]; ok {
			row.MeshEndpoints = mn.Endpoints
			row.MeshPeers = meshLinks[m.Name]
		}
		rows = append(rows, row)
	}
	sort.Slice(rows, func(i, j int) bool { return rows[i].Name < rows[j].Name })
	return rows, len(meshNodes) > 0, nil
}

// offered is a member's offers for the table, each with its detail in
// parentheses: "?" when it published none, "-" when it offers nothing.
func offered(r Member) string {
	if r.Offers == nil {
		return "?"
	}
	out := make([]string, len(r.Offers))
	for i, name := range r.Offers {
		out[i] = name
		if d := r.OfferDetails[name]; d != "" {
			out[i] += "(" + cut(d, 20) + ")"
		}
	}
	return list(out, ",")
}

// cut shortens what a member wrote to n runes for a line of the table: a
// reason is a sentence, and a hostile member's page of text is not shown
// whole (--json has it all).
func cut(s string, n int) string {
	if r := []rune(s); len(r) > n {
		return string(r[:n]) + "…"
	}
	return s
}

// notOffered groups the members by the backend they do not offer and why,
// so that ten hosts without Docker make one line, not ten.
func notOffered(rows []Member) []string {
	type key struct{ backend, reason string }
	by := map[key][]string{}
	for _, r := range rows {
		for b, why := range r.NotOffered {
			k := key{b, why}
			by[k] = append(by[k], r.Name)
		}
	}
	out := make([]string, 0, len(by))
	for k, names := range by {
		sort.Strings(names)
		out = append(out, fmt.Sprintf("%s is not offered by %s: %s", safe(k.backend), list(names, ", "), safe(cut(k.reason, 300))))
	}
	sort.Strings(out)
	return out
}

// list is items joined by sep, each escaped (termsafe.String) since a
// member wrote them, or "-" for none.
func list(items []string, sep string) string {
	out := make([]string, len(items))
	for i, s := range items {
		out[i] = termsafe.String(s)
	}
	return orDash(strings.Join(out, sep))
}

// WriteMembers writes rows as a table for a person, the mesh's columns
// only when the cluster runs the mesh. Every field is escaped
// (termsafe.String): the members wrote them.
func WriteMembers(out io.Writer, rows []Member, withMesh bool) error {
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	head := "NODE\tADDRESS\tSTATUS\tTYPE\tSTATE\tROLE\tLEADER\tOFFERS\tPROVISIONED\tARCH\tVERSION\tCONSUL"
	if withMesh {
		head += "\tMESH ENDPOINTS\tMESH PEERS"
	}
	fmt.Fprintln(w, head)
	for _, r := range rows {
		mark := ""
		if r.Leader {
			mark = "*"
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s", safe(r.Name), safe(r.Address), safe(r.Status), cell(r.Type), cell(r.State), safe(r.Role), mark, offered(r), cell(r.Provisioned), cell(strings.TrimPrefix(r.Arch, "linux/")), cell(cut(r.Version, 40)), cell(r.ConsulVersion))
		if withMesh {
			fmt.Fprintf(w, "\t%s\t%s", list(r.MeshEndpoints, ","), list(r.MeshPeers, ","))
		}
		fmt.Fprintln(w)
	}
	if err := w.Flush(); err != nil {
		return err
	}
	if lines := notOffered(rows); len(lines) > 0 {
		fmt.Fprintln(out)
		for _, l := range lines {
			fmt.Fprintln(out, l)
		}
	}
	return nil
}
