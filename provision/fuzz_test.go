package provision

import (
	"net/netip"
	"strconv"
	"strings"
	"testing"
)

// FuzzParseHost: no text panics ParseHost; a refusal names the text; an
// accepted host has a user, a port and an address or host name, and its
// spelling (which the inventory and the logs show) parses back to it.
func FuzzParseHost(f *testing.F) {
	for _, s := range []string{"root@192.0.2.1", "deploy@nas.home:2222", "[fd00::1]:22", "fd00::1", "a@b@host", "host", "[fe80::1%eth0]:22"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		h, err := ParseHost(s)
		if err != nil {
			if !strings.Contains(err.Error(), "host ") {
				t.Fatalf("ParseHost(%q): %v", s, err)
			}
			return
		}
		if h.User == "" || h.Addr == "" || h.Port < 1 || h.Port > 65535 {
			t.Fatalf("ParseHost(%q) = %+v", s, h)
		}
		if _, err := netip.ParseAddr(h.Addr); err != nil && strings.ContainsAny(h.Addr, "[]:@/ \t\n") {
			t.Fatalf("ParseHost(%q): address %q", s, h.Addr)
		}
		again, err := ParseHost(h.String())
		if err != nil || again != h {
			t.Fatalf("ParseHost(%q) = %+v, printed %q, which parses to %+v, %v", s, h, h.String(), again, err)
		}
	})
}

// FuzzParseHostList: an inventory file is machines or an error naming the
// file and the line; every machine has a type and a host of its own.
func FuzzParseHostList(f *testing.F) {
	for _, s := range []string{
		"# home\nroot@192.0.2.1\n\ndeploy@nas:2222 storage  # the NAS\n",
		"root@a\nroot@a\n",
		"root@a x y\n",
		"root@a:99999\n",
		"x]:22 worker\n",
		"root@a web.v2\n",
	} {
		f.Add(s, "worker")
	}
	f.Fuzz(func(t *testing.T, src, defType string) {
		const name = "fuzz/machines.txt"
		entries, err := parseHostList(name, []byte(src), defType)
		if err != nil {
			if !strings.HasPrefix(err.Error(), name) {
				t.Fatalf("the error does not name the file: %v", err)
			}
			return
		}
		seen := map[string]bool{}
		for _, e := range entries {
			if e.Type == "" {
				t.Fatalf("entry %+v: type %q", e, e.Type)
			}
			if seen[e.Host.HostPort()] {
				t.Fatalf("%s listed twice", e.Host.HostPort())
			}
			seen[e.Host.HostPort()] = true
			line, ok := strings.CutPrefix(e.Where, name+":")
			if n, err := strconv.Atoi(line); !ok || err != nil || n < 1 {
				t.Fatalf("entry %+v: where %q", e, e.Where)
			}
		}
	})
}
