package mesh

import (
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// freePort returns a TCP port free on loopback now.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func startNode(t *testing.T, dir string, port int, secret string, peers ...string) *Node {
	t.Helper()
	n, err := Start(Config{KeyFile: filepath.Join(dir, "mesh.key"), ListenPort: port, Secret: secret, Peers: peers})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(n.Close)
	return n
}

func waitFor(t *testing.T, what string, timeout time.Duration, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func upPeers(n *Node) []Peer {
	var up []Peer
	for _, p := range n.Peers() {
		if p.Up {
			up = append(up, p)
		}
	}
	return up
}

// TestChainLinks: A ← B ← C, where C only dials (no listener): B holds a
// link to each, C's only link is B's, and every node's address derives
// from its key. (That packets cross such a chain is asserted end to end, on
// containers through their TUN interfaces: in-process, without one, the
// library's first route lookups were not reliable enough to assert on.)
func TestChainLinks(t *testing.T) {
	secret := NewSecret()
	pa, pb := freePort(t), freePort(t)
	a := startNode(t, t.TempDir(), pa, secret)
	b := startNode(t, t.TempDir(), pb, secret, "127.0.0.1:"+strconv.Itoa(pa))
	c := startNode(t, t.TempDir(), 0, secret, "tcp://127.0.0.1:"+strconv.Itoa(pb))

	for _, n := range []*Node{a, b, c} {
		if !IsOverlay(n.Address()) {
			t.Fatalf("address %s is not in 200::/7", n.Address())
		}
		if got, err := AddressOf(n.PublicKey()); err != nil || got != n.Address() {
			t.Fatalf("AddressOf(key) = %s, %v; want %s", got, err, n.Address())
		}
	}
	waitFor(t, "B to have two links up", 10*time.Second, func() bool { return len(upPeers(b)) == 2 })
	for _, p := range upPeers(b) {
		if p.Address != a.Address().String() && p.Address != c.Address().String() {
			t.Fatalf("B has a link to %s; want A (%s) and C (%s)", p.Address, a.Address(), c.Address())
		}
	}
	for _, p := range upPeers(c) {
		if p.Address != b.Address().String() {
			t.Fatalf("C has a link to %s; want only B (%s)", p.Address, b.Address())
		}
	}
}

// TestWrongSecretIsRefused: a node without the cluster's secret gets no
// link, and its peer list says why.
func TestWrongSecretIsRefused(t *testing.T) {
	pa := freePort(t)
	a := startNode(t, t.TempDir(), pa, NewSecret())
	x := startNode(t, t.TempDir(), 0, NewSecret(), "127.0.0.1:"+strconv.Itoa(pa))
	var why string
	waitFor(t, "the refused link's error", 10*time.Second, func() bool {
		for _, p := range x.Peers() {
			if p.Up {
				t.Fatalf("a node with another secret linked: %+v", p)
			}
			why = p.LastError
		}
		return why != ""
	})
	if !strings.Contains(why, "password does not match") {
		t.Fatalf("last error %q; want it to say the secret does not match", why)
	}
	if len(upPeers(a)) != 0 {
		t.Fatalf("the member accepted a node with another secret: %+v", a.Peers())
	}
}

// TestKeyIsKept: a node restarted on the same key file has the same address;
// a damaged key file is refused, not replaced.
func TestKeyIsKept(t *testing.T) {
	dir := t.TempDir()
	n := startNode(t, dir, 0, NewSecret())
	addr := n.Address()
	n.Close()
	info, err := os.Stat(filepath.Join(dir, "mesh.key"))
	if err != nil || info.Mode().Perm() != 0o600 {
		t.Fatalf("key file: %v, mode %v; want 0600", err, info.Mode())
	}
	again := startNode(t, dir, 0, NewSecret())
	if again.Address() != addr {
		t.Fatalf("address after restart %s; want %s", again.Address(), addr)
	}
	again.Close()
	if err := os.WriteFile(filepath.Join(dir, "mesh.key"), []byte("nonsense\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Start(Config{KeyFile: filepath.Join(dir, "mesh.key"), Secret: NewSecret()}); err == nil || !strings.Contains(err.Error(), "mesh.key") {
		t.Fatalf("start on a damaged key: %v; want an error naming the file", err)
	}
}
