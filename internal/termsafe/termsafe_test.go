package termsafe

import (
	"encoding/json"
	"strings"
	"testing"
)

func TestTrustOutputString(t *testing.T) {
	for _, tc := range []struct {
		name, in, str, text string
	}{
		{"plain", "worker-3f2a9c1d", "worker-3f2a9c1d", "worker-3f2a9c1d"},
		{"empty", "", "", ""},
		{"letters of any script and emoji", "sérveur-東京-🦅 ok", "sérveur-東京-🦅 ok", "sérveur-東京-🦅 ok"},
		{"a real replacement character", "a\uFFFDb", "a\uFFFDb", "a\uFFFDb"},
		{"backslash left as it is", `C:\dir\x1b`, `C:\dir\x1b`, `C:\dir\x1b`},
		{"window title", "\x1b]0;pwned\x07", `\x1b]0;pwned\a`, `\x1b]0;pwned\a`},
		{"clear screen", "\x1b[2J", `\x1b[2J`, `\x1b[2J`},
		{"carriage return", "ok\rFAILED", `ok\rFAILED`, `ok\rFAILED`},
		{"tab and newline", "a\tb\nc", `a\tb\nc`, "a\\tb\nc"},
		{"other C0", "\x00\x08\x0b\x0c\x1f", `\x00\b\v\f\x1f`, `\x00\b\v\f\x1f`},
		{"DEL", "a\x7fb", `a\x7fb`, `a\x7fb`},
		{"C1 CSI", "a\u009b31mb", `a\u009b31mb`, `a\u009b31mb`},
		{"bidi override", "gpj.\u202eexe", `gpj.\u202eexe`, `gpj.\u202eexe`},
		{"bidi isolate", "a\u2066b\u2069", `a\u2066b\u2069`, `a\u2066b\u2069`},
		{"zero width", "ad\u200bmin\ufeff", `ad\u200bmin\ufeff`, `ad\u200bmin\ufeff`},
		{"tag character", "a\U000E0041", `a\U000e0041`, `a\U000e0041`},
		{"line separator", "a\u2028b\u2029", `a\u2028b\u2029`, `a\u2028b\u2029`},
		{"bytes that are not UTF-8", "a\xffb\xc3", `a\xffb\xc3`, `a\xffb\xc3`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := String(tc.in); got != tc.str {
				t.Errorf("String: got %q want %q", got, tc.str)
			}
			if got := Text(tc.in); got != tc.text {
				t.Errorf("Text: got %q want %q", got, tc.text)
			}
			var b strings.Builder
			if n, err := NewWriter(&b).Write([]byte(tc.in)); err != nil || n != len(tc.in) || b.String() != tc.text {
				t.Errorf("NewWriter: wrote %q (%d, %v) want %q (%d)", b.String(), n, err, tc.text, len(tc.in))
			}
		})
	}
}

func TestTrustOutputJSONEscapes(t *testing.T) {
	for _, in := range []string{"plain", "\x1b]0;pwned\x07", "a\x7fb", "a\u009bb", "gpj.\u202eexe", "a\U000E0041", "a\u2028b", "zw\u200bj", "é東🦅", "<b>&"} {
		b, err := json.Marshal(map[string]string{"k": in})
		if err != nil {
			t.Fatal(err)
		}
		got := JSON(b)
		for _, r := range string(got) {
			if r != '\n' && isUnsafe(r) {
				t.Errorf("%q: JSON left %q raw: %s", in, r, got)
			}
		}
		var back map[string]string
		if err := json.Unmarshal(got, &back); err != nil || back["k"] != in {
			t.Errorf("%q: decoded %q (%v) from %s", in, back["k"], err, got)
		}
	}
}
