package reconcile

import (
	"fmt"
	"sort"

	"github.com/raptiformica/raptiformica/internal/state"
	"github.com/raptiformica/raptiformica/rules"
)

// A type with spares keeps that many standby machines beside its count:
// made and joined like the others, recorded Spare, and not counted as
// live. When a machine of the type is down (failed, or gone from its
// backend), a spare up is promoted in its place at once: one record
// written, nothing started, so that the type is whole again faster than
// any spawn could make it. A new spare is then made in the background.
// The machine that died is reaped as any other; if it comes back within
// the grace period instead, the type has one more than it needs and the
// newest goes, as above any max.

// promote promotes a spare of type name for each machine of it that is
// down, as far as spares are up, and returns how many it promoted: they
// count as live from this pass on.
func (ps *pass) promote(name string, mt rules.MachineType, t *tally) int {
	// As many as the type lacks of its min, not counting the machines
	// down: a machine failed within its grace period stays down for all
	// of it, and must not have a spare promoted for it at every pass.
	down := t.failedIn + t.failedOut
	short := mt.Min - (t.live + t.pending + t.unready)
	sp := ps.spares[name]
	n := min(down, short, len(sp.liveRecs))
	if n <= 0 || ps.d.Halted != "" {
		return 0
	}
	// The oldest spare first: it has had the longest to settle.
	recs := append([]Record(nil), sp.liveRecs...)
	sort.Slice(recs, func(i, j int) bool {
		if !recs[i].Created.Equal(recs[j].Created) {
			return recs[i].Created.Before(recs[j].Created)
		}
		return recs[i].ID < recs[j].ID
	})
	for _, r := range recs[:n] {
		ps.marks = append(ps.marks, actOn(state.KindPromote, r.ID, r, fmt.Sprintf("spare promoted: %d of %s down", down, name)))
	}
	sp.live -= n
	sp.liveRecs = recs[n:]
	t.live += n
	return n
}

// keepSpares spawns the spares type name lacks, once its count is whole,
// and removes the newest it has beyond them.
func (ps *pass) keepSpares(name string, mt rules.MachineType) {
	sp, t := ps.spares[name], ps.tallies[name]
	ts := ps.d.Types[name]
	ts.Spares = sp.live
	ps.d.Types[name] = ts
	have := sp.live + sp.pending + sp.failedIn
	switch {
	case have < mt.Spares && ps.d.Halted == "" && t.live >= mt.Min && !ps.noRoom[name]:
		n := ps.slots(name, mt.Spares-have)
		for _, b := range mt.Backends {
			if n == 0 {
				break
			}
			placed, _ := ps.place(mt, b, n)
			for i, pl := range placed {
				ps.spawnAt(name, pl, fmt.Sprintf("spare %d of %d", have+i+1, mt.Spares))
				ps.spawns[len(ps.spawns)-1].Spare = true
			}
			n -= len(placed)
		}
	case sp.live > mt.Spares && ps.settled:
		for _, a := range pickScaleDown(sp.liveRecs, sp.live-mt.Spares, ps.obs.Self, mt) {
			a.Reason = fmt.Sprintf("more than spares %d", mt.Spares)
			ps.downs = append(ps.downs, a)
		}
	}
}
