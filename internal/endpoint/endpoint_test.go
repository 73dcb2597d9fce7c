package endpoint

import (
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	for _, tc := range []struct{ in, want, err string }{
		{in: "10.0.0.1:9651", want: "tcp://10.0.0.1:9651"},
		{in: "tcp://[fd00::1]:9651", want: "tcp://[fd00::1]:9651"},
		{in: "host.example:1", want: "tcp://host.example:1"},
		{in: "tcp://[fd00::1]:9651?password=x", err: "want host:port"},
		{in: "10.0.0.1:9651/x", err: "want host:port"},
		{in: "10.0.0.1", err: "want host:port"},
		{in: ":9651", err: "want host:port"},
		{in: "tls://10.0.0.1:1", err: "only tcp"},
		{in: "10.0.0.1:0", err: "port must be 1 to 65535"},
		{in: "10.0.0.1:x", err: "port must be 1 to 65535"},
		// One endpoint, one spelling: what differs only in case, in how an
		// address or a port is written, is the same peer.
		{in: "TCP://VPS1.Example:9651", want: "tcp://vps1.example:9651"},
		{in: "vps1:09651", want: "tcp://vps1:9651"},
		{in: "[FD00:0:0::1]:9651", want: "tcp://[fd00::1]:9651"},
		{in: "[::ffff:192.0.2.1]:9651", want: "tcp://192.0.2.1:9651"},
		{in: "a_b-c:1", want: "tcp://a_b-c:1"},
		// A zone names an interface of one machine, and the endpoint goes to
		// every machine: an address that needs one is refused.
		{in: "tcp://[fe80::1%25eth0]:9651", err: "zone"},
		{in: "[fe80::1%eth0]:9651", err: "zone"},
		{in: "[fe80::1]:9651", err: "link-local"},
		{in: "vps 1:9651", err: "host name"},
		{in: "vps1:+9651", err: "port must be 1 to 65535"},
		{in: "vps1:-1", err: "port must be 1 to 65535"},
		{in: "vps1: 9651", err: "port must be 1 to 65535"},
		{in: "x]:22", err: "want host:port"},
		{in: "[vps1]:22", err: "want host:port"},
		{in: "-vps1:22", err: "host name"},
		{in: "vps1.:22", err: "host name"},
		{in: "a..b:22", err: "host name"},
		{in: "10.0.0.256:22", err: "host name"},
		{in: "010.0.0.1:22", err: "host name"},
		{in: "0.0.0.0:22", err: "unspecified"},
		{in: "[::]:22", err: "unspecified"},
		{in: "[ff02::1]:22", err: "multicast"},
		{in: "tcp://user@a:1", err: "want host:port"},
		{in: "tcp://a:1#", err: "want host:port"},
		{in: "tcp://a%31:1", err: "host name"},
		{in: "a:1\n", err: "port must be 1 to 65535"},
		{in: strings.Repeat("a", 64) + ":1", err: "host name"},
		{in: strings.Repeat("a.", 130) + "a:1", err: "host name"},
	} {
		u, err := Parse(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) || !strings.Contains(err.Error(), strings.TrimSpace(tc.in[:min(len(tc.in), 20)])) {
				t.Errorf("Parse(%q): got %v, %v; want an error naming it and saying %q", tc.in, u, err, tc.err)
			}
			continue
		}
		if err != nil || u.String() != tc.want {
			t.Errorf("Parse(%q): got %v, %v; want %s", tc.in, u, err, tc.want)
		}
	}
}

// TestParseIsCanonical guards the spelling stored everywhere (the mesh
// mirror, new machines' configs, the peers a node keeps): whatever Parse
// accepts, both its URL and its host:port parse again to the same URL.
// tcp://[fe80::1%25eth0]:9651 once parsed to [fe80::1%eth0]:9651, which
// does not parse, and stopped every mesh node that read it.
func TestParseIsCanonical(t *testing.T) {
	for _, in := range []string{"10.0.0.1:9651", "tcp://[fd00::1]:9651", "TCP://Host.Example:00001", "[::ffff:10.0.0.1]:2", "tcp://[fe80::1%25eth0]:9651"} {
		u, err := Parse(in)
		if err != nil {
			continue
		}
		for _, again := range []string{u.String(), u.Host} {
			v, err := Parse(again)
			if err != nil || v.String() != u.String() {
				t.Errorf("Parse(%q) = %s; Parse(%q) = %v, %v; want the same", in, u, again, v, err)
			}
		}
	}
}
