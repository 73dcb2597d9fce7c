package reconcile

import (
	"fmt"
	"slices"
	"time"

	"github.com/raptiformica/raptiformica/internal/state"
	"github.com/raptiformica/raptiformica/rules"
)

// Types that grow with the room their hosts offer, rather than only to
// their min: per_host places a set number of machines on every host that
// offers one of the type's backends, fill takes the room left after every
// type's min. Both stay within max; neither is ever placed on a member of
// its own type unless hosts says so (hostsFor), and both count their hosts
// by the pass's load, which is what the records say each host holds.

// slots is how many machines of type name may start this pass, at most
// want: none during the type's cooldown (the pass wakes at its end), and
// no more than max_concurrent_spawns leaves room for.
func (ps *pass) slots(name string, want int) int {
	if want <= 0 {
		return 0
	}
	if last, ok := ps.obs.LastSpawn[name]; ok && ps.now.Sub(last) < ps.pol.Cooldown {
		ps.wakeAt(last.Add(ps.pol.Cooldown))
		ps.waitf("machine %q: %d to spawn after the cooldown (%s)", name, want, (ps.pol.Cooldown - ps.now.Sub(last)).Round(time.Millisecond))
		return 0
	}
	n := min(want, ps.pol.MaxConcurrentSpawns-ps.pendingTotal)
	if n < want {
		ps.waitf("machine %q: %d to spawn once fewer than max_concurrent_spawns (%d) are in flight", name, want-max(n, 0), ps.pol.MaxConcurrentSpawns)
	}
	return max(n, 0)
}

// scalePerHost brings each host of type name to per_host machines of it,
// within max: a host short of them gets its own, placed on it alone; a
// host with more (per_host lowered) gives back its newest. A host that
// left is not replaced by another: its machines are reaped as they fail.
func (ps *pass) scalePerHost(name string, mt rules.MachineType, t *tally) {
	if t.live > mt.Max && ps.settled {
		ps.scaleDown(t, mt, t.live-mt.Max)
		return
	}
	hs := ps.hostsFor(mt)
	var short []string
	want := 0
	for _, h := range sortedKeys(hs.Offers) {
		if !offersAny(hs.Offers[h], mt) {
			continue
		}
		held := hs.Load[h].ByType[name]
		switch {
		case held < mt.PerHost:
			short = append(short, h)
			want += mt.PerHost - held
		case held > mt.PerHost && ps.settled:
			ps.giveBack(t, mt, h, held-mt.PerHost)
		}
	}
	room := mt.Max - (t.live + t.pending + t.failedIn + t.unready)
	if ps.d.Halted != "" || room <= 0 || want == 0 {
		if want > 0 && room <= 0 {
			ps.waitf("machine %q: %d hosts short of per_host %d, but the type is at its max (%d)", name, len(short), mt.PerHost, mt.Max)
		}
		return
	}
	n := ps.slots(name, min(want, room))
	for _, h := range short {
		one := hs
		one.Offers = map[string]state.Offer{h: hs.Offers[h]}
		for range mt.PerHost - hs.Load[h].ByType[name] {
			if n == 0 {
				return
			}
			pl, why, ok := Place(mt, one, ps.now)
			if !ok {
				ps.waitf("machine %q: host %s short of per_host %d: %v", name, h, mt.PerHost, why)
				break
			}
			ps.hosts.Add(pl, mt)
			one.Load = ps.hosts.Load
			ps.spawnAt(name, pl, fmt.Sprintf("per_host %d on %s", mt.PerHost, h))
			n--
		}
	}
}

// giveBack removes the newest n live machines of type mt on host h.
func (ps *pass) giveBack(t *tally, mt rules.MachineType, h string, n int) {
	var on []Record
	for _, r := range t.liveRecs {
		if ps.hostOf(r) == h {
			on = append(on, r)
		}
	}
	for _, a := range pickScaleDown(on, n, ps.obs.Self, mt) {
		a.Reason = fmt.Sprintf("more than per_host %d on %s", mt.PerHost, h)
		ps.downs = append(ps.downs, a)
	}
}

// fill spawns machines of type name, beyond its min, as far as the room
// left allows, up to max. It says nothing when there is no room: a full
// host is what fill is for.
func (ps *pass) fill(name string, mt rules.MachineType, t *tally) {
	have := t.live + t.pending + t.failedIn + t.unready
	for _, a := range ps.spawns {
		if a.Type == name {
			have++ // spawned for its min this pass
		}
	}
	if have < mt.Min || ps.obs.Offers == nil {
		return // its min is scale's
	}
	want := mt.Max - have
	if want <= 0 {
		return
	}
	// Only as many as there is room for ask for the slots.
	hs := ps.hostsFor(mt).clone()
	var placed []Placement
	for range want {
		pl, _, ok := Place(mt, hs, ps.now)
		if !ok {
			break
		}
		hs.Add(pl, mt)
		placed = append(placed, pl)
	}
	n := ps.slots(name, len(placed))
	for i, pl := range placed[:n] {
		ps.hosts.Add(pl, mt)
		ps.spawnAt(name, pl, fmt.Sprintf("fill: %d of max %d", have+i, mt.Max))
	}
}

// hostOf is the host whose room machine r holds.
func (ps *pass) hostOf(r Record) string {
	if r.Host == "" {
		return ps.obs.Self
	}
	return r.Host
}

// offersAny reports whether offer o can make a machine of type mt on one of
// its backends.
func offersAny(o state.Offer, mt rules.MachineType) bool {
	return slices.ContainsFunc(mt.Backends, func(b string) bool { return o.Backends[b].Available && archFits(mt, o.Backends[b]) })
}
