package rotate

import (
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/hashicorp/consul/api"

	"github.com/raptiformica/raptiformica/internal/state"
	"github.com/raptiformica/raptiformica/mesh"
	"github.com/raptiformica/raptiformica/reconcile"
)

// Serf's status codes, as api.AgentMember carries them.
const (
	alive   = 1
	leaving = 2
	left    = 3
	failed  = 4
)

func TestUnsettled(t *testing.T) {
	rec := func(id string, s reconcile.State) reconcile.Record { return reconcile.Record{ID: id, State: s} }
	for _, tc := range []struct {
		name    string
		records []reconcile.Record
		members map[string]int
		want    []string
		ids     []string
	}{
		{name: "every machine joined and alive", records: []reconcile.Record{rec("a", reconcile.StateJoined), rec("b", reconcile.StateJoined)},
			members: map[string]int{"a": alive, "b": alive}, ids: []string{"a", "b"}},
		{name: "a machine being made, one failed, one gone from Consul", records: []reconcile.Record{
			rec("a", reconcile.StateJoined), rec("b", reconcile.StateSpawning), rec("c", reconcile.StateFailed), rec("d", reconcile.StateJoined), rec("e", reconcile.StateJoined)},
			members: map[string]int{"a": alive, "c": failed, "e": left},
			want:    []string{"machine b is spawning", "machine c is failed", "machine d is not a member", "machine e is a left member"},
			ids:     []string{"a", "b", "c", "d", "e"}},
		{name: "a machine being destroyed is nobody's concern", records: []reconcile.Record{rec("a", reconcile.StateJoined), rec("z", reconcile.StateDestroying)},
			members: map[string]int{"a": alive, "z": failed}, ids: []string{"a"}},
		{name: "members joined by hand count: alive, failed, or gone", records: []reconcile.Record{rec("a", reconcile.StateJoined)},
			members: map[string]int{"a": alive, "laptop": alive, "nas": failed, "old": left, "going": leaving},
			want:    []string{"member going is leaving", "member nas is failed"}, ids: []string{"a", "laptop"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cl := cluster{records: map[string]reconcile.Record{}}
			for _, r := range tc.records {
				cl.records[r.ID] = r
			}
			for name, st := range tc.members {
				cl.members = append(cl.members, &api.AgentMember{Name: name, Status: st})
			}
			if diff := cmp.Diff(tc.want, cl.unsettled()); diff != "" {
				t.Errorf("unsettled (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tc.ids, cl.ids()); diff != "" {
				t.Errorf("ids (-want +got):\n%s", diff)
			}
		})
	}
}

func TestKeyrings(t *testing.T) {
	const oldKey, newKey = "old", "new"
	ring := func(n int, keys, primary map[string]int) *api.KeyringResponse {
		return &api.KeyringResponse{Datacenter: "dc1", NumNodes: n, Keys: keys, PrimaryKeys: primary}
	}
	for _, tc := range []struct {
		name       string
		rings      []*api.KeyringResponse
		held, used []string // what missing says for the new key
		primary    string
		others     []string
	}{
		{name: "before: the old key everywhere", rings: []*api.KeyringResponse{ring(3, map[string]int{oldKey: 3}, map[string]int{oldKey: 3})},
			held: []string{"0 of 3 members of dc1 hold the new key"}, used: []string{"0 of 3 members of dc1 encrypt with the new key"},
			primary: oldKey, others: []string{oldKey}},
		{name: "installed on two of three", rings: []*api.KeyringResponse{ring(3, map[string]int{oldKey: 3, newKey: 2}, map[string]int{oldKey: 3})},
			held: []string{"2 of 3 members of dc1 hold the new key"}, used: []string{"0 of 3 members of dc1 encrypt with the new key"},
			primary: oldKey, others: []string{oldKey}},
		{name: "installed everywhere, used by one", rings: []*api.KeyringResponse{ring(3, map[string]int{oldKey: 3, newKey: 3}, map[string]int{oldKey: 2, newKey: 1})},
			used: []string{"1 of 3 members of dc1 encrypt with the new key"}, others: []string{oldKey}},
		{name: "used everywhere; the WAN pool is not ours", rings: []*api.KeyringResponse{
			ring(3, map[string]int{oldKey: 3, newKey: 3}, map[string]int{newKey: 3}),
			{WAN: true, NumNodes: 9, Keys: map[string]int{"wan": 9}, PrimaryKeys: map[string]int{"wan": 9}}},
			primary: newKey, others: []string{oldKey}},
		{name: "after: the new key only", rings: []*api.KeyringResponse{ring(3, map[string]int{newKey: 3}, map[string]int{newKey: 3})}, primary: newKey, others: []string{}},
		{name: "no pool listed", held: []string{"Consul listed no gossip pool"}, used: []string{"Consul listed no gossip pool"}, others: []string{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if diff := cmp.Diff(tc.held, missing(tc.rings, newKey, false)); diff != "" {
				t.Errorf("held (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tc.used, missing(tc.rings, newKey, true)); diff != "" {
				t.Errorf("used (-want +got):\n%s", diff)
			}
			if got := primaryOf(tc.rings); got != tc.primary {
				t.Errorf("primary: got %q want %q", got, tc.primary)
			}
			if diff := cmp.Diff(tc.others, otherKeys(tc.rings, newKey)); diff != "" {
				t.Errorf("other keys (-want +got):\n%s", diff)
			}
		})
	}
	withMessages := ring(2, map[string]int{newKey: 1}, nil)
	withMessages.Messages = map[string]string{"server-b": "key not installed"}
	if got := missing([]*api.KeyringResponse{withMessages}, newKey, false); len(got) != 1 || got[0] != "1 of 2 members of dc1 hold the new key (server-b: key not installed)" {
		t.Errorf("a member's message is not named: %q", got)
	}
}

func TestMeshSteps(t *testing.T) {
	old, next := mesh.NewSecret(), mesh.NewSecret()
	o, n := mesh.Fingerprint(old), mesh.Fingerprint(next)
	nodes := map[string]state.MeshEntry{
		"rest":    {ListenSecret: o},
		"step1":   {ListenSecret: o, DialSecrets: []string{n}},
		"newborn": {ListenSecret: n, DialSecrets: []string{o}}, // made with the new secret, at step 1 or 2
		"step2":   {ListenSecret: n, DialSecrets: []string{o}},
		"done":    {ListenSecret: n},
		"legacy":  {}, // an agent that does not publish its secrets
	}
	ids := []string{"done", "legacy", "newborn", "rest", "step1", "step2", "unlisted"}
	for _, tc := range []struct {
		name string
		done func(state.MeshEntry) bool
		ok   []string
	}{
		{name: "step 1: holds both", done: holdsBoth(old, next), ok: []string{"newborn", "step1", "step2"}},
		{name: "step 2: listens with the new one", done: listensWith(next), ok: []string{"done", "newborn", "step2"}},
		{name: "step 3: runs on the new one alone", done: runsOn(next), ok: []string{"done"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			lagging := meshLagging(ids, nodes, tc.done)
			var named []string
			for _, l := range lagging {
				id, _, _ := strings.Cut(l, " ")
				named = append(named, id)
			}
			var want []string
			for _, id := range ids {
				if !slices.Contains(tc.ok, id) {
					want = append(want, id)
				}
			}
			if diff := cmp.Diff(want, named); diff != "" {
				t.Errorf("lagging (-want +got):\n%s\n%q", diff, lagging)
			}
		})
	}
	if got := meshLagging([]string{"unlisted"}, nodes, runsOn(next)); len(got) != 1 || got[0] != "unlisted has published no mesh entry" {
		t.Errorf("a member without an entry: %q", got)
	}
}
