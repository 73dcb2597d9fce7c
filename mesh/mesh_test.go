package mesh

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// How startNode's node listens: on a port the kernel picks, or not at all.
const (
	listens  = true
	dialOnly = false
)

func startNode(t *testing.T, dir string, listen bool, secret string, peers ...string) *Node {
	t.Helper()
	n, err := Start(Config{KeyFile: filepath.Join(dir, "mesh.key"), listenAny: listen, Secret: secret, Peers: peers})
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
	a := startNode(t, t.TempDir(), listens, secret)
	pa := a.ListenPort()
	b := startNode(t, t.TempDir(), listens, secret, "127.0.0.1:"+strconv.Itoa(pa))
	pb := b.ListenPort()
	c := startNode(t, t.TempDir(), dialOnly, secret, "tcp://127.0.0.1:"+strconv.Itoa(pb))

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
	a := startNode(t, t.TempDir(), listens, NewSecret())
	pa := a.ListenPort()
	x := startNode(t, t.TempDir(), dialOnly, NewSecret(), "127.0.0.1:"+strconv.Itoa(pa))
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
	n := startNode(t, dir, dialOnly, NewSecret())
	addr := n.Address()
	n.Close()
	info, err := os.Stat(filepath.Join(dir, "mesh.key"))
	if err != nil || info.Mode().Perm() != 0o600 {
		t.Fatalf("key file: %v, mode %v; want 0600", err, info.Mode())
	}
	again := startNode(t, dir, dialOnly, NewSecret())
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

// linkedTo reports whether n has a link up to the node with key.
func linkedTo(n *Node, key string) bool {
	for _, p := range upPeers(n) {
		if p.Key == key {
			return true
		}
	}
	return false
}

// TestSecretRotationKeepsLinks takes A ← B ← C (C dial-only) through a
// rotation's three steps, one node at a time as members take them, while
// a watcher checks every few milliseconds that B stays linked to A and C:
// no link is ever lost. Afterwards the old secret is refused and the new
// one links.
func TestSecretRotationKeepsLinks(t *testing.T) {
	old, next := NewSecret(), NewSecret()
	a := startNode(t, t.TempDir(), listens, old)
	pa := a.ListenPort()
	b := startNode(t, t.TempDir(), listens, old, "127.0.0.1:"+strconv.Itoa(pa))
	pb := b.ListenPort()
	c := startNode(t, t.TempDir(), dialOnly, old, "127.0.0.1:"+strconv.Itoa(pb))
	nodes := []*Node{a, b, c}
	waitFor(t, "B linked to A and C", 10*time.Second, func() bool {
		return linkedTo(b, a.PublicKey()) && linkedTo(b, c.PublicKey()) && linkedTo(c, b.PublicKey())
	})

	linked := func() string {
		switch {
		case !linkedTo(b, a.PublicKey()):
			return "B has no link to A"
		case !linkedTo(b, c.PublicKey()):
			return "B has no link to C"
		}
		return ""
	}
	stop := make(chan struct{})
	lost := make(chan string, 1)
	go func() {
		defer close(lost)
		for {
			if why := linked(); why != "" {
				lost <- why
				return
			}
			select {
			case <-stop:
				return
			case <-time.After(5 * time.Millisecond):
			}
		}
	}()
	step := func(name, listen string, dial []string, done func(*Node) bool) {
		t.Helper()
		for _, n := range nodes {
			if err := n.SetSecrets(listen, dial); err != nil {
				t.Fatalf("%s: %v", name, err)
			}
		}
		// The agent calls SetSecrets on every pass until the node is
		// done with the step.
		waitFor(t, name, time.Minute, func() bool {
			all := true
			for _, n := range nodes {
				if err := n.SetSecrets(listen, dial); err != nil {
					t.Fatalf("%s: %v", name, err)
				}
				all = all && done(n)
			}
			// A step is over once the links are up again too.
			all = all && linked() == ""
			if !all {
				time.Sleep(200 * time.Millisecond)
			}
			return all
		})
	}
	dialsWith := func(want ...string) func(*Node) bool {
		return func(n *Node) bool {
			_, dial := n.Secrets()
			return fmt.Sprint(dial) == fmt.Sprint(want)
		}
	}
	step("every node dials with the new secret too", old, []string{next}, dialsWith(next))
	step("every node listens with the new secret", next, []string{old}, dialsWith(old))
	step("every node drops the old secret", next, nil, dialsWith())
	close(stop)
	if why, ok := <-lost; ok {
		t.Fatalf("a link was lost during the rotation: %s", why)
	}
	for _, n := range nodes {
		if listen, _ := n.Secrets(); listen != next {
			t.Fatalf("a node listens with %s after the rotation, want the new secret", Fingerprint(listen))
		}
		for _, p := range n.Peers() {
			if strings.Contains(p.Endpoint, "password") || strings.Contains(p.Endpoint, old) || strings.Contains(p.Endpoint, next) {
				t.Fatalf("a peer's endpoint shows the secret: %q", p.Endpoint)
			}
			if !p.Inbound && p.Secret != Fingerprint(next) {
				t.Fatalf("a dial with secret %q after the rotation: %+v", p.Secret, p)
			}
		}
	}

	// The old secret no longer links, the new one does.
	stale := startNode(t, t.TempDir(), dialOnly, old, "127.0.0.1:"+strconv.Itoa(pa))
	fresh := startNode(t, t.TempDir(), dialOnly, next, "127.0.0.1:"+strconv.Itoa(pa))
	waitFor(t, "the new secret to link", 10*time.Second, func() bool { return linkedTo(fresh, a.PublicKey()) })
	var why string
	waitFor(t, "the old secret's refusal", 10*time.Second, func() bool {
		for _, p := range stale.Peers() {
			if p.Up {
				t.Fatalf("a node with the old secret linked: %+v", p)
			}
			why = p.LastError
		}
		return why != ""
	})
	if !strings.Contains(why, "password does not match") {
		t.Fatalf("old secret: last error %q, want the secret refused", why)
	}
}

// TestStartWithTwoSecrets: a node restarted in the middle of a rotation
// dials with both secrets it holds, so it links to a member listening with
// either.
func TestStartWithTwoSecrets(t *testing.T) {
	old, next := NewSecret(), NewSecret()
	a := startNode(t, t.TempDir(), listens, old)
	b := startNode(t, t.TempDir(), listens, next)
	pa, pb := a.ListenPort(), b.ListenPort()
	n, err := Start(Config{KeyFile: filepath.Join(t.TempDir(), "mesh.key"), Secret: next, DialSecrets: []string{old, next},
		Peers: []string{"127.0.0.1:" + strconv.Itoa(pa), "127.0.0.1:" + strconv.Itoa(pb)}})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	waitFor(t, "links to both", 10*time.Second, func() bool { return linkedTo(n, a.PublicKey()) && linkedTo(n, b.PublicKey()) })
	if listen, dial := n.Secrets(); listen != next || fmt.Sprint(dial) != fmt.Sprint([]string{old}) {
		t.Fatalf("secrets: listen %s dial %v; want the new one and the old one once", Fingerprint(listen), dial)
	}
	if _, err := Start(Config{KeyFile: filepath.Join(t.TempDir(), "mesh.key"), Secret: next, DialSecrets: []string{strings.Repeat("x", SecretLen+1)}}); err == nil {
		t.Fatal("a node started with a dial secret too long for a link")
	}
}

// A key file left empty by a crash mid-write (of a version that wrote it in
// place) held the node up for ever: it is no key, and a new one is made.
func TestHostileEmptyMeshKey(t *testing.T) {
	name := filepath.Join(t.TempDir(), "mesh.key")
	if err := os.WriteFile(name, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	k, err := LoadOrCreateKey(name)
	if err != nil {
		t.Fatalf("an empty key file: %v", err)
	}
	again, err := LoadOrCreateKey(name)
	if err != nil || !again.Equal(k) {
		t.Errorf("the key made is not the one kept: %v", err)
	}
	if st, err := os.Stat(name); err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("key file mode: %v %v", st.Mode(), err)
	}
}
