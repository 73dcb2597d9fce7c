// Package mesh is a node's overlay network: an embedded yggdrasil node that
// gives the machine a stable IPv6 address in 200::/7, derived from a key pair
// kept on its disk, and carries packets to every other member through
// whichever members can reach each other. A machine needs one link to any
// member, in either direction, to reach them all; Consul then binds to the
// overlay address, so gossip and RPC cross the mesh, never assuming that
// every machine reaches every other.
//
// Links are authenticated by the cluster's mesh secret: both sides of a
// link prove they hold it in the handshake, so a machine without it can
// neither peer with a member nor accept a member's link, and both sides say
// why ("password does not match remote side").
//
// The secret can change on a live node (SetSecrets), which is how a
// rotation replaces it without cutting anyone off. The library checks one
// password per listener and per dialled peer, so a node listens with one
// secret and dials each peer once per secret it holds: during a rotation,
// whichever secret the remote end listens with, one of the dials matches.
// Links already up are kept when the listener changes its secret.
//
// A Node's life:
//
//	Start ─▶ key loaded (or made once) ─▶ TUN up with the overlay address
//	      ─▶ listening (unless dial-only) ─▶ AddPeer/RemovePeer ⇄ links ─▶ Close
package mesh

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/yggdrasil-network/yggdrasil-go/src/address"
	"github.com/yggdrasil-network/yggdrasil-go/src/config"
	"github.com/yggdrasil-network/yggdrasil-go/src/core"
	"github.com/yggdrasil-network/yggdrasil-go/src/ipv6rwc"
	"github.com/yggdrasil-network/yggdrasil-go/src/tun"

	"github.com/raptiformica/raptiformica/internal/endpoint"
	"github.com/raptiformica/raptiformica/internal/fsutil"
	"github.com/raptiformica/raptiformica/internal/telemetry"
	"github.com/raptiformica/raptiformica/mesh/peering"
)

// DefaultInterface is the TUN interface the agent creates.
const DefaultInterface = "raptiformica0"

// SecretLen is the length of a mesh secret: 32 random bytes in hex, the
// longest password a link handshake takes (64 bytes).
const SecretLen = 64

// retryEvery caps the wait between two attempts at a peer that cannot be
// reached: a machine that comes back is found within it. The library's own
// cap is over an hour.
const retryEvery = 30 * time.Second

// Config is what a node's mesh needs.
type Config struct {
	// KeyFile holds the node's private key (hex), created on first start
	// and kept: the overlay address derives from it.
	KeyFile string
	// ListenPort is the TCP port other members dial; 0 makes the node
	// dial-only (behind NAT, or unreachable by choice).
	ListenPort int
	// Secret is the cluster's mesh secret; every link proves it. The node
	// listens with it, and dials with it.
	Secret string
	// DialSecrets are secrets the node dials with too: during a rotation,
	// the one being brought in or retired.
	DialSecrets []string
	// Peers are endpoints ("host:port" or "tcp://host:port") dialled at
	// start and kept.
	Peers []string
	// Interface names the TUN interface that carries the overlay address.
	// Empty runs the node without one (tests in-process): packets to it
	// are read and dropped.
	Interface string
	Log       hclog.Logger

	// onPacket, for tests in-process, is given each packet a node without
	// a TUN interface reads (the buffer is reused after it returns).
	onPacket func([]byte)
	// listenAny, for tests in-process, listens on a port the kernel
	// picks (ListenPort says which): a port picked free and then bound
	// can be taken in between by another test's connection.
	listenAny bool
}

// Node is a running overlay node. Its methods may be called concurrently.
type Node struct {
	core       *core.Core
	rwc        *ipv6rwc.ReadWriteCloser
	tun        *tun.TunAdapter
	log        hclog.Logger
	addr       netip.Addr
	listenPort int
	done       chan struct{}

	mu sync.Mutex // guards what follows
	// peers maps each kept peer (host:port) to the secrets it is dialled
	// with: the node's own, and for a while after a rotation a retired
	// one, until a link dialled with a kept secret is up.
	peers    map[string][]string
	secret   string         // listened with, and dialled with
	dial     []string       // dialled with too, sorted
	listener *core.Listener // nil for a dial-only node
}

// Start brings the node up: loads or creates its key, creates the TUN
// interface with the overlay address, listens, and dials cfg.Peers. A peer
// that cannot be parsed or dialled is logged and skipped, never fatal. The
// node runs until Close.
func Start(cfg Config) (*Node, error) {
	dial, err := checkSecrets(cfg.Secret, cfg.DialSecrets)
	if err != nil {
		return nil, err
	}
	key, err := LoadOrCreateKey(cfg.KeyFile)
	if err != nil {
		return nil, err
	}
	log := cfg.Log
	if log == nil {
		log = hclog.NewNullLogger()
	}
	ycfg := config.GenerateConfig()
	ycfg.PrivateKey = config.KeyBytes(key)
	if err := ycfg.GenerateSelfSignedCertificate(); err != nil {
		return nil, fmt.Errorf("mesh certificate: %w", err)
	}
	c, err := core.New(ycfg.Certificate, logAdapter{log})
	if err != nil {
		return nil, fmt.Errorf("mesh: %w", err)
	}
	n := &Node{core: c, secret: cfg.Secret, dial: dial, listenPort: cfg.ListenPort, log: log, peers: map[string][]string{}, done: make(chan struct{})}
	if cfg.ListenPort > 0 || cfg.listenAny {
		// The listener is the node's own, not a setup option, so that
		// SetSecrets can replace it.
		if n.listener, err = n.listen(cfg.Secret); err != nil {
			c.Stop()
			return nil, err
		}
		if a, ok := n.listener.Addr().(*net.TCPAddr); ok {
			n.listenPort = a.Port
		}
	}
	n.addr, _ = netip.AddrFromSlice(c.Address())
	n.rwc = ipv6rwc.NewReadWriteCloser(c)
	if cfg.Interface != "" {
		t, err := tun.New(n.rwc, logAdapter{log}, tun.InterfaceName(cfg.Interface), tun.InterfaceMTU(n.rwc.MaxMTU()))
		if err != nil {
			c.Stop()
			return nil, fmt.Errorf("mesh interface %s: %w (the agent needs CAP_NET_ADMIN and /dev/net/tun)", cfg.Interface, err)
		}
		n.tun = t
	} else {
		// The core handles its session packets only while someone reads:
		// without a TUN, this node reads (and drops) itself.
		go n.drain(cfg.onPacket)
	}
	for _, p := range cfg.Peers {
		// One peer that cannot be dialled must not keep the node down: the
		// peers come from the config and the mirror, which every node
		// shares, so one bad spelling there stopped every node at its
		// next restart. The others are enough to join.
		if err := n.AddPeer(p); err != nil {
			log.Warn("mesh peer skipped", telemetry.KeyEndpoint, p, telemetry.KeyError, err)
		}
	}
	return n, nil
}

func (n *Node) drain(onPacket func([]byte)) {
	buf := make([]byte, 65535)
	for {
		m, err := n.rwc.Read(buf)
		if err != nil {
			select {
			case <-n.done:
				return
			default:
			}
			continue
		}
		if onPacket != nil {
			onPacket(buf[:m])
		}
	}
}

// Address is the node's overlay address.
func (n *Node) Address() netip.Addr { return n.addr }

// ListenPort is the TCP port the node listens on; 0 for a dial-only node.
func (n *Node) ListenPort() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.listenPort
}

// PublicKey is the node's public key in hex.
func (n *Node) PublicKey() string { return hex.EncodeToString(n.core.PublicKey()) }

// listen opens the node's listener, whose handshake checks secret; the
// caller holds mu or owns the node alone.
func (n *Node) listen(secret string) (*core.Listener, error) {
	u := &url.URL{Scheme: "tcp", Host: net.JoinHostPort("::", strconv.Itoa(n.listenPort))}
	l, err := n.core.Listen(withSecret(u, secret), "")
	if err != nil {
		return nil, fmt.Errorf("mesh listen on port %d: %w", n.listenPort, err)
	}
	return l, nil
}

// AddPeer dials ep, with each secret the node holds, and keeps dialling it
// while it is unreachable or after its link drops, until RemovePeer.
// Adding a kept peer again is a no-op.
func (n *Node) AddPeer(ep string) error {
	u, err := endpoint.Parse(ep)
	if err != nil {
		return err
	}
	key := u.Host
	n.mu.Lock()
	defer n.mu.Unlock()
	if _, ok := n.peers[key]; ok {
		return nil
	}
	var dialled []string
	for _, secret := range n.secrets() {
		if err := n.core.AddPeer(dialURL(key, secret), ""); err != nil {
			for _, s := range dialled {
				_ = n.core.RemovePeer(dialURL(key, s), "")
			}
			return fmt.Errorf("mesh peer %s: %w", key, err)
		}
		dialled = append(dialled, secret)
	}
	n.peers[key] = dialled
	return nil
}

// RemovePeer stops dialling ep and closes its links.
func (n *Node) RemovePeer(ep string) error {
	u, err := endpoint.Parse(ep)
	if err != nil {
		return err
	}
	key := u.Host
	n.mu.Lock()
	defer n.mu.Unlock()
	var errs []error
	for _, secret := range n.peers[key] {
		if err := n.core.RemovePeer(dialURL(key, secret), ""); err != nil {
			errs = append(errs, err)
		}
	}
	delete(n.peers, key)
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("mesh peer %s: %w", key, err)
	}
	return nil
}

// secrets are the secrets the node dials with: its own first; the caller
// holds mu.
func (n *Node) secrets() []string { return append([]string{n.secret}, n.dial...) }

// Secrets returns the secret the node listens with and the others it
// dials with, sorted: those SetSecrets gave it and any retired one still
// dialled while a link with a kept secret is not up yet.
func (n *Node) Secrets() (listen string, dial []string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	dial = slices.Clone(n.dial)
	for _, have := range n.peers {
		for _, s := range have {
			if s != n.secret && !slices.Contains(dial, s) {
				dial = append(dial, s)
			}
		}
	}
	sort.Strings(dial)
	return n.secret, dial
}

// SetSecrets makes the node listen with listen and dial every kept peer
// with listen and each of dial, as a rotation's steps ask; called again
// with the same secrets it finishes what the last call left. The order
// keeps every link a node has:
//
//  1. every kept peer is dialled with each new secret;
//  2. the listener takes the new secret: links it accepted run on their
//     own connections and stay up;
//  3. a peer's dials with a secret no longer held are closed only once a
//     link with a held one is up (they are redialled at once meanwhile),
//     or when no dial of that peer is up, so there is nothing to lose.
//
// On an error the node keeps listening with its old secret, and the call
// is to be made again.
func (n *Node) SetSecrets(listen string, dial []string) error {
	dial, err := checkSecrets(listen, dial)
	if err != nil {
		return err
	}
	want := append([]string{listen}, dial...)
	n.mu.Lock()
	defer n.mu.Unlock()
	for host, have := range n.peers {
		for _, secret := range want {
			if slices.Contains(have, secret) {
				continue
			}
			if err := n.core.AddPeer(dialURL(host, secret), ""); err != nil && !errors.Is(err, core.ErrLinkAlreadyConfigured) {
				return fmt.Errorf("mesh peer %s: %w", host, err)
			}
			have = append(have, secret)
			n.peers[host] = have
		}
	}
	if listen != n.secret && n.listener != nil {
		// The port is given up and taken again at once.
		n.listener.Cancel()
		l, err := n.listen(listen)
		if err != nil {
			if n.listener, err = n.listen(n.secret); err != nil {
				n.listener = nil
				n.log.Error("mesh listener lost", telemetry.KeyPort, n.listenPort, telemetry.KeyError, err)
			}
			return err
		}
		n.listener = l
	}
	n.secret, n.dial = listen, dial
	n.retire(want)
	return nil
}

// retire closes the dials with secrets not in want where step 3 of
// SetSecrets allows, and kicks the dials it waits for; the caller holds mu.
func (n *Node) retire(want []string) {
	var up map[string]bool // host and secret fingerprint of links up
	for host, have := range n.peers {
		var kept, stale []string
		for _, s := range have {
			if slices.Contains(want, s) {
				kept = append(kept, s)
			} else {
				stale = append(stale, s)
			}
		}
		if len(stale) == 0 {
			continue
		}
		if up == nil {
			up = n.dialsUp()
		}
		isUp := func(s string) bool { return up[host+"/"+Fingerprint(s)] }
		if !slices.ContainsFunc(kept, isUp) && slices.ContainsFunc(stale, isUp) {
			for _, s := range kept {
				// Adding a dial again redials it now if it is waiting.
				_ = n.core.AddPeer(dialURL(host, s), "")
			}
			continue
		}
		for _, s := range stale {
			_ = n.core.RemovePeer(dialURL(host, s), "")
		}
		n.peers[host] = kept
	}
}

// dialsUp returns the outbound links that are up, as host/fingerprint.
func (n *Node) dialsUp() map[string]bool {
	out := map[string]bool{}
	for _, p := range n.core.GetPeers() {
		if p.Inbound || !p.Up || len(p.Key) != ed25519.PublicKeySize {
			continue
		}
		if u, err := url.Parse(p.URI); err == nil {
			out[u.Host+u.Path] = true
		}
	}
	return out
}

// checkSecrets validates a node's secrets and returns the dial-only ones
// without repeats (nor the listen one), sorted.
func checkSecrets(listen string, dial []string) ([]string, error) {
	var out []string
	for _, s := range append([]string{listen}, dial...) {
		if len(s) == 0 || len(s) > SecretLen {
			return nil, fmt.Errorf("mesh secret must be 1 to %d characters, got %d", SecretLen, len(s))
		}
		if s != listen && !slices.Contains(out, s) {
			out = append(out, s)
		}
	}
	sort.Strings(out)
	return out, nil
}

// Fingerprint names a secret without disclosing it (64 bits of a hash of
// 256 random bits: enough to tell secrets apart, nothing to guess one
// from): a member publishes the fingerprints of the secrets it runs with,
// so that a rotation knows when every member has taken a step.
func Fingerprint(secret string) string {
	sum := sha256.Sum256([]byte("raptiformica mesh secret\x00" + secret))
	return hex.EncodeToString(sum[:8])
}

// Kept returns the endpoints (host:port) this node dials, sorted.
func (n *Node) Kept() []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	out := make([]string, 0, len(n.peers))
	for p := range n.peers {
		out = append(out, p)
	}
	sort.Strings(out)
	return out
}

// dialURL is how the node dials host with secret. The library keys a peer
// by its URL without the query (where the password goes): the path, which
// a TCP dial ignores, tells the dials of one endpoint with two secrets
// apart.
func dialURL(host, secret string) *url.URL {
	d := withSecret(&url.URL{Scheme: "tcp", Host: host}, secret)
	d.Path = "/" + Fingerprint(secret)
	q := d.Query()
	q.Set("maxbackoff", retryEvery.String())
	d.RawQuery = q.Encode()
	return d
}

func withSecret(u *url.URL, secret string) *url.URL {
	c := *u
	q := c.Query()
	q.Set("password", secret)
	c.RawQuery = q.Encode()
	return &c
}

// Peer is one link of a node (peering.Peer: what the agent's API reports,
// kept where a client of that API need not import the overlay).
type Peer = peering.Peer

// Peers returns the node's links, up ones first, then by endpoint.
func (n *Node) Peers() []Peer {
	var out []Peer
	for _, p := range n.core.GetPeers() {
		pe := Peer{Inbound: p.Inbound, RXBytes: p.RXBytes, TXBytes: p.TXBytes, Uptime: p.Uptime}
		pe.Endpoint, pe.Secret = splitURI(p.URI)
		if p.LastError != nil {
			pe.LastError = p.LastError.Error()
		}
		// The library counts a link up from its TCP connection on; it is
		// a link only once the handshake has named the remote key.
		if p.Up && len(p.Key) == ed25519.PublicKeySize {
			pe.Up = true
			pe.Key = hex.EncodeToString(p.Key)
			pe.Address = addrForKey(p.Key).String()
		}
		out = append(out, pe)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Up != out[j].Up {
			return out[i].Up
		}
		return out[i].Endpoint < out[j].Endpoint
	})
	return out
}

// Close stops the node: its links, listener and TUN interface.
func (n *Node) Close() {
	select {
	case <-n.done:
		return
	default:
	}
	close(n.done)
	n.mu.Lock()
	if n.listener != nil {
		n.listener.Cancel()
	}
	n.mu.Unlock()
	if n.tun != nil {
		_ = n.tun.Stop()
	}
	n.core.Stop()
	_ = n.rwc.Close()
}

// splitURI parts a link's URI into its endpoint ("tcp://host:port") and
// the fingerprint of the secret it was dialled with, if any: the secret in
// the query is never shown.
func splitURI(uri string) (endpoint, secret string) {
	u, err := url.Parse(uri)
	if err != nil {
		before, _, _ := strings.Cut(uri, "?")
		return before, ""
	}
	return u.Scheme + "://" + u.Host, strings.TrimPrefix(u.Path, "/")
}

// AddressOf returns the overlay address of the node with the given public
// key (hex).
func AddressOf(publicKey string) (netip.Addr, error) {
	k, err := hex.DecodeString(publicKey)
	if err != nil || len(k) != ed25519.PublicKeySize {
		return netip.Addr{}, fmt.Errorf("mesh public key %q: want %d bytes in hex", publicKey, ed25519.PublicKeySize)
	}
	return addrForKey(k), nil
}

func addrForKey(k ed25519.PublicKey) netip.Addr {
	a := address.AddrForKey(k)
	if a == nil {
		return netip.Addr{}
	}
	return netip.AddrFrom16(*a)
}

// IsOverlay reports whether a is in the overlay's range, 200::/7.
func IsOverlay(a netip.Addr) bool {
	return netip.MustParsePrefix("200::/7").Contains(a)
}

// NewSecret returns a fresh mesh secret.
func NewSecret() string {
	var b [SecretLen / 2]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// LoadOrCreateKey reads the node's private key from name, or creates it
// there (mode 0600) when the file does not exist. A key is never replaced:
// a damaged file is an error, because a new key is a new overlay address.
// An empty file is no key: only a crash of a version that wrote the file
// in place could leave one, before the key was ever used.
func LoadOrCreateKey(name string) (ed25519.PrivateKey, error) {
	b, err := os.ReadFile(name)
	if err == nil && len(bytes.TrimSpace(b)) > 0 {
		k, err := hex.DecodeString(strings.TrimSpace(string(b)))
		if err != nil || len(k) != ed25519.PrivateKeySize {
			return nil, fmt.Errorf("mesh key %s: not a %d-byte key in hex; move it away to make a new one (the node's overlay address changes)", name, ed25519.PrivateKeySize)
		}
		return ed25519.PrivateKey(k), nil
	}
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("mesh key: %w", err)
	}
	empty := err == nil
	_, k, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("mesh key: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(name), 0o700); err != nil {
		return nil, fmt.Errorf("mesh key: %w", err)
	}
	if empty {
		if err := fsutil.WriteFileAtomic(name, []byte(hex.EncodeToString(k)+"\n"), 0o600); err != nil {
			return nil, fmt.Errorf("mesh key: %w", err)
		}
		return k, nil
	}
	// Written whole to a file of its own, then linked into place: a crash
	// leaves no half-written key, and of two starts racing the first
	// link wins and the other reads its key.
	f, err := os.CreateTemp(filepath.Dir(name), ".mesh.key.tmp*")
	if err != nil {
		return nil, fmt.Errorf("mesh key: %w", err)
	}
	defer os.Remove(f.Name())
	_, err = f.WriteString(hex.EncodeToString(k) + "\n")
	if err == nil {
		err = f.Chmod(0o600)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, fmt.Errorf("mesh key %s: %w", name, err)
	}
	if err := os.Link(f.Name(), name); errors.Is(err, fs.ErrExist) {
		return LoadOrCreateKey(name)
	} else if err != nil {
		return nil, fmt.Errorf("mesh key: %w", err)
	}
	return k, fsutil.SyncDir(filepath.Dir(name))
}

// logAdapter routes the library's log lines into hclog. The library logs a
// refused incoming link at debug level; it is raised to warn, because an
// operator wants to know who failed to peer and why.
type logAdapter struct{ l hclog.Logger }

func (a logAdapter) Printf(f string, v ...any) { a.l.Info(strings.TrimSpace(fmt.Sprintf(f, v...))) }
func (a logAdapter) Println(v ...any)          { a.l.Info(strings.TrimSpace(fmt.Sprintln(v...))) }
func (a logAdapter) Infof(f string, v ...any)  { a.l.Debug(strings.TrimSpace(fmt.Sprintf(f, v...))) }
func (a logAdapter) Infoln(v ...any)           { a.l.Debug(strings.TrimSpace(fmt.Sprintln(v...))) }
func (a logAdapter) Warnf(f string, v ...any)  { a.l.Warn(strings.TrimSpace(fmt.Sprintf(f, v...))) }
func (a logAdapter) Warnln(v ...any)           { a.l.Warn(strings.TrimSpace(fmt.Sprintln(v...))) }
func (a logAdapter) Errorf(f string, v ...any) { a.l.Error(strings.TrimSpace(fmt.Sprintf(f, v...))) }
func (a logAdapter) Errorln(v ...any)          { a.l.Error(strings.TrimSpace(fmt.Sprintln(v...))) }
func (a logAdapter) Debugf(f string, v ...any) {
	msg := strings.TrimSpace(fmt.Sprintf(f, v...))
	if strings.HasPrefix(msg, "Link ") && strings.Contains(msg, " error: ") {
		a.l.Warn("mesh link refused", telemetry.KeyDetail, msg)
		return
	}
	a.l.Trace(msg)
}
func (a logAdapter) Debugln(v ...any) { a.l.Trace(strings.TrimSpace(fmt.Sprintln(v...))) }
func (a logAdapter) Traceln(v ...any) { a.l.Trace(strings.TrimSpace(fmt.Sprintln(v...))) }
