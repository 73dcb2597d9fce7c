package reconcile

import (
	"testing"

	"github.com/raptiformica/raptiformica/internal/state"
)

// TestScaleOnlyAMemberDownIsPrunedAtOnce: a member that left or failed is
// pruned at once; one alive or leaving is not, since Consul's prune of it
// holds the member list for 8 s. A second reap of a member the first made
// leave finds it leaving: pruning it then stalled the next pass 8 s.
func TestScaleOnlyAMemberDownIsPrunedAtOnce(t *testing.T) {
	for st, want := range map[state.MemberStatus]bool{state.MemberAlive: false, state.MemberLeaving: false, state.MemberLeft: true, state.MemberFailed: true} {
		if got := prunable(st); got != want {
			t.Errorf("prunable(%s) = %v, want %v", st, got, want)
		}
	}
}
