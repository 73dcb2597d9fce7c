package cluster

import (
	"context"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"

	"github.com/raptiformica/raptiformica/internal/kvschema"
	"github.com/raptiformica/raptiformica/internal/state"
	"github.com/raptiformica/raptiformica/rules"
)

// statusOutputLines is how many of a failed provisioning's last lines
// `status` prints; `status --json` carries all the record holds.
const statusOutputLines = 10

// Provisioning reads every machine's provisioning record, by machine ID.
// A record that cannot be read is left out: one machine's bad record does
// not hide the others'.
func Provisioning(ctx context.Context, store *kvschema.Store) (map[string]state.Provisioned, error) {
	out, _, _, err := state.ProvisionedRecords(store).List(ctx, nil)
	return out, err
}

// provisionState is what a members row says of a machine's provisioning
// under the description plat: "ok", "running", "failed", "outdated" (ok
// for an earlier description), or "" when its type provisions nothing or
// the machine published nothing.
func provisionState(plat *rules.Platform, typ string, rec state.Provisioned, ok bool) string {
	if !ok {
		if plat != nil && len(plat.Machines[typ].Provisioners) > 0 {
			return "waiting"
		}
		return ""
	}
	if plat != nil {
		if len(plat.Machines[typ].Provisioners) == 0 {
			return ""
		}
		if rec.State == state.ProvisionOK && !rec.ReadyFor(plat.Machines[typ].ProvisionChecksum()) {
			return "outdated"
		}
	}
	return rec.State
}

// writeProvisioning writes, for a person, every machine whose provisioning
// is not done: running, or failed with its last lines. The machine wrote
// the record, and its commands the output: each line is escaped.
func writeProvisioning(w io.Writer, recs map[string]state.Provisioned) {
	for _, id := range slices.Sorted(maps.Keys(recs)) {
		p := recs[id]
		switch p.State {
		case state.ProvisionRunning:
			fmt.Fprintf(w, "provisioning %s\trunning %s\n", safe(id), safe(p.Provisioner))
		case state.ProvisionFailed:
			fmt.Fprintf(w, "provisioning %s\tFAILED (attempt %d): %s\n", safe(id), p.Failures, safe(p.Error))
			out := p.Output
			lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
			if len(lines) > statusOutputLines {
				lines = lines[len(lines)-statusOutputLines:]
			}
			for _, l := range lines {
				if l != "" {
					fmt.Fprintf(w, "\t| %s\n", safe(l))
				}
			}
		}
	}
}
