// Package consulclient makes the clients of members' Consul HTTP APIs. A
// member serves plain HTTP on loopback only, and HTTPS on its addresses
// with a certificate of the cluster's CA: a client on the machine itself
// takes the first, any other the second, checking the certificate.
//
// Every call of these clients has a deadline, even one the Consul API
// offers no context for (Agent().Members): its caller's, else Timeout, or
// for a blocking query the wait Consul may hold it for, then Timeout. A
// Consul that accepts and never answers fails a call; it never hangs it.
package consulclient

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"path/filepath"
	"strconv"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/raptiformica/raptiformica/internal/nodeconfig"
	"github.com/raptiformica/raptiformica/internal/pki"
)

// Target is a member's Consul and the credentials to talk to it with.
type Target struct {
	// Host is the member's address (or a name).
	Host string
	// HTTPPort and HTTPSPort are its API's ports; zero is the default.
	HTTPPort, HTTPSPort int
	// Token is the ACL token the client sends.
	Token string
	// CACert is the cluster's CA (PEM), which the member's certificate
	// must be signed by. Needed for any host but loopback.
	CACert string
	// Timeout bounds a call that is not a blocking query; zero is
	// DefaultTimeout.
	Timeout time.Duration
}

// New returns a client of t's Consul: plain HTTP when the host is a
// loopback address, else HTTPS checked against the cluster's CA, with a
// server's certificate. The token a caller sends another machine's Consul
// is an operator's or the cluster's, which only servers hold anyway: a
// client's certificate (any member's would do for a name every member
// has) is refused in the handshake, before the token is sent, so a
// compromised client never collects it.
func New(t Target) (*api.Client, error) {
	cfg := api.DefaultConfig()
	cfg.Token = t.Token
	if IsLoopback(t.Host) {
		cfg.Scheme = "http"
		cfg.Address = net.JoinHostPort(t.Host, strconv.Itoa(cmp.Or(t.HTTPPort, nodeconfig.ConsulHTTPPort)))
		return FromConfig(cfg, t.Timeout)
	}
	if t.CACert == "" {
		return nil, fmt.Errorf("consul of %s: no CA certificate to check it with (the cluster's identity or a node config holds it)", t.Host)
	}
	cfg.Scheme = "https"
	cfg.Address = net.JoinHostPort(t.Host, strconv.Itoa(cmp.Or(t.HTTPSPort, nodeconfig.ConsulHTTPSPort)))
	cfg.TLSConfig = api.TLSConfig{Address: pki.ServerName, CAPem: []byte(t.CACert)}
	return FromConfig(cfg, t.Timeout)
}

// DefaultTimeout bounds a call that is not a blocking query when its
// caller set no deadline. Consul answers a read or a Raft write in well
// under a second when it is healthy; a server that takes longer is one
// to give up on and retry.
const DefaultTimeout = 30 * time.Second

const (
	// dialTimeout bounds a connection to a member: a black-holed address
	// otherwise waits for the kernel's SYN retries, minutes.
	dialTimeout = 10 * time.Second
	// defaultWait and maxWait are Consul's default_query_time and
	// max_query_time: how long it holds a blocking query that names no
	// wait, and at most.
	defaultWait, maxWait = 5 * time.Minute, 10 * time.Minute
)

// FromConfig returns a client of cfg (api.NewClient's) whose calls all
// have a deadline, and whose connections are dialled and their TLS
// handshakes done within seconds. timeout is Target.Timeout.
func FromConfig(cfg *api.Config, timeout time.Duration) (*api.Client, error) {
	if cfg.Transport == nil {
		cfg.Transport = api.DefaultConfig().Transport
	}
	cfg.Transport.DialContext = (&net.Dialer{Timeout: dialTimeout, KeepAlive: 30 * time.Second}).DialContext
	cfg.Transport.TLSHandshakeTimeout = dialTimeout
	cfg.Transport.MaxResponseHeaderBytes = 1 << 20
	c, err := api.NewClient(cfg)
	if err != nil {
		return nil, err
	}
	// NewClient made cfg.HttpClient (for a unix socket too) and keeps the
	// pointer: the deadlines wrap whatever transport it chose.
	cfg.HttpClient.Transport = deadlines{next: cfg.HttpClient.Transport, timeout: cmp.Or(timeout, DefaultTimeout)}
	return c, nil
}

// deadlines gives a request whose context has no deadline one: a Consul
// call is never left waiting for an answer that does not come.
type deadlines struct {
	next    http.RoundTripper
	timeout time.Duration
}

// RoundTrip sends r under its deadline; the deadline covers reading the
// body too, and ends when the body is closed.
func (d deadlines) RoundTrip(r *http.Request) (*http.Response, error) {
	if _, ok := r.Context().Deadline(); ok {
		return d.next.RoundTrip(r)
	}
	ctx, cancel := context.WithTimeout(r.Context(), d.limit(r.URL.Query()))
	resp, err := d.next.RoundTrip(r.WithContext(ctx))
	if err != nil {
		cancel()
		return nil, err
	}
	resp.Body = cancelOnClose{ReadCloser: resp.Body, cancel: cancel}
	return resp, nil
}

// limit is how long a call of query q may take: a blocking query (one
// with an index) is held by Consul for its wait plus up to a sixteenth
// (its jitter) before the answer starts.
func (d deadlines) limit(q url.Values) time.Duration {
	if !q.Has("index") {
		return d.timeout
	}
	wait, err := time.ParseDuration(q.Get("wait"))
	if err != nil || wait <= 0 {
		wait = defaultWait
	}
	wait = min(wait, maxWait)
	return wait + wait/16 + d.timeout
}

// cancelOnClose releases a request's deadline when its body is closed.
type cancelOnClose struct {
	io.ReadCloser
	cancel context.CancelFunc
}

// Close closes the body, then releases the deadline.
func (c cancelOnClose) Close() error {
	err := c.ReadCloser.Close()
	c.cancel()
	return err
}

// Local returns the client a machine's own agent uses: its Consul's unix
// socket in the machine's data folder (Socket), or, where the folder's
// path is too long for one, its plain HTTP port on loopback, which is the
// node's own address when that is a loopback one (machines of the local
// backend share the host), else 127.0.0.1.
func Local(c nodeconfig.Config) (*api.Client, error) {
	if sock := Socket(c); sock != "" {
		cfg := api.DefaultConfig()
		cfg.Address, cfg.Scheme, cfg.Token = "unix://"+sock, "http", c.ACLToken
		return FromConfig(cfg, 0)
	}
	return New(Target{Host: LocalHost(c), HTTPPort: c.ConsulHTTPPort, Token: c.ACLToken})
}

// maxSocketPath is the longest path a unix socket may have on every system
// Consul runs on (sun_path holds 104 bytes on the BSDs, 108 on Linux).
const maxSocketPath = 100

// Socket is the unix socket of a machine's Consul HTTP API: in its data
// folder, which only root reads (0700), so that no other user of the
// machine can take it while Consul restarts and catch the token sent to
// it, as they could a loopback port. It is "" when the folder's path is
// too long for a socket (a test's or a local cluster's deep folder):
// such a machine's agent speaks to its Consul on loopback.
func Socket(c nodeconfig.Config) string { return socketIn(c, "consul-http.sock") }

// AgentSocket is the unix socket of a machine's agent API, beside
// Consul's (see Socket): where the CLI on the machine, as root, asks its
// own agent to act with the machine's token. "" when the path is too long.
func AgentSocket(c nodeconfig.Config) string { return socketIn(c, "agent.sock") }

func socketIn(c nodeconfig.Config, name string) string {
	if c.DataDir == "" {
		return ""
	}
	p := filepath.Join(c.DataDir, name)
	if len(p) > maxSocketPath || !filepath.IsAbs(p) {
		return ""
	}
	return p
}

// LocalHost is the loopback address a machine's Consul serves plain HTTP
// on.
func LocalHost(c nodeconfig.Config) string {
	switch {
	case IsLoopback(c.BindAddr):
		return c.BindAddr
	case IsLoopback(c.LoopbackAddr):
		return c.LoopbackAddr
	}
	return "127.0.0.1"
}

// IsLoopback reports whether host is a loopback address (a name is not).
func IsLoopback(host string) bool {
	a, err := netip.ParseAddr(host)
	return err == nil && a.Unmap().IsLoopback()
}
