package cluster

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/raptiformica/raptiformica/daemon/agentapi"
	"github.com/raptiformica/raptiformica/internal/state"
	"github.com/raptiformica/raptiformica/mesh"
)

// TestTrustOutputPlanMeshTokens: plan, mesh and token list show what the
// leader's plan, an agent's overlay and the token records hold escaped,
// one line per action, link and token.
func TestTrustOutputPlanMeshTokens(t *testing.T) {
	for _, h := range hostile {
		t.Run(fmt.Sprintf("%q", h), func(t *testing.T) {
			exp := time.Now()
			for name, tc := range map[string]struct {
				write func(*strings.Builder) error
				lines int
			}{
				"plan": {func(out *strings.Builder) error {
					return WritePlan(out, state.Plan{
						Actions: []state.Action{{Kind: state.Kind(h), MachineID: h, Type: h, Backend: h, Reason: h}},
						Halted:  h, Waiting: []string{h},
					})
				}, 3},
				"mesh": {func(out *strings.Builder) error {
					return WriteMesh(out, h, &agentapi.MeshStatus{
						Address: h, Key: h, ListenPort: 9651, Endpoints: []string{h}, Problem: h,
						Peers: []mesh.Peer{{Endpoint: h, Address: h, LastError: h}},
					})
				}, 5},
				"tokens": {func(out *strings.Builder) error {
					return writeTokens(out, []Token{{ID: h, Kind: h, For: h, Expires: &exp}}, exp)
				}, 2},
			} {
				var out strings.Builder
				if err := tc.write(&out); err != nil {
					t.Fatal(err)
				}
				got := out.String()
				if what, bad := rawControl(got); bad {
					t.Errorf("%s holds %s:\n%s", name, what, got)
				}
				if n := strings.Count(got, "\n"); n != tc.lines {
					t.Errorf("%s: got %d lines want %d:\n%s", name, n, tc.lines, got)
				}
			}
		})
	}
}
