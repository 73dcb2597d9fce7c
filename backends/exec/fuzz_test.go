package exec

import (
	"net/netip"
	"strconv"
	"strings"
	"testing"

	"github.com/raptiformica/raptiformica/backends"
)

// FuzzParseList: whatever list_instances prints, parsing it does not
// panic, and every line that is not blank is a machine or an error naming
// the command and the line: a line skipped would make its machine look
// gone, and the leader replaces machines that look gone.
func FuzzParseList(f *testing.F) {
	for _, s := range []string{
		"m-1 running 10.0.0.1\nm-2 stopped\n",
		"m-1 running host.example\n\n  \n",
		"m-1 running fd00::1\n",
		"m-1 running 10.0.0.1 extra\n",
		"../m running\n",
		"m.1 running\n",
		"m-1 running x]:22\n",
		"m-1\trunning\r\n",
	} {
		f.Add(s)
	}
	local := map[string]backends.Instance{"m-1": {MachineID: "m-1", MachineType: "server", Address: "10.9.9.9", Running: true}}
	f.Fuzz(func(t *testing.T, out string) {
		insts, err := parseList(out, local)
		if err != nil {
			if !strings.HasPrefix(err.Error(), CmdList+": line ") {
				t.Fatalf("the error does not name the command and line: %v", err)
			}
			return
		}
		lines := 0
		for _, l := range strings.Split(out, "\n") {
			if len(strings.Fields(l)) > 0 {
				lines++
			}
		}
		if len(insts) != lines {
			t.Fatalf("%d machines from %d lines", len(insts), lines)
		}
		for _, in := range insts {
			if checkID(in.MachineID) != nil {
				t.Fatalf("machine id %q taken", in.MachineID)
			}
			if in.Address != "" {
				if a, err := parseHost(in.Address); err != nil || a != in.Address {
					t.Fatalf("address %q taken, which reads as %q, %v", in.Address, a, err)
				}
			}
		}
	})
}

// FuzzParseHostPort: what get_hostname and get_port print is read from
// its last line as an address or host name, and a port, or refused saying
// what was printed; what is read reads again as itself.
func FuzzParseHostPort(f *testing.F) {
	for _, s := range []string{"10.9.8.7", "starting...\n10.9.8.7\n", "host.example", "fd00::1", "::ffff:1.2.3.4", "22", "+22", "0x16", "x]:22", "vps 1", "", "\n\n"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, out string) {
		if h, err := parseHost(out); err == nil {
			if _, ipErr := netip.ParseAddr(h); ipErr != nil && (len(h) > 253 || !hostname.MatchString(h)) {
				t.Fatalf("parseHost(%q) = %q: neither an address nor a host name", out, h)
			}
			if again, err := parseHost(h); err != nil || again != h {
				t.Fatalf("parseHost(%q) = %q, which reads as %q, %v", out, h, again, err)
			}
		} else if !strings.HasPrefix(err.Error(), "printed ") {
			t.Fatalf("parseHost(%q): %v", out, err)
		}
		if p, err := parsePort(out); err == nil {
			if p < 1 || p > 65535 {
				t.Fatalf("parsePort(%q) = %d", out, p)
			}
			if again, err := parsePort(strconv.Itoa(p)); err != nil || again != p {
				t.Fatalf("parsePort(%q) = %d, which reads as %d, %v", out, p, again, err)
			}
		} else if !strings.HasPrefix(err.Error(), "printed ") {
			t.Fatalf("parsePort(%q): %v", out, err)
		}
	})
}
