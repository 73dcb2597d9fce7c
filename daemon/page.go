package daemon

import (
	"cmp"
	"context"
	_ "embed"
	"html/template"
	"maps"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/raptiformica/raptiformica/daemon/agentapi"
	"github.com/raptiformica/raptiformica/internal/consulclient"
	"github.com/raptiformica/raptiformica/internal/state"
	"github.com/raptiformica/raptiformica/internal/telemetry"
	"github.com/raptiformica/raptiformica/internal/termsafe"
	"github.com/raptiformica/raptiformica/reconcile"
)

//go:embed page.html.tmpl
var pageSource string

// pageTemplate is the status page. It is one self-contained document (no
// script, no external asset) so it works offline and in any browser; it
// reloads itself every few seconds. It is html/template, not text/template:
// most of what it shows, members wrote.
var pageTemplate = template.Must(template.New("page").Funcs(template.FuncMap{
	"ago": func(now, t time.Time) string {
		if t.IsZero() {
			return "never"
		}
		return now.Sub(t).Round(time.Second).String() + " ago"
	},
	"join": strings.Join,
}).Parse(pageSource))

// pageMember is one row of the members table: the inventory's record beside
// what Consul's gossip says of the machine.
type pageMember struct {
	ID, Type, Backend, Address, State, Health, Role, Reason string
	Leader                                                  bool
	// Provisioned is the machine's provisioning state, with the last line
	// of a failure; empty when its type provisions nothing.
	Provisioned string
	ProvisionOK bool
	// Host is the member that made the machine, when not the leader of
	// the time; Offers the backends the machine's agent can run, as it
	// published them ("?" when it published none).
	Host, Offers string
}

// pageData is what the status page shows.
type pageData struct {
	Now     time.Time
	Self    agentapi.AgentStatus
	Members []pageMember
	// Problems says why anything is blocked, in plain words.
	Problems []string
	Types    []pageType
	// MembersError is set when the members could not be read.
	MembersError string
}

type pageType struct {
	Name string
	state.TypeStatus
	Short bool // fewer live than min
}

// pageView gathers the page's data from this node's status, the inventory
// and Consul's members. While quorum is lost only what this node knows is
// shown: KV reads would hang.
func (h *httpServer) pageView(ctx context.Context) pageData {
	d := pageData{Now: h.clock.Now(), Self: h.status()}
	if q := d.Self.Quorum; q != nil {
		if q.Lost {
			d.Problems = append(d.Problems, "Consul has lost quorum: no leader since "+q.LeaderlessSince.Format(time.RFC3339)+". "+q.Recovery)
		} else {
			d.Problems = append(d.Problems, "Consul has no leader since "+q.LeaderlessSince.Format(time.RFC3339)+" (waiting before calling quorum lost)")
		}
	}
	if m := d.Self.Mesh; m != nil && m.Problem != "" {
		d.Problems = append(d.Problems, "This machine has no overlay link: "+m.Problem)
	}
	if d.Self.PlatformError != "" {
		d.Problems = append(d.Problems, "The description in KV was rejected; every node runs its last good one: "+d.Self.PlatformError)
	}
	if d.Self.MirrorError != "" {
		d.Problems = append(d.Problems, "This machine's copy of the cluster's state on disk is unusable: "+d.Self.MirrorError)
	}
	if st := d.Self.Reconcile; st != nil {
		if st.Halted != "" {
			d.Problems = append(d.Problems, "Replacement halted: "+st.Halted)
		}
		d.Problems = append(d.Problems, st.Waiting...)
		for _, b := range slices.Sorted(maps.Keys(st.BackendErrors)) {
			if len(st.OfferedBy[b]) > 0 {
				continue // it runs on the members that offer it
			}
			d.Problems = append(d.Problems, "Backend "+b+": "+st.BackendErrors[b])
		}
		for _, b := range st.BadRecords {
			d.Problems = append(d.Problems, "Bad record, refused and not acted on: "+b.String())
		}
		if st.LastError != "" {
			d.Problems = append(d.Problems, "Last reconcile pass failed: "+st.LastError)
		}
		for _, name := range slices.Sorted(maps.Keys(st.Types)) {
			ts := st.Types[name]
			d.Types = append(d.Types, pageType{Name: name, TypeStatus: ts, Short: ts.Live < ts.Min})
		}
	}
	if q := d.Self.Quorum; q != nil {
		for _, s := range q.Servers {
			d.Members = append(d.Members, pageMember{ID: s.Name, Address: s.Address, Health: string(s.Status), Role: "server"})
		}
		return d
	}
	recs, _, err := h.inventory.List(ctx, nil)
	if err != nil {
		d.MembersError = err.Error()
		return d
	}
	members, err := consulclient.Members(ctx, h.consul)
	if err != nil {
		d.MembersError = err.Error()
		return d
	}
	health := map[string]string{}
	role := map[string]string{}
	for _, m := range members {
		health[m.Name] = string(reconcile.SerfStatus(m.Status))
		role[m.Name] = "client"
		if m.Tags[api.MemberTagKeyRole] == api.MemberTagValueRoleServer {
			role[m.Name] = "server"
		}
		if _, ok := recs[m.Name]; !ok {
			// A member without a record: joined by hand, or its record
			// is being written.
			d.Members = append(d.Members, pageMember{ID: m.Name, Address: m.Addr, Health: health[m.Name], Role: role[m.Name], State: "no record"})
		}
	}
	for _, r := range recs {
		h := health[r.ID]
		if h == "" {
			h = "not a member"
		}
		d.Members = append(d.Members, pageMember{
			ID: r.ID, Type: r.Type, Backend: r.Backend, Address: r.Address, State: string(r.State),
			Health: h, Role: role[r.ID], Reason: r.Reason, Leader: r.ID == d.Self.Leader, Host: r.Host,
		})
	}
	h.addProvisioning(ctx, d.Members)
	h.addOffers(ctx, d.Members)
	slices.SortFunc(d.Members, func(x, y pageMember) int { return strings.Compare(x.ID, y.ID) })
	return d
}

// addOffers fills in the backends each member offers.
func (h *httpServer) addOffers(ctx context.Context, members []pageMember) {
	all, _, _, err := state.Offers(h.store).List(ctx, nil)
	if err != nil {
		return
	}
	for i := range members {
		m := &members[i]
		m.Offers = "?"
		if o, ok := all[m.ID]; ok {
			m.Offers = cmp.Or(strings.Join(o.Offered(), ", "), "-")
		}
	}
}

// addProvisioning fills in each member's provisioning, for the types that
// have provisioners in the description in force.
func (h *httpServer) addProvisioning(ctx context.Context, members []pageMember) {
	plat := h.mirror.Platform()
	if plat == nil {
		return
	}
	folder := state.ProvisionedRecords(h.store)
	recs, bad, _, err := folder.List(ctx, nil)
	if err != nil {
		return
	}
	unreadable := map[string]string{}
	for _, b := range bad {
		unreadable[b.Key] = b.Error
	}
	for i := range members {
		m := &members[i]
		mt, ok := plat.Machines[m.Type]
		if !ok || len(mt.Provisioners) == 0 {
			continue
		}
		rec, ok := recs[m.ID]
		why, bad := unreadable[folder.Key(m.ID)]
		switch {
		case bad:
			m.Provisioned = "unreadable: " + why
		case !ok:
			m.Provisioned = "waiting"
		case rec.ReadyFor(mt.ProvisionChecksum()):
			m.Provisioned, m.ProvisionOK = "ok", true
		case rec.State == state.ProvisionOK:
			m.Provisioned = "outdated: the description changed since"
		case rec.State == state.ProvisionFailed:
			m.Provisioned = "failed: " + rec.LastLine()
		default:
			m.Provisioned = rec.State + " " + rec.Provisioner
		}
	}
}

func (h *httpServer) servePage(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
	defer cancel()
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	// html/template escapes markup; what a member wrote may also hold
	// control or bidi characters, which no escaping of markup touches and
	// which reorder or hide the text around them. The template itself
	// writes none, so escaping what it writes escapes only the members'.
	if err := pageTemplate.Execute(termsafe.NewWriter(w), h.pageView(ctx)); err != nil {
		h.log.Warn("status page", telemetry.KeyError, err)
	}
}
