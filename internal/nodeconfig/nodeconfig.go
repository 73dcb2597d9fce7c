// Package nodeconfig is a node's own configuration: the agent config file
// that whoever creates a machine writes (the spawning leader, a backend,
// `up` for the seed, an operator by hand) and the agent reads at start, its
// defaults and validation, and where the Consul binary is found. It imports
// nothing heavy, so that the backend contract, which hands a Config to every
// backend, stays a leaf.
package nodeconfig

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/raptiformica/raptiformica/internal/endpoint"
	"github.com/raptiformica/raptiformica/internal/fsutil"
	"github.com/raptiformica/raptiformica/internal/pki"
)

// Default ports on a node's own address.
const (
	ConsulHTTPPort  = 8500
	ConsulHTTPSPort = 8501
	ConsulSerfPort  = 8301
	AgentHTTPPort   = 9550
	AgentHTTPSPort  = 9551
)

// MetaHTTPSPort is the Consul node meta key under which a member publishes
// the port of its Consul HTTPS API, so that the leader reaches a member whose
// port is not the default (asking it to leave the cluster).
const MetaHTTPSPort = "raptiformica_https_port"

// FastGossipMax is the most machines a description may ask for and still
// get fast gossip where the network allows it: a member probes twice a
// second and gossips ten times, which pays for itself in heal time on a
// few machines and costs every member CPU at a hundred.
const FastGossipMax = 25

// Config is everything a machine's agent needs to become a member. It is
// written once by whoever creates the machine (the spawning leader, or `up`
// for the seed) and read by the agent at start.
type Config struct {
	// MachineID is the node's identity: its Consul node name and the key of
	// its inventory record.
	MachineID   string `json:"machine_id"`
	MachineType string `json:"machine_type"`
	Cluster     string `json:"cluster"`
	// Backend is the name of the backend the machine was spawned on.
	Backend string `json:"backend"`
	// ClusterDir is the folder the local backend keeps its machines in.
	ClusterDir string `json:"cluster_dir,omitempty"`
	// DataDir holds the node's Consul data and its mirror of the platform.
	DataDir string `json:"data_dir"`
	// BindAddr is the node's own address; Consul and the agent listen on it.
	BindAddr string `json:"bind_addr"`
	// LoopbackAddr is where the machine's plain-HTTP listeners, its
	// Consul's and its agent's, which only its own users reach, listen
	// when BindAddr is not a loopback address; empty is 127.0.0.1. A host
	// that runs several machines (the local backend on addresses of its
	// own) gives each its own, or their ports would collide.
	LoopbackAddr string `json:"loopback_addr,omitempty"`
	// Resolvers are the DNS servers (an address, with a port or 53) the
	// agent asks where the host's /etc/resolv.conf lists none, as on
	// Android's Linux environments; there, without them, the system's
	// properties (net.dns1, ...) are used. A host with its own keeps it.
	Resolvers    []string `json:"resolvers,omitempty"`
	ConsulBinary string   `json:"consul_binary"`
	ConsulServer bool     `json:"consul_server"`
	// Bootstrap makes this node a single-server cluster that the others join.
	// Only the first node of a new cluster (the seed) has it; a replacement
	// never does, or it would found a second cluster beside the first.
	Bootstrap bool `json:"bootstrap,omitempty"`
	// NeverLead keeps the agent from campaigning for the leader lock, for
	// machines that cannot run the backends' commands (an exec backend's
	// containers without its tools): the leader makes machines, so it must
	// be able to.
	NeverLead bool     `json:"never_lead,omitempty"`
	RetryJoin []string `json:"retry_join,omitempty"`
	// Encrypt is the gossip encryption key, also kept in KV.
	Encrypt string `json:"encrypt,omitempty"`
	// ACLToken is the machine's Consul ACL token, which its Consul and its
	// agent use: Consul runs with ACLs, default deny, so nothing is read
	// or written without one. A server's is the cluster's management
	// token, with which its Consul bootstraps ACLs (a fresh Consul after a
	// recovery too). Only a seed may start without one: it makes the
	// cluster's on its first start and keeps it in its data folder.
	ACLToken string `json:"acl_token,omitempty"`
	// TLS is the machine's certificate, with which its Consul speaks
	// mutual TLS on RPC and serves HTTPS on its address. Like the token,
	// only a seed may start without: it signs its own.
	TLS *TLS `json:"tls,omitempty"`
	// FastGossip tunes failure detection for a loopback or LAN network.
	FastGossip bool `json:"fast_gossip,omitempty"`
	// DefaultGossip keeps Consul's own gossip and Raft timings whatever
	// FastGossip says: the description asks for more machines than fast
	// timings pay for (each member probes twice a second and gossips ten
	// times; a server's 500 ms leader lease is lost to a starved second).
	DefaultGossip bool `json:"default_gossip,omitempty"`
	// MadeBy is the member whose backend made this machine, where a member
	// did (empty for the machines `up` makes): that member's offer lists
	// it, and no other member's need to.
	MadeBy string `json:"made_by,omitempty"`
	// PlatformFile seeds an empty KV with a description on first start.
	PlatformFile string `json:"platform_file,omitempty"`
	// Platform is the same as an inline text, for a seed that cannot read
	// its creator's files (a container).
	Platform string `json:"platform,omitempty"`
	// HTTPPort is the agent's own port for /metrics, /v1/status, /healthz
	// and the status page: plain HTTP, which discloses no secret.
	HTTPPort int `json:"http_port,omitempty"`
	// HTTPSPort is the agent's API over TLS, with the machine's
	// certificate: where other machines ask it to act, with a token.
	HTTPSPort int `json:"https_port,omitempty"`
	// ConsulHTTPPort is the port of the node's Consul HTTP API: plain
	// HTTP, served on loopback only.
	ConsulHTTPPort int `json:"consul_http_port,omitempty"`
	// ConsulHTTPSPort is the port of the same API over TLS, served on the
	// node's addresses: how other machines reach it.
	ConsulHTTPSPort int `json:"consul_https_port,omitempty"`
	// Mesh, when set, runs the overlay: Consul and the agent then bind to
	// the node's overlay address, and BindAddr only picks the machine's
	// own network.
	Mesh *Mesh `json:"mesh,omitempty"`
}

// TLS is a machine's part of the cluster's PKI, all PEM.
type TLS struct {
	// CACert is the cluster's CA: the only one a machine trusts.
	CACert string `json:"ca_cert"`
	// Cert and Key are the machine's own, signed by the CA for its role
	// (a server's names the server, see internal/pki).
	Cert string `json:"cert"`
	Key  string `json:"key"`
	// CAKey lets the machine sign certificates for the machines it makes
	// when it leads: the machines that may lead carry it.
	CAKey string `json:"ca_key,omitempty"`
}

// Mesh is a node's part of the overlay mesh.
type Mesh struct {
	// ListenPort is the TCP port other members dial; 0 makes the node
	// dial-only (behind NAT), reachable only through links it makes.
	ListenPort int `json:"listen_port"`
	// Secret is the cluster's mesh secret; links without it are refused.
	Secret string `json:"secret"`
	// Peers are endpoints ("host:port") of members to dial at start.
	Peers []string `json:"peers,omitempty"`
	// Advertise are endpoints others should dial to reach this node, when
	// its own addresses are not (a NAT's forwarded port, a DNS name). By
	// default it advertises its addresses with ListenPort.
	Advertise []string `json:"advertise,omitempty"`
	// Interface names the TUN interface; default "raptiformica0".
	Interface string `json:"interface,omitempty"`
	// ServeUnderlay also serves Consul's and the agent's HTTP on the
	// machine's own address, not only on the overlay and loopback: for
	// containers, whose host (which runs them anyway) watches them over
	// its private bridge.
	ServeUnderlay bool `json:"serve_underlay,omitempty"`
	// Underlay is the machine's own address once BindAddr has become the
	// overlay one; set by the agent, not read from the file.
	Underlay string `json:"-"`
}

// WithDefaults fills the ports left at zero.
func (c Config) WithDefaults() Config {
	if c.HTTPPort == 0 {
		c.HTTPPort = AgentHTTPPort
	}
	if c.HTTPSPort == 0 {
		c.HTTPSPort = AgentHTTPSPort
	}
	if c.ConsulHTTPPort == 0 {
		c.ConsulHTTPPort = ConsulHTTPPort
	}
	if c.ConsulHTTPSPort == 0 {
		c.ConsulHTTPSPort = ConsulHTTPSPort
	}
	return c
}

// Validate reports the first missing field of a config read from disk.
func (c Config) Validate() error {
	for _, f := range []struct{ name, v string }{
		{"machine_id", c.MachineID}, {"machine_type", c.MachineType}, {"data_dir", c.DataDir},
		{"bind_addr", c.BindAddr}, {"consul_binary", c.ConsulBinary},
	} {
		if f.v == "" {
			return fmt.Errorf("field %s is required", f.name)
		}
	}
	if c.LoopbackAddr != "" {
		if a, err := netip.ParseAddr(c.LoopbackAddr); err != nil || !a.IsLoopback() {
			return fmt.Errorf("field loopback_addr %q: want a loopback address such as 127.240.1.2", c.LoopbackAddr)
		}
	}
	for i, r := range c.Resolvers {
		if _, err := netip.ParseAddrPort(r); err != nil {
			if _, err := netip.ParseAddr(r); err != nil {
				return fmt.Errorf("field resolvers[%d] %q: want an IP address, with a port or not (a resolver cannot be found by name)", i, r)
			}
		}
	}
	if t := c.TLS; t != nil {
		for _, f := range []struct{ name, v string }{{"tls.ca_cert", t.CACert}, {"tls.cert", t.Cert}, {"tls.key", t.Key}} {
			if f.v == "" {
				return fmt.Errorf("field %s is required with tls", f.name)
			}
		}
	}
	if m := c.Mesh; m != nil {
		if m.Secret == "" {
			return errors.New("field mesh.secret is required with a mesh (a member prints it: raptiformica mesh secret)")
		}
		if m.ListenPort < 0 || m.ListenPort > 65535 {
			return fmt.Errorf("field mesh.listen_port must be 0 (dial-only) to 65535, got %d", m.ListenPort)
		}
		for i, p := range m.Peers {
			if _, err := endpoint.Parse(p); err != nil {
				return fmt.Errorf("field mesh.peers[%d]: %w", i, err)
			}
		}
		// What a node advertises, every other node dials: a spelling
		// that does not parse there would be dropped by all of them.
		for i, p := range m.Advertise {
			if _, err := endpoint.Parse(p); err != nil {
				return fmt.Errorf("field mesh.advertise[%d]: %w", i, err)
			}
		}
	}
	return nil
}

// Write writes c to name atomically.
func Write(name string, c Config) error {
	b, err := json.MarshalIndent(c, "", "  ")
	if err != nil {
		return err
	}
	return fsutil.WriteFileAtomic(name, append(b, '\n'), 0o600)
}

// MaxSize is the largest node config read, in bytes: room for its
// certificates and an inline description (rules caps one at 1 MiB), and a
// bound on what a damaged or hostile file makes the agent hold.
const MaxSize = 4 << 20

// Read reads and validates a node config, naming the file in errors.
func Read(name string) (Config, error) {
	f, err := os.Open(name)
	if err != nil {
		return Config{}, fmt.Errorf("read node config: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, MaxSize+1))
	if err != nil {
		return Config{}, fmt.Errorf("read node config: %w", err)
	}
	c, err := Parse(name, b)
	if err != nil {
		return c, err
	}
	// The token lets its holder do anything to the cluster; the keys let
	// it pose as the machine, or sign machines.
	if st, err := f.Stat(); err == nil && (c.ACLToken != "" || c.TLS != nil) && st.Mode().Perm()&0o077 != 0 {
		return c, fmt.Errorf("node config %s holds the machine's credentials (acl_token, tls) and is readable by others (mode %04o): chmod 600 %s", name, st.Mode().Perm(), name)
	}
	return c.WithDefaults(), nil
}

// Parse decodes and validates the node config b read from the file name,
// which its errors name, with the line where the JSON is wrong. The ports
// left at zero stay zero (see WithDefaults), so that what Write writes of
// the result parses again to it.
func Parse(name string, b []byte) (Config, error) {
	var c Config
	if len(b) > MaxSize {
		return c, fmt.Errorf("node config %s: larger than %d bytes", name, MaxSize)
	}
	line := func(off int64) int { return 1 + bytes.Count(b[:min(max(int(off), 0), len(b))], []byte("\n")) }
	// Unknown fields are refused: a misspelt setting would otherwise be
	// dropped silently and the agent would start without it.
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		off := dec.InputOffset()
		var syn *json.SyntaxError
		var typ *json.UnmarshalTypeError
		if errors.As(err, &syn) {
			off = syn.Offset
		} else if errors.As(err, &typ) {
			off = typ.Offset
		} else if field, ok := strings.CutPrefix(err.Error(), "json: unknown field "); ok {
			// The decoder reports it after the whole object: point at
			// the field itself.
			if i := bytes.Index(b, []byte(field)); i >= 0 {
				off = int64(i)
			}
		}
		return c, fmt.Errorf("node config %s:%d: %w", name, line(off), err)
	}
	// A second document would be dropped silently, and with it whatever
	// its writer meant to say.
	if _, err := dec.Token(); err != io.EOF {
		return c, fmt.Errorf("node config %s:%d: more after the config", name, line(dec.InputOffset()))
	}
	if err := c.Validate(); err != nil {
		return c, fmt.Errorf("node config %s: %w", name, err)
	}
	return c, nil
}

// ConsulVersion is the Consul release the project pins and builds when no
// Consul is installed.
const ConsulVersion = "1.22.0"

// PackagedConsul is where the raptiformica package installs the pinned
// Consul: beside the agent, not on PATH, so it never shadows another Consul.
const PackagedConsul = "/usr/lib/raptiformica/consul"

// FindConsul returns the Consul binary to use: $RAPTIFORMICA_CONSUL, else the
// pinned build in the cache (made by scripts/consul.sh), else the packaged
// one, else `consul` on PATH.

func FindConsul() (string, error) {
	if p := os.Getenv("RAPTIFORMICA_CONSUL"); p != "" {
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("RAPTIFORMICA_CONSUL: %w", err)
		}
		return p, nil
	}
	cache := os.Getenv("RAPTIFORMICA_CACHE")
	if cache == "" {
		if base, err := os.UserCacheDir(); err == nil {
			cache = filepath.Join(base, "raptiformica")
		}
	}
	if cache != "" {
		p := filepath.Join(cache, "consul-v"+ConsulVersion, "consul")
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	if _, err := os.Stat(PackagedConsul); err == nil {
		return PackagedConsul, nil
	}
	if p, err := exec.LookPath("consul"); err == nil {
		return p, nil
	}
	return "", errors.New("no consul binary: run `make consul` (builds the pinned Consul into the cache) or set RAPTIFORMICA_CONSUL")
}

// BindAuto as a node's bind_addr means "my first non-loopback IPv4 address":
// a container learns its address only when it starts.
const BindAuto = "auto"

// ResolveBindAddr turns BindAuto into the first non-loopback IPv4 address of
// this host's interfaces and returns any other value as it is.
func ResolveBindAddr(s string) (string, error) {
	if s != BindAuto {
		return s, nil
	}
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return "", fmt.Errorf("bind_addr auto: %w", err)
	}
	for _, a := range addrs {
		if ipn, ok := a.(*net.IPNet); ok && !ipn.IP.IsLoopback() && ipn.IP.To4() != nil {
			return ipn.IP.String(), nil
		}
	}
	return "", errors.New("bind_addr auto: no non-loopback IPv4 address on this host")
}

// CA is the certificate authority the machine may sign with: empty KeyPEM
// when it carries none.
func (t *TLS) CA() pki.CA {
	if t == nil {
		return pki.CA{}
	}
	return pki.CA{CertPEM: t.CACert, KeyPEM: t.CAKey}
}
