package reconcile

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/raptiformica/raptiformica/backends"
	"github.com/raptiformica/raptiformica/internal/state"
)

// BenchmarkPlan plans for 10,000 members of 100 machine types, a few of them
// failed, pending or orphaned, as a large cluster looks on a bad day.
func BenchmarkPlan(b *testing.B) {
	var src strings.Builder
	src.WriteString("machine \"server\" {\n  min = 5\n  consul_server = true\n}\n")
	for i := 1; i < 100; i++ {
		fmt.Fprintf(&src, "machine \"t%02d\" {\n  min = 101\n  max = 120\n}\n", i)
	}
	p := platform(b, src.String())
	now := t0.Add(time.Hour)
	obs := Observed{Records: map[string]Record{}, Members: map[string]Member{}, Instances: map[string]map[string]backends.Instance{"local": {}}}
	n := 0
	for _, typ := range p.MachineNames() {
		count := 100
		if typ == "server" {
			count = 5
		}
		for i := 0; i < count && n < 10000; i++ {
			id := fmt.Sprintf("%s-%04d", typ, i)
			r := Record{ID: id, Type: typ, Backend: "local", State: StateJoined, Created: t0, Updated: t0}
			m := Member{Name: id, Status: state.MemberAlive, Server: typ == "server", Voter: true}
			switch n % 100 {
			case 7:
				m.Status, r.State, r.FailedSince = state.MemberFailed, StateFailed, now.Add(-time.Minute)
			case 13:
				r.State = StateJoining
			}
			obs.Records[id], obs.Members[id] = r, m
			obs.Instances["local"][id] = backends.Instance{MachineID: id, Running: m.Status == state.MemberAlive, Created: t0}
			n++
		}
	}
	p.Policy.MaxUnhealthy = 1000
	b.ReportAllocs()
	b.ResetTimer()
	var d Decision
	for i := 0; i < b.N; i++ {
		d = Plan(p, obs, now)
	}
	b.ReportMetric(float64(len(obs.Members)), "members")
	b.ReportMetric(float64(len(d.Actions)), "actions")
}
