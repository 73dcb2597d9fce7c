package mesh

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/raptiformica/raptiformica/mesh/peering"
)

// scaleNode is one node of an in-process mesh, with the packets it got.
type scaleNode struct {
	id   string
	node *Node
	port int

	mu   sync.Mutex      // guards from
	from map[string]bool // overlay addresses a test packet came from
}

// startScaleNodes starts n listening nodes that record the test packets
// they receive.
func startScaleNodes(t *testing.T, n int, secret string) []*scaleNode {
	t.Helper()
	var out []*scaleNode
	for i := range n {
		sn := &scaleNode{id: fmt.Sprintf("node-%02d", i), from: map[string]bool{}}
		node, err := Start(Config{KeyFile: filepath.Join(t.TempDir(), "mesh.key"), listenAny: true, Secret: secret, onPacket: sn.receive})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(node.Close)
		sn.node, sn.port = node, node.ListenPort()
		out = append(out, sn)
	}
	return out
}

// receive records a test packet's source: an IPv6 header with "no next
// header" (59) and our payload.
func (sn *scaleNode) receive(p []byte) {
	if len(p) < 40 || p[6] != 59 || string(p[40:]) != "raptiformica scale test" {
		return
	}
	src, _ := netip.AddrFromSlice(p[8:24])
	sn.mu.Lock()
	sn.from[src.String()] = true
	sn.mu.Unlock()
}

func (sn *scaleNode) heard(addr netip.Addr) bool {
	sn.mu.Lock()
	defer sn.mu.Unlock()
	return sn.from[addr.String()]
}

// send writes one test packet from a to b's overlay address: the overlay
// finds b's key and a path to it over the links there are.
func send(a, b *Node) {
	payload := []byte("raptiformica scale test")
	p := make([]byte, 40+len(payload))
	p[0] = 0x60
	binary.BigEndian.PutUint16(p[4:6], uint16(len(payload)))
	p[6], p[7] = 59, 64
	src, dst := a.Address().As16(), b.Address().As16()
	copy(p[8:24], src[:])
	copy(p[24:40], dst[:])
	copy(p[40:], payload)
	_, _ = a.rwc.Write(p)
}

// linkByRule dials, from each node, the nodes the mesh's rule chooses for
// it, as the agent does (both ends of a link dial it).
func linkByRule(t *testing.T, nodes []*scaleNode, servers, maxLinks int) map[string][]string {
	t.Helper()
	var members []peering.Member
	for i, sn := range nodes {
		members = append(members, peering.Member{ID: sn.id, Server: i < servers, Listens: true})
	}
	byID := map[string]*scaleNode{}
	for _, sn := range nodes {
		byID[sn.id] = sn
	}
	chosen := map[string][]string{}
	for i, sn := range nodes {
		chosen[sn.id] = peering.Choose(members[i], members, maxLinks)
		for _, id := range chosen[sn.id] {
			if err := sn.node.AddPeer("127.0.0.1:" + strconv.Itoa(byID[id].port)); err != nil {
				t.Fatal(err)
			}
		}
	}
	return chosen
}

// peerKeys are the remote keys of n's links up: one per peer machine,
// however many links (a dial each way) it has with it.
func peerKeys(n *Node) []string {
	var out []string
	for _, p := range upPeers(n) {
		if !slices.Contains(out, p.Key) {
			out = append(out, p.Key)
		}
	}
	return out
}

// assertAllReachAll sends test packets between every ordered pair of
// nodes until each has arrived, over the overlay's routes: most pairs
// have no link, so a packet crosses other nodes.
func assertAllReachAll(t *testing.T, nodes []*scaleNode, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		missing := 0
		var example string
		for _, a := range nodes {
			for _, b := range nodes {
				if a == b || b.heard(a.node.Address()) {
					continue
				}
				missing++
				example = a.id + " -> " + b.id
				send(a.node, b.node)
			}
		}
		if missing == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %s, %d of %d pairs never got a packet across the overlay (e.g. %s)", timeout, missing, len(nodes)*(len(nodes)-1), example)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// assertLinks waits until each node has a link up to each node the rule
// chose for it, and checks it has no other and at most maxLinks.
func assertLinks(t *testing.T, nodes []*scaleNode, chosen map[string][]string, maxLinks int) {
	t.Helper()
	keyOf := map[string]string{}
	for _, sn := range nodes {
		keyOf[sn.node.PublicKey()] = sn.id
	}
	for _, sn := range nodes {
		want := chosen[sn.id]
		waitFor(t, sn.id+"'s chosen links", 30*time.Second, func() bool { return len(peerKeys(sn.node)) == len(want) })
		var got []string
		for _, k := range peerKeys(sn.node) {
			got = append(got, keyOf[k])
		}
		slices.Sort(got)
		if !slices.Equal(got, want) {
			t.Errorf("%s has links to %v, the rule chose %v", sn.id, got, want)
		}
		if len(got) > maxLinks {
			t.Errorf("%s has %d peers, over the cap of %d", sn.id, len(got), maxLinks)
		}
	}
}

// TestScaleMeshTwelveNodes: twelve real overlay nodes in-process, three of
// them servers, linked by the mesh's rule with a cap of four: each keeps at
// most four peers (of eleven), and every node reaches every other over
// the overlay.
func TestScaleMeshTwelveNodes(t *testing.T) {
	const maxLinks = 4
	nodes := startScaleNodes(t, 12, NewSecret())
	chosen := linkByRule(t, nodes, 3, maxLinks)
	total := 0
	for _, c := range chosen {
		total += len(c)
	}
	if total == 12*11 {
		t.Fatal("the rule made a full mesh: the test would prove nothing about routing")
	}
	assertLinks(t, nodes, chosen, maxLinks)
	assertAllReachAll(t, nodes, time.Minute)
	t.Logf("12 nodes, cap %d: %.1f peers per node on average, every pair reached", maxLinks, float64(total)/12)
}

// TestScaleMeshChain: with a cap of two the rule makes a ring; with one of
// its nodes gone it is a chain, and every node still reaches every other
// through up to four others, keeping at most two peers.
func TestScaleMeshChain(t *testing.T) {
	const maxLinks = 2
	nodes := startScaleNodes(t, 6, NewSecret())
	chosen := linkByRule(t, nodes, 1, maxLinks)
	assertLinks(t, nodes, chosen, maxLinks)
	assertAllReachAll(t, nodes, time.Minute)

	// Cut the ring: the node that goes takes its two links with it.
	gone := nodes[3]
	gone.node.Close()
	rest := slices.Delete(slices.Clone(nodes), 3, 4)
	for _, sn := range rest {
		if slices.Contains(chosen[sn.id], gone.id) {
			_ = sn.node.RemovePeer("127.0.0.1:" + strconv.Itoa(gone.port))
			chosen[sn.id] = slices.DeleteFunc(slices.Clone(chosen[sn.id]), func(id string) bool { return id == gone.id })
		}
		sn.mu.Lock()
		clear(sn.from)
		sn.mu.Unlock()
	}
	assertLinks(t, rest, chosen, maxLinks)
	ends := 0
	for _, sn := range rest {
		if len(chosen[sn.id]) == 1 {
			ends++
		}
	}
	if ends != 2 {
		t.Fatalf("%d nodes with one link, want the chain's two ends: %v", ends, chosen)
	}
	assertAllReachAll(t, rest, time.Minute)
}
