package cluster

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/raptiformica/raptiformica/internal/consulclient"
	"github.com/raptiformica/raptiformica/internal/testconsul"
	"github.com/raptiformica/raptiformica/rules"
)

// The CLI's member reads honour their caller's deadline (and Ctrl-C): a
// Consul that accepts and never answers once held `members`, `up` and
// `adopt` for as long as the client's own limit, whatever the command
// asked for.
func TestHostileMembersHonourTheDeadline(t *testing.T) {
	ln := testconsul.Silent(t)
	c, err := consulclient.New(consulclient.Target{Host: "127.0.0.1", HTTPPort: ln.Port})
	if err != nil {
		t.Fatal(err)
	}
	for name, f := range map[string]func(context.Context) error{
		"Members": func(ctx context.Context) error { _, _, err := Members(ctx, c, rules.Options{}); return err },
		"Alive":   func(ctx context.Context) error { _, err := alive(ctx, c, "m"); return err },
	} {
		t.Run(name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
			defer cancel()
			errc := make(chan error, 1)
			go func() { errc <- f(ctx) }()
			select {
			case err := <-errc:
				if err == nil {
					t.Error("got no error from a Consul that never answers")
				}
			case <-time.After(3 * time.Second):
				t.Error("still waiting 3s after a deadline of 300ms")
			}
		})
	}
}

// hostile are strings a member or a backend may write to fool an
// operator's terminal: set its title, clear the screen, overwrite the line,
// reverse the text after it, break the table.
var hostile = []string{"\x1b]0;pwned\x07", "\x1b[2J", "a\rb", "gpj.\u202eexe", "tab\tbed", "new\nline", "del\x7f", "csi\u009b31m", "bad\xffutf8", "ls\u2028sep"}

// rawControl is the first character of s a terminal would act on or that
// reorders the text around it, as the test sees it (independently of the
// escaping under test): any control but the newline that ends a line, any
// format character (bidi overrides, zero-width marks), a line or paragraph
// separator, a byte that is not UTF-8.
func rawControl(s string) (string, bool) {
	for i, r := range s {
		if r == utf8.RuneError || (r != '\n' && unicode.IsControl(r)) || unicode.In(r, unicode.Cf, unicode.Zl, unicode.Zp) {
			return fmt.Sprintf("%q at byte %d", s[i:i+utf8.RuneLen(r)], i), true
		}
	}
	return "", false
}

// TestTrustOutputMembers: the members table shows every member-written
// string escaped, one line per member, whatever the strings hold.
func TestTrustOutputMembers(t *testing.T) {
	var rows []Member
	for i, h := range hostile {
		rows = append(rows, Member{
			Name: fmt.Sprintf("m%d-%s", i, h), Address: h, Status: "alive", Type: h, State: h, Role: "client",
			Offers: []string{h, "local"}, Provisioned: h, MeshEndpoints: []string{h}, MeshPeers: []string{h},
		})
	}
	for _, withMesh := range []bool{false, true} {
		var out strings.Builder
		if err := WriteMembers(&out, rows, withMesh); err != nil {
			t.Fatal(err)
		}
		got := out.String()
		if what, bad := rawControl(got); bad {
			t.Errorf("mesh %v: the table holds %s:\n%s", withMesh, what, got)
		}
		if n := strings.Count(got, "\n"); n != len(rows)+1 {
			t.Errorf("mesh %v: got %d lines want %d (a header and one per member):\n%s", withMesh, n, len(rows)+1, got)
		}
		for _, want := range []string{`m0-\x1b]0;pwned\a`, `gpj.\u202eexe`, `tab\tbed`, `new\nline`, `bad\xffutf8`} {
			if !strings.Contains(got, want) {
				t.Errorf("mesh %v: the table lacks %s:\n%s", withMesh, want, got)
			}
		}
	}
}

// TestVMMembersOffers: members shows how a member runs a backend beside
// the offer (vm(tcg)), and the backends members do not offer, one line
// per backend and reason whatever the number of members, the reason
// escaped and cut to a line.
func TestVMMembersOffers(t *testing.T) {
	long := strings.Repeat("x", 1000)
	rows := []Member{
		{Name: "a", Status: "alive", Offers: []string{"local", "vm"}, OfferDetails: map[string]string{"vm": "tcg"}, Arch: "linux/arm64", Version: "0.1.0+gabc", ConsulVersion: "1.22.0"},
		{Name: "b", Status: "alive", Offers: []string{"local"}, NotOffered: map[string]string{"vm": "qemu backend: missing the kernel /x/vmlinuz"}},
		{Name: "c", Status: "alive", Offers: []string{"local"}, NotOffered: map[string]string{"vm": "qemu backend: missing the kernel /x/vmlinuz", "docker": "\x1b]0;pwned\a" + long}},
	}
	var out strings.Builder
	if err := WriteMembers(&out, rows, false); err != nil {
		t.Fatal(err)
	}
	got := out.String()
	for _, want := range []string{"local,vm(tcg)", "arm64", "0.1.0+gabc", "1.22.0", "ARCH", "vm is not offered by b, c: qemu backend: missing the kernel /x/vmlinuz\n", `docker is not offered by c: \x1b]0;pwned\a`} {
		if !strings.Contains(got, want) {
			t.Errorf("members lacks %q:\n%s", want, got)
		}
	}
	if what, bad := rawControl(got); bad {
		t.Errorf("the table holds %s", what)
	}
	if strings.Contains(got, long) {
		t.Error("a member's page-long reason is shown whole")
	}
}
