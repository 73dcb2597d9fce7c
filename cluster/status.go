package cluster

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/raptiformica/raptiformica/daemon/agentapi"
	"github.com/raptiformica/raptiformica/internal/kvschema"
	"github.com/raptiformica/raptiformica/internal/state"
	"github.com/raptiformica/raptiformica/internal/termsafe"
	"github.com/raptiformica/raptiformica/rules"
)

// StatusView is the cluster's status as `status` prints it, and the body
// of `status --json`.
type StatusView struct {
	Leader        string        `json:"leader"`
	PlatformError string        `json:"platform_error,omitempty"`
	Reconcile     *state.Status `json:"reconcile,omitempty"`
	// Quorum is each local machine's view while there is no Consul leader.
	Quorum map[string]*agentapi.QuorumStatus `json:"quorum,omitempty"`
	// MirrorErrors are the local machines whose copy of the cluster's
	// state on disk is unusable, and why: such a machine cannot re-create
	// the cluster until KV replaces its copy.
	MirrorErrors map[string]string `json:"mirror_errors,omitempty"`
	// Provisioning is each machine's provisioning record, by machine ID.
	Provisioning map[string]state.Provisioned `json:"provisioning,omitempty"`
}

// Status is the cluster's status as c's Consul holds it. A Consul that
// cannot be read is an error, not a rejected description.
func Status(ctx context.Context, c *api.Client, opts rules.Options) (StatusView, error) {
	store := kvschema.New(c)
	v := StatusView{Leader: store.Leader(ctx), Reconcile: lastPass(ctx, c)}
	if recs, err := Provisioning(ctx, store); err == nil && len(recs) > 0 {
		v.Provisioning = recs
	}
	_, err := Platform(ctx, c, opts)
	var invalid *rules.Error
	switch {
	case errors.As(err, &invalid), errors.Is(err, ErrNoPlatform):
		v.PlatformError = err.Error()
	case err != nil:
		return v, fmt.Errorf("cannot read the cluster's Consul: %w", err)
	}
	return v, nil
}

// WriteText writes the view for a person: the leader, the description's
// state, the leader's last pass and a table of the machine types; without
// a Consul leader, what each machine knows of the lost quorum. Every
// string is escaped (termsafe): members and backends wrote most of them,
// and the leader's pass quotes them.
func (v StatusView) WriteText(out io.Writer) error {
	if v.Quorum != nil {
		writeQuorum(out, v.Quorum)
		return nil
	}
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintf(w, "leader\t%s\n", cell(v.Leader))
	if v.PlatformError != "" {
		// One problem a line, as the validator lists them.
		fmt.Fprintf(w, "platform\tREJECTED (nodes keep their last good description):\n%s\n", termsafe.Text(v.PlatformError))
	}
	for _, id := range slices.Sorted(maps.Keys(v.MirrorErrors)) {
		fmt.Fprintf(w, "mirror of %s\tUNUSABLE: %s\n", safe(id), safe(v.MirrorErrors[id]))
	}
	st := v.Reconcile
	if st == nil {
		fmt.Fprintln(w, "reconcile\tno pass yet")
		return w.Flush()
	}
	fmt.Fprintf(w, "cluster\t%s\n", safe(st.Cluster))
	fmt.Fprintf(w, "last reconcile\t%s ago by %s: %s in %s\n", time.Since(st.LastReconcile).Round(time.Second), safe(st.Leader), safe(st.LastResult), safe(st.Duration))
	if st.LastError != "" {
		fmt.Fprintf(w, "last error\t%s\n", safe(st.LastError))
	}
	if st.Halted != "" {
		fmt.Fprintf(w, "HALTED\t%s\n", safe(st.Halted))
	}
	for _, s := range st.Waiting {
		fmt.Fprintf(w, "waiting\t%s\n", safe(s))
	}
	for _, b := range slices.Sorted(maps.Keys(st.BackendErrors)) {
		if by := st.OfferedBy[b]; len(by) > 0 {
			fmt.Fprintf(w, "backend %s\truns on %s (not on the leader: %s)\n", safe(b), list(by, ", "), safe(st.BackendErrors[b]))
			continue
		}
		fmt.Fprintf(w, "backend %s\t%s\n", safe(b), safe(st.BackendErrors[b]))
	}
	for _, a := range st.InFlight {
		fmt.Fprintf(w, "in flight\t%s %s (%s)\n", safe(string(a.Kind)), safe(a.MachineID), safe(a.Reason))
	}
	for _, b := range st.BadRecords {
		fmt.Fprintf(w, "BAD RECORD\t%s refused, not acted on: %s\n", safe(b.Key), safe(b.Error))
	}
	writeProvisioning(w, v.Provisioning)
	w.Flush()
	fmt.Fprintln(out)
	w = tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "TYPE\tPRIORITY\tMIN\tMAX\tLIVE\tPENDING\tFAILED\tUNREADY\tSPARES")
	names := slices.Sorted(maps.Keys(st.Types))
	for _, name := range names {
		ts := st.Types[name]
		fmt.Fprintf(w, "%s\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\n", safe(name), ts.Priority, ts.Min, ts.Max, ts.Live, ts.Pending, ts.Failed, ts.Unready, ts.Spares)
	}
	if err := w.Flush(); err != nil {
		return err
	}
	for _, name := range names {
		if gw := st.Types[name].GaveWay; gw != "" {
			fmt.Fprintf(out, "%s gave way to higher priorities, which hold the room it could use: %s\n", safe(name), safe(gw))
		}
		if sc := st.Types[name].Scale; sc != nil {
			fmt.Fprintf(out, "%s scales %s\n", safe(name), strings.TrimPrefix(scaleLine(name, sc), safe(name)+" "))
		}
	}
	return nil
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// safe is s, which a member, a backend or the leader's pass wrote, escaped
// for one field of a line or a table: a tab or a newline in it would make
// a cell or a row of its own.
func safe(s string) string { return termsafe.String(s) }

// cell is safe(s), or "-" for nothing.
func cell(s string) string { return orDash(termsafe.String(s)) }

func writeQuorum(out io.Writer, q map[string]*agentapi.QuorumStatus) {
	for _, id := range slices.Sorted(maps.Keys(q)) {
		s := q[id]
		state := "no Consul leader"
		if s.Lost {
			state = "QUORUM LOST"
		}
		fmt.Fprintf(out, "%s: %s since %s (Raft index %d)\n", safe(id), state, s.LeaderlessSince.Format(time.RFC3339), s.RaftLastIndex)
		for _, sv := range s.Servers {
			fmt.Fprintf(out, "  server %s %s %s\n", safe(sv.Name), safe(sv.Address), safe(string(sv.Status)))
		}
		if s.Recovery != "" {
			fmt.Fprintf(out, "  recovery: %s\n", safe(s.Recovery))
		}
	}
}
