package endpoint

import (
	"net"
	"strconv"
	"strings"
	"testing"
)

// FuzzParse: whatever the text, Parse does not panic; a refusal names the
// text; what it accepts is a tcp URL of a host and a port alone, in the
// one spelling, which parses again to itself both as a URL and as the
// host:port every node stores. The hostile endpoints of issue 15 are in
// testdata/fuzz/FuzzParse.
func FuzzParse(f *testing.F) {
	for _, s := range []string{"10.0.0.1:9651", "tcp://[fd00::1]:9651", "host.example:1", "TCP://Vps1:09651", "[::ffff:1.2.3.4]:1", "a_b:65535"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		u, err := Parse(s)
		if err != nil {
			if len(s) <= maxLen && !strings.Contains(err.Error(), strconv.Quote(s)) {
				t.Fatalf("Parse(%q): the error does not name it: %v", s, err)
			}
			return
		}
		if u.Scheme != "tcp" || u.User != nil || u.Path != "" || u.RawQuery != "" || u.Fragment != "" || u.Opaque != "" {
			t.Fatalf("Parse(%q) = %#v: more than tcp://host:port", s, u)
		}
		host, port, err := net.SplitHostPort(u.Host)
		if err != nil || host == "" || strings.ContainsAny(host, "%/?#@ ") {
			t.Fatalf("Parse(%q) = %s: host:port %q does not split cleanly: %v", s, u, u.Host, err)
		}
		if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 || strconv.Itoa(p) != port {
			t.Fatalf("Parse(%q) = %s: port %q", s, u, port)
		}
		for _, again := range []string{u.String(), u.Host} {
			v, err := Parse(again)
			if err != nil || *v != *u {
				t.Fatalf("Parse(%q) = %s, but Parse(%q) = %v, %v", s, u, again, v, err)
			}
		}
	})
}
