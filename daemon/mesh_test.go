package daemon

import (
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/raptiformica/raptiformica/internal/endpoint"
	"github.com/raptiformica/raptiformica/internal/nodeconfig"
	"github.com/raptiformica/raptiformica/internal/state"
	"github.com/raptiformica/raptiformica/internal/telemetry"
	"github.com/raptiformica/raptiformica/mesh"
	"github.com/raptiformica/raptiformica/reconcile"
)

func TestUnlistedEntries(t *testing.T) {
	recs := map[string]reconcile.Record{
		// Spawned on two networks, no entry yet: both addresses.
		"new": {ID: "new", Type: "server", State: reconcile.StateJoining, Address: "10.0.1.2", Addresses: []string{"10.0.1.2", "10.0.2.2"}},
		// Joined and re-addressed to the overlay, entry not yet in KV: its
		// old address is still dialled.
		"joined": {ID: "joined", Type: "worker", State: reconcile.StateJoined, Address: "200:1::1", Addresses: []string{"10.0.1.3"}},
		// Has an entry: its endpoints come from there.
		"listed": {ID: "listed", State: reconcile.StateJoined, Address: "10.0.1.4"},
		// Being removed, or adopted by host name: nothing to dial.
		"going":   {ID: "going", State: reconcile.StateDestroying, Address: "10.0.1.5"},
		"by-name": {ID: "by-name", State: reconcile.StateJoining, Address: "nas.home"},
	}
	nodes := map[string]state.MeshEntry{"listed": {MachineID: "listed", Endpoints: []string{"10.0.1.4:9651"}}}
	got := unlistedEntries(recs, nodes, 7000, func(typ string) bool { return typ == "server" })
	want := []state.MeshEntry{
		{MachineID: "joined", Endpoints: []string{"10.0.1.3:7000"}},
		{MachineID: "new", Endpoints: []string{"10.0.1.2:7000", "10.0.2.2:7000"}, Server: true},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("first entries (-want +got):\n%s", diff)
	}
}

func TestHostPorts(t *testing.T) {
	got := endpoint.HostPorts([]string{"tcp://10.0.0.1:9651", "10.0.0.1:9651"}, []string{"[fd00::1]:9651", "not an endpoint", ""})
	want := []string{"10.0.0.1:9651", "[fd00::1]:9651"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("host:port list (-want +got):\n%s", diff)
	}
}

func TestNoPeerProblem(t *testing.T) {
	for _, tc := range []struct {
		name   string
		peers  []mesh.Peer
		listen int
		want   string
	}{
		{name: "dial-only with nothing to dial", listen: 0, want: "this node is dial-only and knows no member to dial"},
		{name: "listening, nobody known", listen: 9651, want: "none has dialled in"},
		{name: "wrong secret", listen: 9651, peers: []mesh.Peer{{Endpoint: "tcp://10.0.0.1:9651", LastError: "password does not match remote side"}},
			want: "tcp://10.0.0.1:9651: password does not match remote side (this node's mesh secret is not the cluster's"},
		{name: "unreachable and still dialling", listen: 9651, peers: []mesh.Peer{{Endpoint: "tcp://10.0.0.1:9651", LastError: "dial tcp 10.0.0.1:9651: i/o timeout"}, {Endpoint: "tcp://10.0.0.2:9651"}},
			want: "tcp://10.0.0.1:9651: dial tcp 10.0.0.1:9651: i/o timeout; tcp://10.0.0.2:9651: dialling"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := noPeerProblem(tc.peers, tc.listen); !strings.Contains(got, tc.want) {
				t.Errorf("got %q, want it to contain %q", got, tc.want)
			}
		})
	}
}

// A mesh node's Consul listens on the overlay and loopback (and, for a
// container, its bridge), and binds gossip to the overlay only.
func TestConsulConfigOnTheMesh(t *testing.T) {
	c := nodeconfig.Config{MachineID: "m", MachineType: "w", DataDir: "/d", BindAddr: "200:1::1", ConsulBinary: "consul",
		Mesh: &nodeconfig.Mesh{ListenPort: 9651, Secret: "s", ServeUnderlay: true, Underlay: "172.18.0.2"}}.WithDefaults()
	cc := consulConfigFor(c, []string{"200:2::1", "200:1::1"})
	if cc.BindAddr != "200:1::1" || cc.AdvertiseAddr != "200:1::1" {
		t.Errorf("bind %s advertise %s, want the overlay address", cc.BindAddr, cc.AdvertiseAddr)
	}
	if cc.ClientAddr != "200:1::1 127.0.0.1 172.18.0.2" {
		t.Errorf("client_addr %q", cc.ClientAddr)
	}
	if diff := cmp.Diff([]string{"200:2::1"}, cc.RetryJoin); diff != "" {
		t.Errorf("retry_join (-want +got):\n%s", diff)
	}
	c.Mesh = nil
	c.BindAddr = "10.0.0.5"
	if cc := consulConfigFor(c, nil); cc.ClientAddr != "10.0.0.5" {
		t.Errorf("without the mesh: client_addr %q, want the node's address only", cc.ClientAddr)
	}
}

// Bytes are counted per link since the last look, across a link that
// restarts (its counts start again); churn counts peers, not links.
func TestMeshMetrics(t *testing.T) {
	s := &meshSync{metrics: telemetry.New()}
	seen, last := map[string]bool{}, map[string][2]uint64{}
	look := func(peers ...mesh.Peer) { s.recordMetrics(peers, seen, last) }
	link := func(ep, key string, rx, tx uint64) mesh.Peer {
		return mesh.Peer{Endpoint: ep, Up: true, Key: key, RXBytes: rx, TXBytes: tx}
	}
	look(link("tcp://b:1", "kb", 100, 10), link("tcp://b:2", "kb", 5, 5), mesh.Peer{Endpoint: "tcp://c:1", LastError: "timeout"})
	look(link("tcp://b:1", "kb", 300, 20))                              // b's second link dropped; b still up
	look(link("tcp://b:1", "kb", 50, 1), link("tcp://d:1", "kd", 7, 7)) // b's link restarted; d came up
	look(link("tcp://d:1", "kd", 7, 7))                                 // b went down
	for _, tc := range []struct {
		name string
		got  float64
		want float64
	}{
		{"rx bytes", testutil.ToFloat64(s.metrics.MeshBytes.WithLabelValues("rx")), 100 + 5 + 200 + 50 + 7},
		{"tx bytes", testutil.ToFloat64(s.metrics.MeshBytes.WithLabelValues("tx")), 10 + 5 + 10 + 1 + 7},
		{"peers up", testutil.ToFloat64(s.metrics.MeshPeers.WithLabelValues("up")), 1},
		{"peers down", testutil.ToFloat64(s.metrics.MeshPeers.WithLabelValues("down")), 0},
		{"came up", testutil.ToFloat64(s.metrics.MeshPeerChanges.WithLabelValues("up")), 2},
		{"went down", testutil.ToFloat64(s.metrics.MeshPeerChanges.WithLabelValues("down")), 1},
	} {
		if tc.got != tc.want {
			t.Errorf("%s: got %v want %v", tc.name, tc.got, tc.want)
		}
	}
	if len(last) != 1 {
		t.Errorf("counts kept for %d links, want 1 (the links gone are forgotten)", len(last))
	}
}

// Peers added by hand are kept while of use: dropped once a member
// publishes them (dialled as known anyway) or after a day without coming
// up; a link up, or a mirror from before the field, counts as seen now.
func TestExpireJoined(t *testing.T) {
	now := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	old, recent := now.Add(-joinedTTL-time.Minute), now.Add(-time.Hour)
	m := meshMirror{
		Joined: []string{"a:9651", "b:9651", "c:9651", "d:9651", "e:9651"},
		JoinedSeen: map[string]time.Time{
			"a:9651": old,    // never up for a day: dropped
			"b:9651": old,    // up now: kept, seen now
			"c:9651": recent, // down an hour: kept
			"d:9651": recent, // a member publishes it: dropped
			// e: from a mirror without times: kept, seen now
		},
	}
	got := expireJoined(m, []string{"d:9651"}, map[string]bool{"b:9651": true}, now)
	want := meshMirror{
		Joined:     []string{"b:9651", "c:9651", "e:9651"},
		JoinedSeen: map[string]time.Time{"b:9651": now, "c:9651": recent, "e:9651": now},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("expireJoined (-want +got):\n%s", diff)
	}
}
