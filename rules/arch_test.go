package rules

import (
	"slices"
	"strings"
	"testing"
)

// TestArchTypesParsed: a type's archs are read as written; an empty list or
// an architecture raptiformica is not built for is refused at its line.
func TestArchTypesParsed(t *testing.T) {
	head := "machine \"s\" {\n  min = 1\n  consul_server = true\n}\n"
	p, err := Parse("p.hcl", []byte(head+"machine \"pi\" {\n  min = 1\n  archs = [\"arm64\", \"arm\"]\n}\n"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	if got := p.Machines["pi"].Archs; !slices.Equal(got, []string{"arm64", "arm"}) {
		t.Errorf("archs: %v", got)
	}
	if got := p.Machines["s"].Archs; got != nil {
		t.Errorf("a type without archs: %v, want none (any)", got)
	}
	for _, tc := range []struct{ src, want string }{
		{"machine \"pi\" {\n  min = 1\n  archs = []\n}\n", `p.hcl:7,11: machine "pi" archs: must name at least one architecture`},
		{"machine \"pi\" {\n  min = 1\n  archs = [\"aarch64\"]\n}\n", `machine "pi" archs: "aarch64" is not an architecture raptiformica is built for (amd64, arm64, 386, arm, by Go's names)`},
	} {
		if _, err := Parse("p.hcl", []byte(head+tc.src), Options{}); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: %v, want %q", tc.src, err, tc.want)
		}
	}
}
