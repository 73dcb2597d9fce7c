package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"unicode"
	"unicode/utf8"

	"github.com/raptiformica/raptiformica/cluster"
)

// rawControl is the first character of s a terminal would act on or that
// reorders the text around it, as the test sees it: any control but the
// newline, any format character (bidi overrides, zero-width marks), a line
// or paragraph separator, a byte that is not UTF-8.
func rawControl(s string) (string, bool) {
	for i, r := range s {
		if r == utf8.RuneError || (r != '\n' && unicode.IsControl(r)) || unicode.In(r, unicode.Cf, unicode.Zl, unicode.Zp) {
			return fmt.Sprintf("%q at byte %d", s[i:i+utf8.RuneLen(r)], i), true
		}
	}
	return "", false
}

// TestTrustOutputJSON: --json carries member-written strings as they are,
// but as JSON escapes: `members --json` read on a terminal does not act on
// them, and a script decodes the very same strings.
func TestTrustOutputJSON(t *testing.T) {
	for _, h := range []string{"\x1b]0;pwned\x07", "\x1b[2J", "a\rb", "gpj.\u202eexe", "del\x7f", "csi\u009b31m", "tag\U000E0041", "ls\u2028sep", "zw\u200bj", "bad\xffutf8", "<b>&"} {
		t.Run(fmt.Sprintf("%q", h), func(t *testing.T) {
			rows := []cluster.Member{{Name: h, Address: h, Offers: []string{h}}}
			var out bytes.Buffer
			if err := writeJSON(&out, rows); err != nil {
				t.Fatal(err)
			}
			if what, bad := rawControl(out.String()); bad {
				t.Errorf("the JSON holds %s:\n%s", what, out.String())
			}
			var back []cluster.Member
			if err := json.Unmarshal(out.Bytes(), &back); err != nil {
				t.Fatalf("%v:\n%s", err, out.String())
			}
			if want := strings.ToValidUTF8(h, "\uFFFD"); len(back) != 1 || back[0].Name != want || back[0].Offers[0] != want {
				t.Errorf("got %+v want the name %q back", back, want)
			}
		})
	}
}

// TestTrustOutputErrors: an error that quotes what a member or a backend
// said reaches stderr, and --json's stdout, escaped.
func TestTrustOutputErrors(t *testing.T) {
	file := "\x1b]0;pwned\x07\x1b[2J\r\u202elch.exe"
	for _, args := range [][]string{
		{"platform", "validate", file},
		{"platform", "validate", "--json", file},
	} {
		var out, errOut bytes.Buffer
		if code := runWith(args, &out, &errOut); code != 1 {
			t.Errorf("%q: exit code %d want 1", args, code)
		}
		for name, got := range map[string]string{"stdout": out.String(), "stderr": errOut.String()} {
			if what, bad := rawControl(got); bad {
				t.Errorf("%q: %s holds %s: %q", args, name, what, got)
			}
		}
		if !strings.Contains(out.String()+errOut.String(), `\u202elch.exe`) {
			t.Errorf("%q: the file is not named, escaped: %q %q", args, out.String(), errOut.String())
		}
	}
}
