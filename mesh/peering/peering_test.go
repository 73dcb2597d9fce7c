package peering

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// cluster is a member list for tests: n listeners named m00.., the first
// servers of them Consul servers, then dialOnly dial-only members d00...
func cluster(n, servers, dialOnly int) []Member {
	var out []Member
	for i := range n {
		out = append(out, Member{ID: fmt.Sprintf("m%02d", i), Server: i < servers, Listens: true})
	}
	for i := range dialOnly {
		out = append(out, Member{ID: fmt.Sprintf("d%02d", i)})
	}
	return out
}

func member(members []Member, id string) Member {
	for _, m := range members {
		if m.ID == id {
			return m
		}
	}
	return Member{ID: id}
}

// links returns every member's choice.
func links(members []Member, maxLinks int) map[string][]string {
	out := map[string][]string{}
	for _, m := range members {
		out[m.ID] = Choose(m, members, maxLinks)
	}
	return out
}

func TestChooseTable(t *testing.T) {
	all := func(members []Member, self string) []string {
		var out []string
		for _, m := range members {
			if m.ID != self && m.Listens {
				out = append(out, m.ID)
			}
		}
		slices.Sort(out)
		return out
	}
	three := cluster(3, 1, 0)
	nine := cluster(9, 3, 0)
	withDialOnly := cluster(4, 1, 2)
	big := cluster(40, 3, 3)
	for _, tc := range []struct {
		name     string
		self     Member
		members  []Member
		maxLinks int
		want     []string
	}{
		{name: "alone", self: Member{ID: "a", Listens: true}, maxLinks: 8, want: []string{}},
		{name: "alone among nobody who listens", self: Member{ID: "a"}, members: []Member{{ID: "b"}}, maxLinks: 8, want: []string{}},
		{name: "two", self: Member{ID: "a", Listens: true}, members: []Member{{ID: "b", Listens: true}}, maxLinks: 8, want: []string{"b"}},
		{name: "three, below the cap: everyone", self: three[0], members: three, maxLinks: 8, want: all(three, "m00")},
		{name: "nine with a cap of eight: everyone", self: nine[4], members: nine, maxLinks: 8, want: all(nine, "m04")},
		{name: "self not in the list yet", self: Member{ID: "new", Listens: true}, members: three, maxLinks: 8, want: all(three, "new")},
		{name: "a dial-only member below the cap dials every listener", self: withDialOnly[4], members: withDialOnly, maxLinks: 8, want: all(withDialOnly, "d00")},
		{name: "a listener below the cap does not dial dial-only members", self: withDialOnly[1], members: withDialOnly, maxLinks: 8, want: all(withDialOnly, "m01")},
		{name: "a cap below two counts as two", self: big[7], members: big, maxLinks: 0, want: Choose(big[7], big, 2)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := Choose(tc.self, tc.members, tc.maxLinks)
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("Choose (-want +got):\n%s", diff)
			}
		})
	}
	// Above the cap a dial-only member dials two servers, and a listener
	// with a cap of two its ring neighbours only.
	if got := Choose(member(big, "d01"), big, 8); len(got) != 2 || !slices.Contains([]string{"m00", "m01", "m02"}, got[0]) || !slices.Contains([]string{"m00", "m01", "m02"}, got[1]) {
		t.Errorf("a dial-only member of a big cluster dials %v, want two of the servers m00..m02", got)
	}
	if got := Choose(big[7], big, 2); len(got) != 2 {
		t.Errorf("with a cap of two a listener links to %v, want its two ring neighbours", got)
	}
}

// The same members listed in another order, or twice, give the same
// choice: the rule depends on the set, not on how KV listed it.
func TestChooseIgnoresOrder(t *testing.T) {
	members := cluster(60, 3, 5)
	want := links(members, 8)
	r := rand.New(rand.NewPCG(1, 2))
	shuffled := slices.Clone(members)
	r.Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
	shuffled = append(shuffled, shuffled[:10]...)
	if diff := cmp.Diff(want, links(shuffled, 8)); diff != "" {
		t.Errorf("choice after a shuffle (-want +got):\n%s", diff)
	}
}

// TestScaleChooseProperties checks, over random clusters (sizes, servers,
// dial-only members, caps), what the rule promises:
//   - both ends of a link between listeners choose it;
//   - no listener has more links among listeners than the cap;
//   - the links (dial-only members' included) make one connected graph;
//   - below the cap every listener links to every other.
func TestScaleChooseProperties(t *testing.T) {
	r := rand.New(rand.NewPCG(18, 2026))
	for trial := range 300 {
		n := 1 + r.IntN(120)
		servers := r.IntN(min(n, 7) + 1)
		dialOnly := r.IntN(6)
		maxLinks := MinMaxLinks + r.IntN(11)
		members := cluster(n, servers, dialOnly)
		for i := range members {
			members[i].ID = fmt.Sprintf("%s-%d", members[i].ID, r.Uint32())
		}
		name := fmt.Sprintf("trial %d: %d listeners (%d servers), %d dial-only, cap %d", trial, n, servers, dialOnly, maxLinks)
		got := links(members, maxLinks)
		listens := map[string]bool{}
		for _, m := range members {
			listens[m.ID] = m.Listens
		}
		for _, m := range members {
			if !m.Listens {
				if len(got[m.ID]) > maxLinks {
					t.Fatalf("%s: dial-only %s links to %d members, over the cap", name, m.ID, len(got[m.ID]))
				}
				continue
			}
			among := 0
			for _, p := range got[m.ID] {
				if !listens[p] {
					t.Fatalf("%s: %s dials dial-only %s", name, m.ID, p)
				}
				among++
				if !slices.Contains(got[p], m.ID) {
					t.Fatalf("%s: %s chose %s, which did not choose it back", name, m.ID, p)
				}
			}
			if among > maxLinks {
				t.Fatalf("%s: %s links to %d listeners, over the cap: %v", name, m.ID, among, got[m.ID])
			}
			if n-1 <= maxLinks && among != n-1 {
				t.Fatalf("%s: below the cap %s links to %d of the %d other listeners", name, m.ID, among, n-1)
			}
		}
		if c := components(got); n > 0 && c != 1 {
			t.Fatalf("%s: the links make %d separate parts, want one", name, c)
		}
	}
}

// components counts the connected parts of the undirected graph links
// draws (each member a vertex).
func components(links map[string][]string) int {
	adj := map[string][]string{}
	for a, peers := range links {
		adj[a] = append(adj[a], peers...)
		for _, b := range peers {
			adj[b] = append(adj[b], a)
		}
	}
	seen := map[string]bool{}
	parts := 0
	for v := range links {
		if seen[v] {
			continue
		}
		parts++
		stack := []string{v}
		seen[v] = true
		for len(stack) > 0 {
			x := stack[len(stack)-1]
			stack = stack[:len(stack)-1]
			for _, y := range adj[x] {
				if !seen[y] {
					seen[y] = true
					stack = append(stack, y)
				}
			}
		}
	}
	return parts
}

// TestScaleChurnIsLocal: one member joining or leaving changes the choice
// of a few members only, however large the cluster: the bound does not
// grow from 100 to 1,000 members.
func TestScaleChurnIsLocal(t *testing.T) {
	const maxLinks = 8
	// The ring changes two neighbours, the chords the members that rank
	// the newcomer among their best and those their displaced chords led
	// to: a few times the cap at most.
	const bound = 3 * maxLinks
	r := rand.New(rand.NewPCG(7, 11))
	for _, n := range []int{100, 1000} {
		members := cluster(n, 3, 0)
		for i := range members {
			members[i].ID = fmt.Sprintf("%s-%d", members[i].ID, r.Uint32())
		}
		before := links(members, maxLinks)
		worst, total := 0, 0
		trials := 20
		if n > 200 {
			trials = 3 // each trial recomputes every member's choice
		}
		for trial := range trials {
			var after map[string][]string
			var what string
			if trial%2 == 0 {
				joined := append(slices.Clone(members), Member{ID: fmt.Sprintf("new-%d", r.Uint32()), Listens: true})
				after, what = links(joined, maxLinks), "a member joining"
			} else {
				gone := slices.Delete(slices.Clone(members), trial, trial+1)
				after, what = links(gone, maxLinks), "a member leaving ("+members[trial].ID+")"
			}
			changed := 0
			for id, was := range before {
				if now, ok := after[id]; ok && !slices.Equal(was, now) {
					changed++
				}
			}
			if changed > bound {
				t.Errorf("%d members: %s changed the links of %d members, want at most %d", n, what, changed, bound)
			}
			worst, total = max(worst, changed), total+changed
		}
		t.Logf("%d members, cap %d: one member joining or leaving changed the links of %.1f members on average, %d at worst", n, maxLinks, float64(total)/float64(trials), worst)
	}
}

// BenchmarkChoose is one node's choice among N members, as a node computes
// it when the member list changes.
func BenchmarkChoose(b *testing.B) {
	for _, n := range []int{1000, 5000} {
		b.Run(fmt.Sprintf("N=%d", n), func(b *testing.B) {
			members := cluster(n, 3, n/10)
			self := members[n/2]
			for b.Loop() {
				Choose(self, members, DefaultMaxLinks)
			}
		})
	}
}
