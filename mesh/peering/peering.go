// Package peering decides which members a mesh node links to: a pure
// function of the node, the members it knows and a cap, which every node
// computes alike from the same member list, so that the two ends of a link
// agree on it without talking. The overlay routes everything else.
//
// The graph has three parts, all over the members that accept links
// ("listeners", those with endpoints):
//
//  1. A ring: listeners sorted by a hash of their ID, each linked to the one
//     before and the one after it. The ring keeps the graph connected
//     whatever else the rule drops; a member joining or leaving changes the
//     ring links of its two neighbours only.
//  2. The servers' clique: every listening Consul server links to every
//     other, so that Raft's heartbeats cross one hop. It is left out when
//     it would not fit under the cap beside the ring.
//  3. Chords chosen by rendezvous (highest random weight) hashing: the
//     weight of a pair is a hash of the two IDs, the same from either end.
//     Each listener ranks the others by weight and keeps the best that fit
//     in what the cap leaves it; a chord is made only when each end ranks
//     the other among its best, so that neither end goes over its cap.
//     The chords make the graph a random one of small diameter; a member
//     joining displaces the last chord of only the few members that rank
//     it among their best.
//
// The cap counts a link once per peer, whichever end dials it (both do: a
// link comes up if either end reaches the other). It bounds every link the
// rule makes between listeners. A member that accepts no link (dial-only,
// behind NAT) cannot be part of the ring: it dials a few listeners,
// servers first, and a listener takes those links beyond its cap, since
// refusing one would cut the machine off. Below the cap (a cluster of at
// most MaxLinks+1 listeners) every listener links to every other, as the
// mesh did before it was sparse.
package peering

import (
	"cmp"
	"slices"
	"time"
)

// DefaultMaxLinks is the cap on a node's links when the description sets
// none: enough for the ring, a clique of three to five servers and a few
// chords.
const DefaultMaxLinks = 8

// MinMaxLinks is the smallest cap: the ring needs two links per node.
const MinMaxLinks = 2

// dialOnlyLinks is how many listeners a dial-only member dials in a
// cluster larger than the cap: two, so that one going down leaves it
// linked.
const dialOnlyLinks = 2

// Member is one machine of the mesh as the rule sees it.
type Member struct {
	// ID is the machine's ID, which the hashes are of.
	ID string
	// Server is true for a Consul server.
	Server bool
	// Listens is true when the member accepts links (it publishes
	// endpoints, or its backend reported an address); false for a
	// dial-only member.
	Listens bool
}

// Choose returns the IDs of the members self links to (and dials), sorted,
// among members (self may be among them or not; a member listed twice
// counts once, listening and serving if either listing does). maxLinks
// below MinMaxLinks counts as MinMaxLinks. Choose does no I/O; it costs
// O(maxLinks × N) hashes for N members.
func Choose(self Member, members []Member, maxLinks int) []string {
	g := newGraph(self, members, maxLinks)
	return g.choose(g.index[self.ID])
}

// graph is the member list prepared for the rule: indices into ids, the
// listeners in ring order, and each member's hash.
type graph struct {
	ids     []string
	server  []bool
	listens []bool
	hash    []uint64
	index   map[string]int
	ring    []int       // listeners' indices, in ring order
	pos     map[int]int // listener index -> position in ring
	clique  bool        // the listening servers link to each other
	max     int
}

func newGraph(self Member, members []Member, maxLinks int) *graph {
	g := &graph{index: map[string]int{}, pos: map[int]int{}, max: max(maxLinks, MinMaxLinks)}
	for _, m := range append([]Member{self}, members...) {
		if m.ID == "" {
			continue
		}
		if i, ok := g.index[m.ID]; ok {
			g.server[i] = g.server[i] || m.Server
			g.listens[i] = g.listens[i] || m.Listens
			continue
		}
		g.index[m.ID] = len(g.ids)
		g.ids = append(g.ids, m.ID)
		g.server = append(g.server, m.Server)
		g.listens = append(g.listens, m.Listens)
		g.hash = append(g.hash, hashID(m.ID))
	}
	servers := 0
	for i := range g.ids {
		if g.listens[i] {
			g.ring = append(g.ring, i)
			if g.server[i] {
				servers++
			}
		}
	}
	slices.SortFunc(g.ring, func(a, b int) int {
		return cmp.Or(cmp.Compare(mix(g.hash[a]), mix(g.hash[b])), cmp.Compare(g.ids[a], g.ids[b]))
	})
	for p, i := range g.ring {
		g.pos[i] = p
	}
	// A server's clique links plus its two ring links must fit.
	g.clique = servers-1+2 <= g.max
	return g
}

// choose returns the IDs member i links to, sorted.
func (g *graph) choose(i int) []string {
	var out []int
	if !g.listens[i] {
		out = g.dialOnly(i)
	} else {
		out = g.fixed(i)
		for _, j := range g.top(i, out) {
			if g.ranks(j, i) {
				out = append(out, j)
			}
		}
	}
	ids := make([]string, 0, len(out))
	for _, j := range out {
		ids = append(ids, g.ids[j])
	}
	slices.Sort(ids)
	return slices.Compact(ids)
}

// fixed are the ring neighbours of listener i and, for a server, the other
// listening servers when the clique fits.
func (g *graph) fixed(i int) []int {
	var out []int
	if n := len(g.ring); n > 1 {
		p := g.pos[i]
		out = append(out, g.ring[(p+1)%n])
		if prev := g.ring[(p+n-1)%n]; prev != out[0] {
			out = append(out, prev)
		}
	}
	if g.clique && g.server[i] {
		for _, j := range g.ring {
			if j != i && g.server[j] && !slices.Contains(out, j) {
				out = append(out, j)
			}
		}
	}
	return out
}

// better reports whether, seen from i, candidate a outranks candidate b:
// a higher pair weight, ties broken by ID so that every node ranks alike.
func (g *graph) better(i, a, b int) bool {
	wa, wb := weight(g.hash[i], g.hash[a]), weight(g.hash[i], g.hash[b])
	if wa != wb {
		return wa > wb
	}
	return g.ids[a] < g.ids[b]
}

// top returns listener i's best chord candidates: the listeners not in
// fixed, ranked by weight, as many as the cap leaves beside fixed.
func (g *graph) top(i int, fixed []int) []int {
	room := g.max - len(fixed)
	if room <= 0 {
		return nil
	}
	// A sorted list of at most room entries: O(room) per insertion, and
	// room is a handful.
	best := make([]int, 0, room+1)
	for _, j := range g.ring {
		if j == i || slices.Contains(fixed, j) {
			continue
		}
		if len(best) == room && !g.better(i, j, best[room-1]) {
			continue
		}
		at, _ := slices.BinarySearchFunc(best, j, func(have, want int) int {
			if g.better(i, have, want) {
				return -1
			}
			return 1
		})
		best = slices.Insert(best, at, j)
		if len(best) > room {
			best = best[:room]
		}
	}
	return best
}

// ranks reports whether listener j counts i among its best chord
// candidates: fewer than j's room outrank i.
func (g *graph) ranks(j, i int) bool {
	fixed := g.fixed(j)
	if slices.Contains(fixed, i) {
		return true
	}
	room := g.max - len(fixed)
	ahead := 0
	for _, k := range g.ring {
		if k == j || k == i || slices.Contains(fixed, k) {
			continue
		}
		if g.better(j, k, i) {
			if ahead++; ahead >= room {
				return false
			}
		}
	}
	return ahead < room
}

// dialOnly returns the listeners dial-only member i dials: all of them
// below the cap; above it, the best servers by weight, then the best
// listeners, dialOnlyLinks in all.
func (g *graph) dialOnly(i int) []int {
	if len(g.ring) <= g.max {
		return slices.Clone(g.ring)
	}
	want := min(dialOnlyLinks, g.max)
	ranked := slices.Clone(g.ring)
	slices.SortFunc(ranked, func(a, b int) int {
		if g.server[a] != g.server[b] {
			if g.server[a] {
				return -1
			}
			return 1
		}
		if g.better(i, a, b) {
			return -1
		}
		return 1
	})
	return ranked[:want]
}

// hashID is FNV-1a of id, 64 bits: stable across versions and machines,
// which the rule depends on (every node must rank alike).
func hashID(id string) uint64 {
	h := uint64(14695981039346656037)
	for i := 0; i < len(id); i++ {
		h ^= uint64(id[i])
		h *= 1099511628211
	}
	return h
}

// weight is the rendezvous weight of a pair: the same from either end.
func weight(a, b uint64) uint64 { return mix(a ^ b) }

// mix is splitmix64's finalizer: it spreads FNV's weak low bits, so that
// the weights of pairs sharing a member look independent.
func mix(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}

// Peer is one link of a node, up or being dialled.
type Peer struct {
	// Endpoint is the remote end ("tcp://host:port"), without the secret.
	Endpoint string `json:"endpoint"`
	Up       bool   `json:"up"`
	// Inbound is true for a link the remote side dialled.
	Inbound bool `json:"inbound,omitempty"`
	// Secret is the fingerprint of the secret an outbound link is dialled
	// with.
	Secret string `json:"secret,omitempty"`
	// Key and Address identify the remote node once the link is up.
	Key     string `json:"key,omitempty"`
	Address string `json:"address,omitempty"`
	// LastError says why the link is down, when it is.
	LastError string        `json:"last_error,omitempty"`
	RXBytes   uint64        `json:"rx_bytes"`
	TXBytes   uint64        `json:"tx_bytes"`
	Uptime    time.Duration `json:"uptime_ns,omitempty"`
}
