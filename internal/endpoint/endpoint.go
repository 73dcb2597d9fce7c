// Package endpoint reads the spelling of an overlay mesh endpoint. It is
// apart from package mesh so that the description's parser, the node config
// and the CLI check endpoints without importing the overlay library.
package endpoint

import (
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
)

// Parse reads "host:port" or "tcp://host:port" into a tcp URL, so that one
// peer has one spelling. Anything else, a path or a query included, is an
// error naming the endpoint: a query is how yggdrasil takes link options,
// and a link's options are ours to set, not a peer list's.
func Parse(s string) (*url.URL, error) {
	raw := s
	if !strings.Contains(s, "://") {
		raw = "tcp://" + s
	}
	u, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("endpoint %q: want host:port or tcp://host:port", s)
	}
	if u.Scheme != "tcp" {
		return nil, fmt.Errorf("endpoint %q: scheme %q (only tcp)", s, u.Scheme)
	}
	host, port, err := net.SplitHostPort(u.Host)
	if err != nil || host == "" || u.Path != "" || u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		return nil, fmt.Errorf("endpoint %q: want host:port or tcp://host:port", s)
	}
	if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
		return nil, fmt.Errorf("endpoint %q: port must be 1 to 65535", s)
	}
	return &url.URL{Scheme: "tcp", Host: u.Host}, nil
}
