package reconcile

import (
	"cmp"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/raptiformica/raptiformica/internal/state"
	"github.com/raptiformica/raptiformica/rules"
)

// HostLoad is what one host already holds: the machines it made, by
// backend and by machine type, and how many of them are Consul servers.
type HostLoad struct {
	ByBackend map[string]int
	ByType    map[string]int
	Servers   int
}

// Hosts is what placement chooses among: the live members' offers and what
// each already holds, the per-host capacity of each backend, and which
// hosts are backing off a backend after its calls failed there.
type Hosts struct {
	// Offers are the live members' offers, by machine ID.
	Offers map[string]state.Offer
	// Load is what each host holds; a host missing holds nothing.
	Load map[string]HostLoad
	// MaxPerHost caps the machines one host may hold on a backend; a
	// backend missing (or 0) has no cap.
	MaxPerHost map[string]int
	// MinFree is, by backend, the memory in bytes a host must have free
	// for one more machine, where its offer says how much it has.
	MinFree map[string]uint64
	// BackoffUntil is, by host then backend, when a failing backend may
	// be tried there again.
	BackoffUntil map[string]map[string]time.Time
	// Prefer is the host that wins a tie: the leader, which runs a spawn
	// without a work order's round trip.
	Prefer string
}

// Placement is where one spawn goes.
type Placement struct {
	Backend string
	Host    string
}

// Place chooses a backend and a host for one machine of type mt: the first
// of the type's backends, in its order, that some live member offers and
// can take now; on it, the host that spreads the type best (a Consul server
// goes to the host with the fewest servers, so that two never share a host
// while another can take one; then the fewest of the type, then the fewest
// machines of that backend, then the preferred host, then the host's ID,
// for the same answer from the same inputs). When nothing fits, ok is false and why says, per
// backend, what held it back. It is pure: the planner calls it per spawn,
// adding each placement to the load before the next.
func Place(mt rules.MachineType, hs Hosts, now time.Time) (p Placement, why []string, ok bool) {
	hosts := sortedKeys(hs.Offers)
	for _, b := range mt.Backends {
		var offering, usable []string
		backingOff, full, low := 0, 0, 0
		firstBackoff, otherArchs := "", map[string]int{}
		for _, h := range hosts {
			bo := hs.Offers[h].Backends[b]
			if !bo.Available {
				continue
			}
			if !archFits(mt, bo) {
				otherArchs[cmp.Or(bo.Arch, "unsaid")]++
				continue
			}
			offering = append(offering, h)
			if until, ok := hs.BackoffUntil[h][b]; ok && now.Before(until) {
				if backingOff++; backingOff == 1 {
					firstBackoff = fmt.Sprintf("host %s backing off for %s", h, until.Sub(now).Round(time.Second))
				}
				continue
			}
			if limit := hs.MaxPerHost[b]; limit > 0 && hs.Load[h].ByBackend[b] >= limit {
				full++
				continue
			}
			if floor := hs.MinFree[b]; floor > 0 {
				if free := hs.Offers[h].Backends[b].FreeMemory; free > 0 && free < floor {
					low++
					continue
				}
			}
			usable = append(usable, h)
		}
		switch backingOff {
		case 0:
		case 1:
			why = append(why, fmt.Sprintf("backend %q: %s after failures", b, firstBackoff))
		default:
			why = append(why, fmt.Sprintf("backend %q: %d hosts backing off after failures (%s)", b, backingOff, firstBackoff))
		}
		switch {
		case len(offering) == 0 && len(otherArchs) > 0:
			why = append(why, fmt.Sprintf("backend %q: its machines are not %s on any host offering it (%s)", b, strings.Join(mt.Archs, " or "), archCounts(otherArchs)))
			continue
		case len(offering) == 0:
			why = append(why, fmt.Sprintf("backend %q: no member offers it", b))
			continue
		case len(usable) == 0 && full > 0 && low == 0 && backingOff == 0:
			why = append(why, fmt.Sprintf("backend %q: every host offering it is full (%d per host)", b, hs.MaxPerHost[b]))
			continue
		case len(usable) == 0 && low > 0 && backingOff == 0:
			why = append(why, fmt.Sprintf("backend %q: %d hosts offering it are below its free-memory floor (%d MiB) and %d full", b, low, hs.MinFree[b]>>20, full))
			continue
		case len(usable) == 0:
			continue
		}
		best := usable[0]
		for _, h := range usable[1:] {
			l, m := hs.Load[h], hs.Load[best]
			if fewer(mt, b, l, m) || h == hs.Prefer && !fewer(mt, b, m, l) {
				best = h
			}
		}
		return Placement{Backend: b, Host: best}, why, true
	}
	return Placement{}, why, false
}

// archFits reports whether backend offer bo makes machines of an
// architecture type mt runs on: any, where mt names none; one it names,
// where bo says its machines' (an offer that does not say fits none).
func archFits(mt rules.MachineType, bo state.BackendOffer) bool {
	return len(mt.Archs) == 0 || slices.Contains(mt.Archs, bo.Arch)
}

// archCounts says how many hosts make machines of each architecture:
// "amd64 on 2 hosts, unsaid on 1".
func archCounts(n map[string]int) string {
	var parts []string
	for _, a := range slices.Sorted(maps.Keys(n)) {
		hosts := "hosts"
		if n[a] == 1 {
			hosts = "host"
		}
		parts = append(parts, fmt.Sprintf("%s on %d %s", a, n[a], hosts))
	}
	return strings.Join(parts, ", ")
}

// fewer reports whether a host with load l spreads a machine of type mt on
// backend b better than one with load m. Hosts come in ID order and only a
// strictly better one replaces the best so far: ties go to the lowest ID.
func fewer(mt rules.MachineType, b string, l, m HostLoad) bool {
	if mt.ConsulServer && l.Servers != m.Servers {
		return l.Servers < m.Servers
	}
	if l.ByType[mt.Name] != m.ByType[mt.Name] {
		return l.ByType[mt.Name] < m.ByType[mt.Name]
	}
	return l.ByBackend[b] < m.ByBackend[b]
}

// Add counts a placed machine of type mt in the host's load, so that the
// next placement of the same pass sees it.
func (hs *Hosts) Add(p Placement, mt rules.MachineType) {
	if hs.Load == nil {
		hs.Load = map[string]HostLoad{}
	}
	l := hs.Load[p.Host]
	if l.ByBackend == nil {
		l.ByBackend, l.ByType = map[string]int{}, map[string]int{}
	}
	l.ByBackend[p.Backend]++
	l.ByType[mt.Name]++
	if mt.ConsulServer {
		l.Servers++
	}
	hs.Load[p.Host] = l
}

// remove takes a machine of type mt out of the host's load: the room a
// removal would free, for the planner's what-ifs.
func (hs *Hosts) remove(p Placement, mt rules.MachineType) {
	l, ok := hs.Load[p.Host]
	if !ok || l.ByBackend[p.Backend] == 0 {
		return
	}
	l.ByBackend[p.Backend]--
	l.ByType[mt.Name]--
	if mt.ConsulServer {
		l.Servers--
	}
	hs.Load[p.Host] = l
}

// clone is a copy of hs whose load can change without changing hs's.
func (hs Hosts) clone() Hosts {
	out := hs
	out.Load = make(map[string]HostLoad, len(hs.Load))
	for h, l := range hs.Load {
		out.Load[h] = HostLoad{ByBackend: maps.Clone(l.ByBackend), ByType: maps.Clone(l.ByType), Servers: l.Servers}
	}
	return out
}
