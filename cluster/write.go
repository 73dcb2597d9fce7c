package cluster

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/raptiformica/raptiformica/daemon/agentapi"
	"github.com/raptiformica/raptiformica/internal/kvschema"
	"github.com/raptiformica/raptiformica/internal/state"
)

// WritePlan prints what the leader would do, as `plan` shows it, every
// string escaped: reasons and waiting lines quote members and backends.
func WritePlan(out io.Writer, d state.Plan) error {
	if len(d.Actions) == 0 {
		fmt.Fprintln(out, "no actions: the cluster matches the description")
	}
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	for _, a := range d.Actions {
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", safe(string(a.Kind)), cell(a.MachineID), safe(a.Type), safe(a.Backend), safe(a.Reason))
	}
	if d.Halted != "" {
		fmt.Fprintf(w, "HALTED\t%s\n", safe(d.Halted))
	}
	for _, s := range d.Waiting {
		fmt.Fprintf(w, "waiting\t%s\n", safe(s))
	}
	for _, name := range slices.Sorted(maps.Keys(d.Types)) {
		if sc := d.Types[name].Scale; sc != nil {
			fmt.Fprintf(w, "scale\t%s\n", scaleLine(name, sc))
		}
	}
	return w.Flush()
}

// scaleLine is how status and plan tell a type's scaling on its signal:
// what it reads, the last value, and what was decided on it.
func scaleLine(name string, sc *state.ScaleStatus) string {
	value := "no value"
	switch {
	case sc.Reading.Error != "":
		value = "read failed at " + sc.Reading.At.UTC().Format(time.TimeOnly)
	case !sc.Reading.At.IsZero():
		value = fmt.Sprintf("%s at %s", strconv.FormatFloat(sc.Reading.Value, 'g', 6, 64), sc.Reading.At.UTC().Format(time.TimeOnly))
	}
	return fmt.Sprintf("%s on %s (%s a machine): %s; %s", safe(name), safe(sc.Signal), strconv.FormatFloat(sc.Target, 'g', 6, 64), value, safe(sc.Decision))
}

// WriteMesh prints an agent's overlay, as `mesh` shows it, every string
// escaped: the agent, its peers and their errors wrote them.
func WriteMesh(out io.Writer, machineID string, m *agentapi.MeshStatus) error {
	fmt.Fprintf(out, "machine %s: overlay %s, key %s\n", safe(machineID), safe(m.Address), safe(m.Key))
	if m.ListenPort == 0 {
		fmt.Fprintln(out, "dial-only: accepts no links")
	} else {
		fmt.Fprintf(out, "accepts links on %s\n", list(m.Endpoints, ", "))
	}
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "ENDPOINT\tSTATE\tDIRECTION\tOVERLAY\tRX\tTX\tLAST ERROR")
	for _, p := range m.Peers {
		state, dir := "down", "out"
		if p.Up {
			state = "up"
		}
		if p.Inbound {
			dir = "in"
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%d\t%d\t%s\n", safe(p.Endpoint), state, dir, cell(p.Address), p.RXBytes, p.TXBytes, cell(p.LastError))
	}
	if err := w.Flush(); err != nil {
		return err
	}
	if m.Problem != "" {
		fmt.Fprintln(out, safe(m.Problem))
	}
	return nil
}

// writeTokens prints tokens as `token list` shows them, expiry in the
// local time zone, those past now marked expired; what the records say,
// escaped.
func writeTokens(out io.Writer, toks []Token, now time.Time) error {
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "ID\tKIND\tFOR\tEXPIRES")
	for _, r := range toks {
		exp := "never"
		if r.Expires != nil {
			exp = r.Expires.Local().Format(time.RFC3339)
			if !now.Before(*r.Expires) {
				exp += " (expired)"
			}
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", safe(r.ID), safe(r.Kind), cell(r.For), exp)
	}
	return w.Flush()
}

// WriteMeshSecret prints the mesh secret a machine joined by hand dials
// with: during a rotation, the one being brought in, which every member
// dials with.
func WriteMeshSecret(ctx context.Context, c *api.Client, out io.Writer) error {
	secrets, err := kvschema.New(c).MeshSecrets(ctx, nil)
	if err != nil {
		return err
	}
	secret := secrets.Newest()
	if secret == "" {
		return errors.New("the cluster has no mesh secret: it runs with mesh = \"none\"")
	}
	_, err = fmt.Fprintln(out, safe(secret))
	return err
}
