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
		{in: "10.0.0.1:x", err: "want host:port"},
	} {
		u, err := Parse(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) || !strings.Contains(err.Error(), tc.in) {
				t.Errorf("Parse(%q): got error %v, want one naming it and saying %q", tc.in, err, tc.err)
			}
			continue
		}
		if err != nil || u.String() != tc.want {
			t.Errorf("Parse(%q): got %v, %v; want %s", tc.in, u, err, tc.want)
		}
	}
}
