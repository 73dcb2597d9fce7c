package reconcile

import (
	"cmp"
	"fmt"
	"slices"
	"sort"
	"strings"

	"github.com/raptiformica/raptiformica/internal/state"
	"github.com/raptiformica/raptiformica/rules"
)

// When there is not room for every type's min, the types are served in
// priority order (rules.Platform.ByPriority) and a type below its min
// takes room in three ways, each bounded:
//
//   - room nobody holds goes to the higher priority first: scale walks the
//     types in that order, and a type that waits (its cooldown, the spawn
//     slots) reserves the room it will take, so that a lower type cannot
//     take it meanwhile and be removed for it at the next pass;
//   - room a lower priority holds is taken back (preempt): at most
//     max_unhealthy machines a pass, never a Consul server, a machine made
//     by hand, the seed or the leader, and only while no removal is in
//     flight (the room it frees is the next pass's to place);
//   - room that comes back goes to the types in the same order, so what
//     was given up comes back highest priority first.
//
// Preemption counts only the room the planner can see: a backend's
// max_per_host. A host below a backend's min_free_memory_mb is passed over
// for every priority alike; what a removal would free there is not known
// before its offer is published again, and guessing could remove every
// lower machine for nothing.

// reserve takes the room n machines of type mt will need once they may
// be spawned, as the pass's placements do, without spawning them.
func (ps *pass) reserve(mt rules.MachineType, n int) {
	if ps.obs.Offers == nil {
		return
	}
	for _, b := range mt.Backends {
		if n <= 0 {
			return
		}
		placed, _ := ps.place(mt, b, n)
		n -= len(placed)
	}
}

// preempt removes machines of lower priority than type name (mt) whose
// room it needs for n machines that nothing can place now. A machine is
// taken only when the room it frees, with the others taken, makes room
// the planner can place one of mt on; the last ones that would not are
// left alone.
func (ps *pass) preempt(name string, mt rules.MachineType, n int) {
	if n <= 0 || ps.obs.Offers == nil || ps.d.Halted != "" {
		return
	}
	cands := ps.lowerRoom(mt)
	if len(cands) == 0 {
		return
	}
	if ps.destroying > 0 {
		ps.waitf("machine %q: waits for the removals in flight before taking room from a lower priority", name)
		return
	}
	budget := ps.pol.MaxUnhealthy - ps.preempted
	if budget <= 0 {
		ps.waitf("machine %q: takes room from a lower priority at the next pass (at most max_unhealthy, %d, per pass)", name, ps.pol.MaxUnhealthy)
		return
	}
	sim := ps.hostsFor(mt).clone()
	var taken, trying []Record
	made := 0
	for _, r := range cands {
		if made == n || len(taken)+len(trying) == budget {
			break
		}
		sim.remove(Placement{Backend: r.Backend, Host: cmp.Or(r.Host, ps.obs.Self)}, ps.p.Machines[r.Type])
		trying = append(trying, r)
		if pl, _, ok := Place(mt, sim, ps.now); ok {
			sim.Add(pl, mt)
			made++
			taken, trying = append(taken, trying...), nil
		}
	}
	if made == 0 {
		return
	}
	var gone []string
	for _, r := range taken {
		lower := ps.p.Machines[r.Type]
		why := fmt.Sprintf("given up for %q (priority %d over %d): its room, as nothing else can place it", name, mt.Priority, lower.Priority)
		if !rules.Outranks(mt, lower) {
			why = fmt.Sprintf("given up for %q: room %s filled beyond its min, which a min comes before", name, r.Type)
		}
		ps.downs = append(ps.downs, actOn(state.KindPreempt, r.ID, r, why))
		gone = append(gone, r.ID)
	}
	ps.preempted += len(taken)
	ps.waitf("machine %q: %d to spawn in the room %s gives up for it, once removed", name, made, strings.Join(gone, ", "))
}

// lowerRoom are the machines that hold room a machine of type mt could
// use: live machines of the types mt outranks (their spares first), and
// those a type that
// fills has beyond its min (whatever its priority: a min comes before
// any fill), on one of mt's backends, on a host that offers it; never a
// Consul server's, a machine made by hand, the seed or the leader. The
// lowest priority comes first, then the newest.
func (ps *pass) lowerRoom(mt rules.MachineType) []Record {
	hs := ps.hostsFor(mt)
	var out []Record
	for name, lower := range ps.p.Machines {
		if lower.ConsulServer || name == mt.Name {
			continue
		}
		var recs []Record
		switch t := ps.tallies[name]; {
		case rules.Outranks(mt, lower):
			recs = append(slices.Clone(ps.spares[name].liveRecs), t.liveRecs...)
		case lower.Fill && t.live > lower.Min:
			recs = newest(t.liveRecs, t.live-lower.Min)
		}
		for _, r := range recs {
			if !r.Manual && ps.holdsRoom(r, mt, hs) {
				out = append(out, r)
			}
		}
	}
	sort.Slice(out, func(i, j int) bool {
		pi, pj := ps.p.Machines[out[i].Type].Priority, ps.p.Machines[out[j].Type].Priority
		if pi != pj {
			return pi < pj
		}
		if out[i].Spare != out[j].Spare {
			return out[i].Spare // a standby machine before a live one
		}
		if !out[i].Created.Equal(out[j].Created) {
			return out[i].Created.After(out[j].Created)
		}
		return out[i].ID > out[j].ID
	})
	return out
}

// newest are the n most recently made of recs.
func newest(recs []Record, n int) []Record {
	out := slices.Clone(recs)
	sort.Slice(out, func(i, j int) bool {
		if !out[i].Created.Equal(out[j].Created) {
			return out[i].Created.After(out[j].Created)
		}
		return out[i].ID > out[j].ID
	})
	return out[:min(n, len(out))]
}

// holdsRoom reports whether machine r holds room that a machine of type
// mt could be placed in, among hosts hs: it was placed by a leader (not
// the seed, not the leader itself), on one of mt's backends, on a host in
// hs that offers it.
func (ps *pass) holdsRoom(r Record, mt rules.MachineType, hs Hosts) bool {
	if r.Host == "" && (r.Seed || r.ID == ps.obs.Self) {
		return false
	}
	bo := hs.Offers[cmp.Or(r.Host, ps.obs.Self)].Backends[r.Backend]
	return slices.Contains(mt.Backends, r.Backend) && bo.Available && archFits(mt, bo)
}

// gaveWay says, for each type this pass could not place all it needs
// of, which types of higher
// priority hold machines on the backends it could use: what it gave up
// its room for, shown in status.
func (ps *pass) gaveWay() {
	for name, ts := range ps.d.Types {
		mt := ps.p.Machines[name]
		if !ps.noRoom[name] {
			continue
		}
		var over []string
		hs := ps.hostsFor(mt)
		for other, omt := range ps.p.Machines {
			if !rules.Outranks(omt, mt) {
				continue
			}
			for _, r := range ps.tallies[other].liveRecs {
				if ps.holdsRoom(r, mt, hs) {
					over = append(over, fmt.Sprintf("%s (priority %d)", other, omt.Priority))
					break
				}
			}
		}
		if len(over) > 0 {
			slices.Sort(over)
			ts.GaveWay = strings.Join(over, ", ")
			ps.d.Types[name] = ts
		}
	}
}
