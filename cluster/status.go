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
	"github.com/raptiformica/raptiformica/reconcile"
	"github.com/raptiformica/raptiformica/rules"
)

// StatusView is the cluster's status as `status` prints it, and the body
// of `status --json`.
type StatusView struct {
	Leader        string            `json:"leader"`
	PlatformError string            `json:"platform_error,omitempty"`
	Reconcile     *reconcile.Status `json:"reconcile,omitempty"`
	// Quorum is each local machine's view while there is no Consul leader.
	Quorum map[string]*agentapi.QuorumStatus `json:"quorum,omitempty"`
	// MirrorErrors are the local machines whose copy of the cluster's
	// state on disk is unusable, and why: such a machine cannot re-create
	// the cluster until KV replaces its copy.
	MirrorErrors map[string]string `json:"mirror_errors,omitempty"`
	// Provisioning is each machine's provisioning record, by machine ID.
	Provisioning map[string]reconcile.Provisioned `json:"provisioning,omitempty"`
}

// Status is the cluster's status as c's Consul holds it. A Consul that
// cannot be read is an error, not a rejected description.
func Status(ctx context.Context, c *api.Client, opts rules.Options) (StatusView, error) {
	store := kvschema.New(c)
	v := StatusView{Leader: store.Leader(ctx), Reconcile: LastPass(ctx, c)}
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
// a Consul leader, what each machine knows of the lost quorum.
func (v StatusView) WriteText(out io.Writer) error {
	if v.Quorum != nil {
		writeQuorum(out, v.Quorum)
		return nil
	}
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintf(w, "leader\t%s\n", orDash(v.Leader))
	if v.PlatformError != "" {
		fmt.Fprintf(w, "platform\tREJECTED (nodes keep their last good description):\n%s\n", v.PlatformError)
	}
	for _, id := range slices.Sorted(maps.Keys(v.MirrorErrors)) {
		fmt.Fprintf(w, "mirror of %s\tUNUSABLE: %s\n", id, v.MirrorErrors[id])
	}
	st := v.Reconcile
	if st == nil {
		fmt.Fprintln(w, "reconcile\tno pass yet")
		return w.Flush()
	}
	fmt.Fprintf(w, "cluster\t%s\n", st.Cluster)
	fmt.Fprintf(w, "last reconcile\t%s ago by %s: %s in %s\n", time.Since(st.LastReconcile).Round(time.Second), st.Leader, st.LastResult, st.Duration)
	if st.LastError != "" {
		fmt.Fprintf(w, "last error\t%s\n", st.LastError)
	}
	if st.Halted != "" {
		fmt.Fprintf(w, "HALTED\t%s\n", st.Halted)
	}
	for _, s := range st.Waiting {
		fmt.Fprintf(w, "waiting\t%s\n", s)
	}
	for _, b := range slices.Sorted(maps.Keys(st.BackendErrors)) {
		if by := st.OfferedBy[b]; len(by) > 0 {
			fmt.Fprintf(w, "backend %s\truns on %s (not on the leader: %s)\n", b, strings.Join(by, ", "), st.BackendErrors[b])
			continue
		}
		fmt.Fprintf(w, "backend %s\t%s\n", b, st.BackendErrors[b])
	}
	for _, a := range st.InFlight {
		fmt.Fprintf(w, "in flight\t%s %s (%s)\n", a.Kind, a.MachineID, a.Reason)
	}
	writeProvisioning(w, v.Provisioning)
	w.Flush()
	fmt.Fprintln(out)
	w = tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "TYPE\tMIN\tMAX\tLIVE\tPENDING\tFAILED\tUNREADY")
	for _, name := range slices.Sorted(maps.Keys(st.Types)) {
		ts := st.Types[name]
		fmt.Fprintf(w, "%s\t%d\t%d\t%d\t%d\t%d\t%d\n", name, ts.Min, ts.Max, ts.Live, ts.Pending, ts.Failed, ts.Unready)
	}
	return w.Flush()
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func writeQuorum(out io.Writer, q map[string]*agentapi.QuorumStatus) {
	for _, id := range slices.Sorted(maps.Keys(q)) {
		s := q[id]
		state := "no Consul leader"
		if s.Lost {
			state = "QUORUM LOST"
		}
		fmt.Fprintf(out, "%s: %s since %s (Raft index %d)\n", id, state, s.LeaderlessSince.Format(time.RFC3339), s.RaftLastIndex)
		for _, sv := range s.Servers {
			fmt.Fprintf(out, "  server %s %s %s\n", sv.Name, sv.Address, sv.Status)
		}
		if s.Recovery != "" {
			fmt.Fprintf(out, "  recovery: %s\n", s.Recovery)
		}
	}
}
