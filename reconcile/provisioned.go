package reconcile

import (
	"context"
	"encoding/json"

	"github.com/raptiformica/raptiformica/internal/state"
	"github.com/raptiformica/raptiformica/rules"
)

// ProvisionEvent is what an after_provision hook reads on its standard
// input: the common fields of every event, and the machine's record.
type ProvisionEvent struct {
	HookEvent
	Provisioned state.Provisioned `json:"provisioned"`
}

// FireProvisioned starts the after_provision hooks of p on this machine in
// the background and returns at once, as Fire does, with rec in the
// payload. A nil *HookRunner runs nothing.
func (h *HookRunner) FireProvisioned(ctx context.Context, p *rules.Platform, rec state.Provisioned) {
	if h == nil || p == nil {
		return
	}
	hooks := p.HooksFor("after_provision")
	if len(hooks) == 0 {
		return
	}
	payload, _ := json.Marshal(ProvisionEvent{
		HookEvent:   HookEvent{Event: "after_provision", Cluster: p.Cluster, Time: h.Clock.Now(), Action: state.Action{MachineID: rec.Machine, Type: rec.MachineType, Reason: "provisioning " + rec.State}},
		Provisioned: rec,
	})
	for _, hk := range hooks {
		go h.run(context.WithoutCancel(ctx), hk, payload)
	}
}

// ObserveProvisioned reads the members' provisioning records for the
// planner (Observed.Provisioned), only when a machine type of p is
// ready_after_provision: the others' do not change a plan. A record that
// does not parse is left out (its machine then waits), and so are all of
// them when they cannot be read: the machines then count as unready for a
// pass, which spawns nothing.
// The records it refuses are returned beside them, to be reported.
func ObserveProvisioned(ctx context.Context, inv *Inventory, p *rules.Platform) (map[string]state.Provisioned, []state.Bad) {
	need := false
	for _, mt := range p.Machines {
		need = need || mt.ReadyAfterProvision
	}
	if !need {
		return nil, nil
	}
	rctx, cancel := context.WithTimeout(ctx, consulCallTimeout)
	defer cancel()
	out, bad, _, err := state.ProvisionedRecords(inv.Store).List(rctx, nil)
	if err != nil {
		return map[string]state.Provisioned{}, nil
	}
	return out, bad
}
