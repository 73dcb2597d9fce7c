// Package endpoint reads the spelling of an overlay mesh endpoint. It is
// apart from package mesh so that the description's parser, the node config
// and the CLI check endpoints without importing the overlay library.
//
// It is the one parser of endpoints, and what it returns is the one
// spelling of a peer: the description, the node config, the mesh mirror
// and the peers a node keeps all hold what Parse printed, so its output
// parses again to itself (Parse(Parse(s).String()) and Parse(Parse(s).Host)
// give Parse(s) back). An endpoint written on one machine is dialled by
// every other, so nothing in it may mean something on one machine only:
// an IPv6 zone ("%eth0") names one machine's interface, and a link-local
// IPv6 address cannot be dialled without one; both are refused.
package endpoint

import (
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"strings"
)

// maxLen bounds an endpoint: the longest host name (253), a port, and the
// scheme fit with room to spare.
const maxLen = 300

// Parse reads "host:port" or "tcp://host:port" into a tcp URL whose Host is
// the peer's canonical "host:port": a host name in lower case, an address
// as netip prints it (an IPv4-mapped IPv6 address as IPv4), the port in
// decimal without leading zeros. Anything else, a path, a query, a user or
// an IPv6 zone included, is an error naming the endpoint: a query is how
// yggdrasil takes link options, and a link's options are ours to set, not
// a peer list's.
func Parse(s string) (*url.URL, error) {
	if len(s) > maxLen {
		return nil, fmt.Errorf("endpoint %q…: longer than %d characters", s[:40], maxLen)
	}
	rest := s
	if scheme, after, ok := strings.Cut(s, "://"); ok {
		if !strings.EqualFold(scheme, "tcp") {
			return nil, fmt.Errorf("endpoint %q: scheme %q (only tcp)", s, scheme)
		}
		rest = after
	}
	if strings.ContainsAny(rest, "/?#@") {
		return nil, fmt.Errorf("endpoint %q: want host:port or tcp://host:port, without a user, path or query", s)
	}
	host, port, err := net.SplitHostPort(rest)
	// SplitHostPort takes "[name]:port" too: brackets are for IPv6 only.
	if err != nil || host == "" || strings.HasPrefix(rest, "[") && !strings.Contains(host, ":") {
		return nil, fmt.Errorf("endpoint %q: want host:port or tcp://host:port", s)
	}
	p, err := parsePort(port)
	if err != nil {
		return nil, fmt.Errorf("endpoint %q: %w", s, err)
	}
	h, err := canonicalHost(host)
	if err != nil {
		return nil, fmt.Errorf("endpoint %q: %w", s, err)
	}
	return &url.URL{Scheme: "tcp", Host: net.JoinHostPort(h, strconv.Itoa(p))}, nil
}

// parsePort reads a port in decimal digits only: strconv.Atoi would take a
// sign ("+9651"), which no other reader of the endpoint does.
func parsePort(s string) (int, error) {
	bad := fmt.Errorf("port must be 1 to 65535, got %q", s)
	if s == "" || strings.Trim(s, "0123456789") != "" {
		return 0, bad
	}
	// Leading zeros are the same port, and would overflow nothing.
	digits := strings.TrimLeft(s, "0")
	if len(digits) > 5 {
		return 0, bad
	}
	p, _ := strconv.Atoi(digits)
	if p < 1 || p > 65535 {
		return 0, bad
	}
	return p, nil
}

// canonicalHost returns the one spelling of an address or a host name, or
// why it is neither or cannot be dialled from every machine.
func canonicalHost(s string) (string, error) {
	if strings.Contains(s, "%") && strings.Contains(s, ":") {
		return "", fmt.Errorf("address %q has a zone, which names an interface of one machine; give an address every machine can dial", s)
	}
	if a, err := netip.ParseAddr(s); err == nil {
		a = a.Unmap()
		switch {
		case a.IsUnspecified():
			return "", fmt.Errorf("address %s is unspecified, no peer", a)
		case a.IsMulticast():
			return "", fmt.Errorf("address %s is multicast, no peer", a)
		case a.Is6() && a.IsLinkLocalUnicast():
			return "", fmt.Errorf("address %s is link-local: it needs a zone, which names an interface of one machine; give an address every machine can dial", a)
		}
		return a.String(), nil
	}
	if !hostName(s) {
		return "", fmt.Errorf("%q is neither an IP address nor a host name (labels of letters, digits, - and _, dot-separated)", s)
	}
	return strings.ToLower(s), nil
}

// hostName reports whether s is a DNS name: at most 253 characters of
// labels of 1 to 63 letters, digits, hyphens and underscores, no label
// starting or ending with a hyphen, and a last label that is not all
// digits (10.0.0.256 is a mistyped address, not a name).
func hostName(s string) bool {
	if len(s) > 253 {
		return false
	}
	labels := strings.Split(s, ".")
	for _, l := range labels {
		if len(l) == 0 || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' {
			return false
		}
		for _, c := range []byte(l) {
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return false
			}
		}
	}
	return strings.Trim(labels[len(labels)-1], "0123456789") != ""
}

// HostPorts merges lists of endpoints into one sorted list of host:port
// without repeats, the spelling the mesh keeps peers in; invalid ones are
// dropped (the description and the config were checked when read).
func HostPorts(lists ...[]string) []string {
	var out []string
	for _, l := range lists {
		for _, s := range l {
			if u, err := Parse(s); err == nil {
				out = append(out, u.Host)
			}
		}
	}
	return UniqueSorted(out)
}

// UniqueSorted merges lists into one sorted list without repeats or empty
// strings.
func UniqueSorted(lists ...[]string) []string {
	out := []string{} // never nil: it is written to files and node configs as []
	for _, l := range lists {
		for _, s := range l {
			if s != "" {
				out = append(out, s)
			}
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}
