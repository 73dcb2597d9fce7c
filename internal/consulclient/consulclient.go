// Package consulclient makes the clients of members' Consul HTTP APIs. A
// member serves plain HTTP on loopback only, and HTTPS on its addresses
// with a certificate of the cluster's CA: a client on the machine itself
// takes the first, any other the second, checking the certificate.
package consulclient

import (
	"cmp"
	"fmt"
	"net"
	"net/netip"
	"strconv"

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
}

// New returns a client of t's Consul: plain HTTP when the host is a
// loopback address, else HTTPS checked against the cluster's CA.
func New(t Target) (*api.Client, error) {
	cfg := api.DefaultConfig()
	cfg.Token = t.Token
	if IsLoopback(t.Host) {
		cfg.Scheme = "http"
		cfg.Address = net.JoinHostPort(t.Host, strconv.Itoa(cmp.Or(t.HTTPPort, nodeconfig.ConsulHTTPPort)))
		return api.NewClient(cfg)
	}
	if t.CACert == "" {
		return nil, fmt.Errorf("consul of %s: no CA certificate to check it with (the cluster's identity or a node config holds it)", t.Host)
	}
	cfg.Scheme = "https"
	cfg.Address = net.JoinHostPort(t.Host, strconv.Itoa(cmp.Or(t.HTTPSPort, nodeconfig.ConsulHTTPSPort)))
	cfg.TLSConfig = api.TLSConfig{Address: pki.MemberName, CAPem: []byte(t.CACert)}
	return api.NewClient(cfg)
}

// Local returns the client a machine's own agent uses: its Consul's plain
// HTTP port on loopback, which is the node's own address when that is a
// loopback one (machines of the local backend share the host), else
// 127.0.0.1.
func Local(c nodeconfig.Config) (*api.Client, error) {
	return New(Target{Host: LocalHost(c), HTTPPort: c.ConsulHTTPPort, Token: c.ACLToken})
}

// LocalHost is the loopback address a machine's Consul serves plain HTTP
// on.
func LocalHost(c nodeconfig.Config) string {
	if IsLoopback(c.BindAddr) {
		return c.BindAddr
	}
	return "127.0.0.1"
}

// IsLoopback reports whether host is a loopback address (a name is not).
func IsLoopback(host string) bool {
	a, err := netip.ParseAddr(host)
	return err == nil && a.Unmap().IsLoopback()
}
