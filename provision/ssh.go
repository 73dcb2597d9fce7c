package provision

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/subtle"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"
	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/raptiformica/raptiformica/internal/capped"
)

// Host is a machine reached over SSH: [user@]host[:port].
type Host struct {
	User string
	Addr string // host name or address
	Port int
}

// ParseHost reads "[user@]host[:port]"; the user defaults to root and the
// port to 22. IPv6 addresses go in brackets when a port is given.
func ParseHost(s string) (Host, error) {
	h := Host{User: "root", Port: 22}
	if i := strings.LastIndex(s, "@"); i >= 0 {
		h.User, s = s[:i], s[i+1:]
		if h.User == "" {
			return h, fmt.Errorf("host %q: empty user before @", s)
		}
	}
	if host, port, err := net.SplitHostPort(s); err == nil {
		p, err := strconv.Atoi(port)
		if err != nil || p <= 0 || p > 65535 {
			return h, fmt.Errorf("host %q: port %q is not a port number", s, port)
		}
		h.Addr, h.Port = host, p
	} else if len(s) > 1 && s[0] == '[' && s[len(s)-1] == ']' {
		h.Addr = s[1 : len(s)-1]
	} else {
		h.Addr = s
	}
	if h.Addr == "" {
		return h, fmt.Errorf("host %q: no host name", s)
	}
	if !validHost(h.Addr) {
		return h, fmt.Errorf("host %q: %q is neither an IP address nor a host name", s, h.Addr)
	}
	return h, nil
}

// validHost reports whether s is an IP address or a host name (letters,
// digits, dots, hyphens, underscores): what a brace, a colon or a space
// makes of a host is no host.
func validHost(s string) bool {
	if _, err := netip.ParseAddr(s); err == nil {
		return true
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '-' || r == '_') {
			return false
		}
	}
	return true
}

// HostPort is the address SSH dials.
func (h Host) HostPort() string { return net.JoinHostPort(h.Addr, strconv.Itoa(h.Port)) }

func (h Host) String() string {
	s := h.Addr
	if h.Port != 22 {
		s = h.HostPort()
	}
	return h.User + "@" + s
}

// HostKeyStore keeps the host keys trusted on first use, so that every
// later connection, from any node, checks the same key. The cluster's KV is
// the store in practice (see StoreHostKeys).
type HostKeyStore interface {
	// HostKey returns the recorded key of hostport, if any.
	HostKey(ctx context.Context, hostport string) (ssh.PublicKey, bool, error)
	// RecordHostKey records key unless one is recorded already; it returns
	// the key that is recorded afterwards.
	RecordHostKey(ctx context.Context, hostport string, key ssh.PublicKey) (ssh.PublicKey, error)
}

// Trust says how a host's key is checked. Exactly one way decides, the
// first that applies: a fingerprint given for the host, the known_hosts
// files when they name the host, then the keys trusted on first use.
type Trust struct {
	// Fingerprint is the host key's SHA256 fingerprint ("SHA256:..."), as
	// `ssh-keygen -lf` prints it, given by the operator or the backend.
	Fingerprint string
	// KnownHosts are OpenSSH known_hosts files.
	KnownHosts []string
	// Store, when set, trusts a host's first key and records it there.
	Store HostKeyStore
}

// ErrHostKey is a host key that is not the host's as far as we know.
var ErrHostKey = errors.New("host key refused")

// callback builds the host key check for one connection.
func (tr Trust) callback(ctx context.Context, h Host) (ssh.HostKeyCallback, error) {
	var known ssh.HostKeyCallback
	var files []string
	for _, f := range tr.KnownHosts {
		if _, err := os.Stat(f); err == nil {
			files = append(files, f)
		}
	}
	if len(files) > 0 {
		cb, err := knownhosts.New(files...)
		if err != nil {
			return nil, fmt.Errorf("known_hosts: %w", err)
		}
		known = cb
	}
	return func(hostname string, remote net.Addr, key ssh.PublicKey) error {
		got := ssh.FingerprintSHA256(key)
		if tr.Fingerprint != "" {
			if subtle.ConstantTimeCompare([]byte(got), []byte(tr.Fingerprint)) != 1 {
				return fmt.Errorf("%w: %s presents %s %s, but %s was given", ErrHostKey, h.HostPort(), key.Type(), got, tr.Fingerprint)
			}
			return nil
		}
		if known != nil {
			err := known(hostname, remote, key)
			var kerr *knownhosts.KeyError
			switch {
			case err == nil:
				return nil
			case errors.As(err, &kerr) && len(kerr.Want) > 0:
				return fmt.Errorf("%w: %s presents %s %s, which is not the key known_hosts has for it (%s line %d): a changed host key (reinstalled, or someone in between)",
					ErrHostKey, h.HostPort(), key.Type(), got, kerr.Want[0].Filename, kerr.Want[0].Line)
			case errors.As(err, &kerr):
				// Not in known_hosts: trust on first use may decide.
			default:
				return fmt.Errorf("%w: %s: %v", ErrHostKey, h.HostPort(), err)
			}
		}
		if tr.Store == nil {
			return fmt.Errorf("%w: %s presents %s %s, which no known_hosts file, fingerprint or recorded key vouches for", ErrHostKey, h.HostPort(), key.Type(), got)
		}
		rec, err := tr.Store.RecordHostKey(ctx, h.HostPort(), key)
		if err != nil {
			return fmt.Errorf("record host key of %s: %w", h.HostPort(), err)
		}
		if !bytes.Equal(rec.Marshal(), key.Marshal()) {
			return fmt.Errorf("%w: %s presents %s %s, but %s %s was recorded when it was first adopted: a changed host key (if the machine was reinstalled, delete the recorded key and adopt it again)",
				ErrHostKey, h.HostPort(), key.Type(), got, rec.Type(), ssh.FingerprintSHA256(rec))
		}
		return nil
	}, nil
}

// algorithms returns the host key algorithms to ask for when known_hosts
// names the host: those of its keys there. Without it the server may offer
// a key of another type, which known_hosts could only call a mismatch.
func (tr Trust) algorithms(h Host) []string {
	if tr.Fingerprint != "" {
		return nil
	}
	var files []string
	for _, f := range tr.KnownHosts {
		if _, err := os.Stat(f); err == nil {
			files = append(files, f)
		}
	}
	if len(files) == 0 {
		return nil
	}
	cb, err := knownhosts.New(files...)
	if err != nil {
		return nil
	}
	// Asked about a key nobody has, the callback lists the keys it knows.
	probe, err := ssh.NewPublicKey(ed25519.PublicKey(make([]byte, ed25519.PublicKeySize)))
	if err != nil {
		return nil
	}
	var kerr *knownhosts.KeyError
	addr := &net.TCPAddr{IP: net.ParseIP(h.Addr), Port: h.Port}
	if err := cb(h.HostPort(), addr, probe); !errors.As(err, &kerr) {
		return nil
	}
	var algos []string
	seen := map[string]bool{}
	for _, k := range kerr.Want {
		for _, a := range algorithmsFor(k.Key.Type()) {
			if !seen[a] {
				seen[a] = true
				algos = append(algos, a)
			}
		}
	}
	return algos
}

// algorithmsFor maps a key type to the signature algorithms that use it.
func algorithmsFor(keyType string) []string {
	if keyType == ssh.KeyAlgoRSA {
		return []string{ssh.KeyAlgoRSASHA512, ssh.KeyAlgoRSASHA256, ssh.KeyAlgoRSA}
	}
	return []string{keyType}
}

// Auth says how we log in: the keys of the SSH agent and key files.
type Auth struct {
	// Agent is the SSH agent's socket; empty means $SSH_AUTH_SOCK.
	Agent string
	// KeyFiles are private key files (unencrypted, or held by the agent).
	KeyFiles []string
}

// defaultKeyFiles are the key files ssh tries, in ~/.ssh.
func defaultKeyFiles() []string {
	home, err := os.UserHomeDir()
	if err != nil {
		return nil
	}
	var out []string
	for _, n := range []string{"id_ed25519", "id_ecdsa", "id_rsa"} {
		out = append(out, filepath.Join(home, ".ssh", n))
	}
	return out
}

func (a Auth) methods() ([]ssh.AuthMethod, func(), error) {
	var signers []ssh.Signer
	closeAgent := func() {}
	sock := a.Agent
	if sock == "" {
		sock = os.Getenv("SSH_AUTH_SOCK")
	}
	if sock != "" {
		if conn, err := net.Dial("unix", sock); err == nil {
			closeAgent = func() { conn.Close() }
			if ss, err := agent.NewClient(conn).Signers(); err == nil {
				signers = append(signers, ss...)
			}
		}
	}
	for _, f := range a.KeyFiles {
		b, err := os.ReadFile(f)
		if errors.Is(err, os.ErrNotExist) {
			continue
		} else if err != nil {
			closeAgent()
			return nil, nil, fmt.Errorf("key file %s: %w", f, err)
		}
		s, err := ssh.ParsePrivateKey(b)
		var pass *ssh.PassphraseMissingError
		if errors.As(err, &pass) {
			continue // the agent holds it, or it cannot be used unattended
		} else if err != nil {
			closeAgent()
			return nil, nil, fmt.Errorf("key file %s: %w", f, err)
		}
		signers = append(signers, s)
	}
	if len(signers) == 0 {
		closeAgent()
		return nil, nil, errors.New("no SSH key: no agent key (SSH_AUTH_SOCK) and no usable key file")
	}
	return []ssh.AuthMethod{ssh.PublicKeys(signers...)}, closeAgent, nil
}

// Dialer makes SSH connections.
type Dialer struct {
	Auth  Auth
	Trust Trust
	// Jump, when set, is the machine the connection goes through, as
	// `ssh -J` does: one that can reach the target when we cannot.
	Jump *Host
	// Timeout bounds connecting and the handshake (default 15 s).
	Timeout time.Duration
	// KeepAlive is how often an idle connection is checked (default 15 s).
	KeepAlive time.Duration
}

// Conn is an SSH connection to a host.
type Conn struct {
	Host   Host
	Client *ssh.Client
	closer []func()
	done   chan struct{}
}

// Dial connects to h, through the jump host when one is set.
func (d Dialer) Dial(ctx context.Context, h Host) (*Conn, error) {
	timeout := d.Timeout
	if timeout == 0 {
		timeout = 15 * time.Second
	}
	methods, closeAgent, err := d.Auth.methods()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", h, err)
	}
	c := &Conn{Host: h, closer: []func(){closeAgent}, done: make(chan struct{})}
	config := func(target Host) (*ssh.ClientConfig, error) {
		cb, err := d.Trust.callback(ctx, target)
		if err != nil {
			return nil, err
		}
		return &ssh.ClientConfig{User: target.User, Auth: methods, HostKeyCallback: cb, HostKeyAlgorithms: d.Trust.algorithms(target), Timeout: timeout}, nil
	}
	var raw net.Conn
	if d.Jump != nil {
		jcfg, err := config(*d.Jump)
		if err != nil {
			c.Close()
			return nil, err
		}
		jump, err := dialClient(ctx, "tcp", d.Jump.HostPort(), jcfg, timeout, nil)
		if err != nil {
			c.Close()
			return nil, fmt.Errorf("jump host %s: %w", d.Jump, err)
		}
		c.closer = append(c.closer, func() { jump.Close() })
		raw, err = jump.DialContext(ctx, "tcp", h.HostPort())
		if err != nil {
			c.Close()
			return nil, fmt.Errorf("%s through jump host %s: %w", h, d.Jump, err)
		}
	}
	cfg, err := config(h)
	if err != nil {
		c.Close()
		return nil, err
	}
	client, err := dialClient(ctx, "tcp", h.HostPort(), cfg, timeout, raw)
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("%s: %w", h, err)
	}
	c.Client = client
	c.closer = append(c.closer, func() { client.Close() })
	every := d.KeepAlive
	if every == 0 {
		every = 15 * time.Second
	}
	go c.keepAlive(every)
	return c, nil
}

// dialClient opens an SSH client over raw, or over a new TCP connection
// when raw is nil, giving up after timeout.
func dialClient(ctx context.Context, network, addr string, cfg *ssh.ClientConfig, timeout time.Duration, raw net.Conn) (*ssh.Client, error) {
	if raw == nil {
		var err error
		raw, err = (&net.Dialer{Timeout: timeout}).DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
	}
	_ = raw.SetDeadline(time.Now().Add(timeout))
	sc, chans, reqs, err := ssh.NewClientConn(raw, addr, cfg)
	if err != nil {
		raw.Close()
		return nil, err
	}
	_ = raw.SetDeadline(time.Time{})
	return ssh.NewClient(sc, chans, reqs), nil
}

// keepAlive closes a connection whose peer stops answering, so that a
// command on a vanished machine fails instead of hanging.
func (c *Conn) keepAlive(every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-c.done:
			return
		case <-t.C:
			if _, _, err := c.Client.SendRequest("keepalive@openssh.com", true, nil); err != nil {
				c.Client.Close()
				return
			}
		}
	}
}

// Close ends the connection (and the jump host's).
func (c *Conn) Close() {
	select {
	case <-c.done:
		return
	default:
		close(c.done)
	}
	for i := len(c.closer) - 1; i >= 0; i-- {
		c.closer[i]()
	}
}

// shellQuote quotes argv for the remote shell, which always parses the
// command line: every word is single-quoted, so no value is interpreted.
func shellQuote(argv []string) string {
	q := make([]string, len(argv))
	for i, a := range argv {
		q[i] = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
	}
	return strings.Join(q, " ")
}

// RunError is a remote command that failed, with what it printed.
type RunError struct {
	Argv   []string
	Code   int
	Stderr string
	// Cut notes, when set, that the command printed more than OutputLimit
	// on its standard error and the rest was not kept.
	Cut string
	Err error
}

func (e *RunError) Error() string {
	msg := strings.TrimSpace(e.Stderr)
	if len(msg) > 400 {
		msg = "..." + msg[len(msg)-400:]
	}
	if e.Cut != "" {
		msg += " " + strings.TrimSpace(e.Cut)
	}
	if e.Code >= 0 && e.Err == nil {
		return fmt.Sprintf("%s: exit status %d: %s", strings.Join(e.Argv, " "), e.Code, msg)
	}
	return strings.TrimSpace(fmt.Sprintf("%s: %v %s", strings.Join(e.Argv, " "), e.Err, msg))
}

func (e *RunError) Unwrap() error { return e.Err }

// OutputLimit is how much of a remote command's standard output, and of
// its standard error, is kept. Nothing adoption reads (a node config, a
// checksum, uname) comes near it.
const OutputLimit = 1 << 20

// Run runs argv on the host and returns its standard output. stdin may be
// nil. It gives up when ctx ends, closing the session. A command that
// prints more than OutputLimit on its standard output is stopped at once
// and fails with an error matching capped.ErrOverflow: a cut output read
// as a whole would be wrong. Its standard error is cut at OutputLimit too.
func (c *Conn) Run(ctx context.Context, argv []string, stdin []byte) ([]byte, error) {
	s, err := c.Client.NewSession()
	if err != nil {
		return nil, &RunError{Argv: argv, Code: -1, Err: err}
	}
	defer s.Close()
	out, errOut := capped.New(OutputLimit), capped.New(OutputLimit)
	s.Stdout, s.Stderr = out, errOut
	if stdin != nil {
		s.Stdin = bytes.NewReader(stdin)
	}
	failed := func(code int, err error) ([]byte, error) {
		return out.Bytes(), &RunError{Argv: argv, Code: code, Stderr: errOut.String(), Cut: errOut.Note(), Err: err}
	}
	done := make(chan error, 1)
	go func() { done <- s.Run(shellQuote(argv)) }()
	select {
	case err = <-done:
	case <-out.Overflow():
		_ = s.Signal(ssh.SIGKILL)
		s.Close()
		return failed(-1, out.Err())
	case <-ctx.Done():
		_ = s.Signal(ssh.SIGKILL)
		s.Close()
		return failed(-1, ctx.Err())
	}
	if err != nil {
		var exit *ssh.ExitError
		if errors.As(err, &exit) {
			return failed(exit.ExitStatus(), nil)
		}
		return failed(-1, err)
	}
	if out.Truncated() {
		// It ended before the overflow was seen above.
		return failed(-1, out.Err())
	}
	return out.Bytes(), nil
}
