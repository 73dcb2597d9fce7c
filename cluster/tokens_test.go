package cluster

import (
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// TestWriteTokenList: `token list` says how many uses a join token has
// left, and nothing of the kind for a role's token.
func TestWriteTokenList(t *testing.T) {
	one, none := 1, 0
	var out strings.Builder
	err := WriteTokenList(&out, []JoinTokenLine{
		{Token: Token{ID: "a1", Kind: "join", For: "worker"}, UsesLeft: &one},
		{Token: Token{ID: "b2", Kind: "join", For: "worker"}, UsesLeft: &none},
		{Token: Token{ID: "c3", Kind: "role", For: "metrics"}},
	}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	for _, l := range strings.Split(strings.TrimSpace(out.String()), "\n") {
		lines = append(lines, strings.Join(strings.Fields(l), " "))
	}
	want := []string{"ID KIND FOR EXPIRES", "a1 join worker, 1 use left never", "b2 join worker, used up never", "c3 role metrics never"}
	if diff := cmp.Diff(want, lines); diff != "" {
		t.Errorf("token list (-want +got):\n%s", diff)
	}
}
