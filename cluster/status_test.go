package cluster

import (
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/raptiformica/raptiformica/daemon/agentapi"
	"github.com/raptiformica/raptiformica/internal/state"
	"github.com/raptiformica/raptiformica/rules"
)

// TestStatusShowsUnusableMirrors: a machine whose copy of the cluster's
// state on disk is unusable is named in status, since it could not
// re-create the cluster if it were the last one standing.
func TestStatusShowsUnusableMirrors(t *testing.T) {
	v := StatusView{
		Leader:       "server-1",
		Reconcile:    &state.Status{Cluster: "c", LastReconcile: time.Now(), Types: map[string]state.TypeStatus{}},
		MirrorErrors: map[string]string{"server-2": "platform.version: line 1: not the version of platform.hcl's text"},
	}
	var out strings.Builder
	if err := v.WriteText(&out); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "mirror of server-2") || !strings.Contains(out.String(), "UNUSABLE: platform.version: line 1") {
		t.Errorf("status without the unusable mirror:\n%s", out.String())
	}
}

// TestTrustStatusNamesBadRecords: a stored record the leader refused (one
// that names another machine than its key) is named in status with why,
// so that an operator finds what a member wrote.
func TestTrustStatusNamesBadRecords(t *testing.T) {
	v := StatusView{Leader: "server-1", Reconcile: &state.Status{Cluster: "c", LastReconcile: time.Now(), Types: map[string]state.TypeStatus{},
		BadRecords: []state.Bad{{Key: "raptiformica/offers/worker-x", Error: `offer raptiformica/offers/worker-x names machine "server-1"`}}}}
	var out strings.Builder
	if err := v.WriteText(&out); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "BAD RECORD") || !strings.Contains(out.String(), "raptiformica/offers/worker-x refused, not acted on: offer raptiformica/offers/worker-x names machine \"server-1\"") {
		t.Errorf("status without the bad record:\n%s", out.String())
	}
}

// A failed provisioning is in status with its last lines; a machine whose
// provisioning is done is not.
func TestStatusShowsFailedProvisioning(t *testing.T) {
	var output strings.Builder
	for i := range 30 {
		output.WriteString("line " + strconv.Itoa(i) + "\n")
	}
	output.WriteString("E: Unable to locate package nginx-fancy")
	v := StatusView{
		Reconcile: &state.Status{Cluster: "c", LastReconcile: time.Now(), Types: map[string]state.TypeStatus{}},
		Provisioning: map[string]state.Provisioned{
			"web-1": {Machine: "web-1", State: state.ProvisionFailed, Failures: 2, Provisioner: "nginx", Error: `provisioner "nginx" step 1 (apt-get): exit status 100`, Output: output.String()},
			"web-2": {Machine: "web-2", State: state.ProvisionOK},
			"web-3": {Machine: "web-3", State: state.ProvisionRunning, Provisioner: "nginx"},
		},
	}
	var out strings.Builder
	if err := v.WriteText(&out); err != nil {
		t.Fatal(err)
	}
	got := out.String()
	for _, want := range []string{
		`provisioning web-1  FAILED (attempt 2): provisioner "nginx" step 1 (apt-get): exit status 100`,
		"| E: Unable to locate package nginx-fancy",
		"| line 21\n",
		"provisioning web-3  running nginx",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("status lacks %q:\n%s", want, got)
		}
	}
	if strings.Contains(got, "web-2") || strings.Contains(got, "| line 20\n") {
		t.Errorf("status shows a done machine or more than %d lines:\n%s", statusOutputLines, got)
	}
}

func TestProvisionState(t *testing.T) {
	mt := rules.MachineType{Name: "web", Provisioners: []rules.Provisioner{{Name: "a", Steps: [][]string{{"true"}}}}}
	plat := &rules.Platform{Machines: map[string]rules.MachineType{"web": mt, "db": {Name: "db"}}}
	sum := mt.ProvisionChecksum()
	for _, tc := range []struct {
		name string
		typ  string
		rec  *state.Provisioned
		want string
	}{
		{"done", "web", &state.Provisioned{State: state.ProvisionOK, Checksum: sum}, "ok"},
		{"done for an older description", "web", &state.Provisioned{State: state.ProvisionOK, Checksum: "old"}, "outdated"},
		{"failed", "web", &state.Provisioned{State: state.ProvisionFailed, Checksum: sum}, "failed"},
		{"nothing published", "web", nil, "waiting"},
		{"type provisions nothing", "db", &state.Provisioned{State: state.ProvisionOK}, ""},
		{"no description", "web", nil, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := plat
			if tc.name == "no description" {
				p = nil
			}
			var rec state.Provisioned
			if tc.rec != nil {
				rec = *tc.rec
			}
			if got := provisionState(p, tc.typ, rec, tc.rec != nil); got != tc.want {
				t.Errorf("got %q want %q", got, tc.want)
			}
		})
	}
}

// TestTrustOutputStatus: status shows what members, backends and the
// leader's pass wrote (waiting lines, backend errors, reasons, a failed
// provisioning's output, the servers seen without quorum) escaped, each on
// the line status gives it.
func TestTrustOutputStatus(t *testing.T) {
	for _, h := range hostile {
		t.Run(fmt.Sprintf("%q", h), func(t *testing.T) {
			views := map[string]StatusView{
				"pass": {
					Leader:        h,
					PlatformError: "platform.hcl:1: " + h,
					MirrorErrors:  map[string]string{h: h},
					Reconcile: &state.Status{
						Cluster: h, Leader: h, LastResult: h, LastError: h, Duration: h, Halted: h, Waiting: []string{h},
						LastReconcile: time.Now(), Types: map[string]state.TypeStatus{h: {Min: 1}},
						BackendErrors: map[string]string{h: h, "docker": h}, OfferedBy: map[string][]string{"docker": {h}},
						InFlight: []state.Action{{Kind: state.Kind(h), MachineID: h, Reason: h}},
					},
					Provisioning: map[string]state.Provisioned{
						h:       {Machine: h, State: state.ProvisionFailed, Provisioner: h, Error: h, Output: "one\n" + h + "\ntwo"},
						"web-3": {Machine: "web-3", State: state.ProvisionRunning, Provisioner: h},
					},
				},
				"no quorum": {Quorum: map[string]*agentapi.QuorumStatus{h: {
					Servers: []agentapi.ServerSeen{{Name: h, Address: h, Status: state.MemberStatus(h)}}, Recovery: h,
				}}},
			}
			for name, v := range views {
				var out strings.Builder
				if err := v.WriteText(&out); err != nil {
					t.Fatal(err)
				}
				got := out.String()
				if what, bad := rawControl(got); bad {
					t.Errorf("%s: status holds %s:\n%s", name, what, got)
				}
				// The description's error and a provisioning's output are
				// shown line by line; every other string keeps to its line.
				want := map[string]int{"pass": 20 + 2*strings.Count(h, "\n"), "no quorum": 3}[name]
				if n := strings.Count(got, "\n"); n != want {
					t.Errorf("%s: got %d lines want %d:\n%s", name, n, want, got)
				}
			}
		})
	}
}

// TestElasticStatusSaysWhatGaveWay: status shows each type's priority, and
// for a type below its min for want of room, which higher priorities hold
// that room.
func TestElasticStatusSaysWhatGaveWay(t *testing.T) {
	v := StatusView{Leader: "server-1", Reconcile: &state.Status{Cluster: "c", LastReconcile: time.Now(), Types: map[string]state.TypeStatus{
		"app":  {Min: 3, Max: 3, Live: 1, GaveWay: "zone (priority 10)"},
		"zone": {Min: 2, Max: 2, Live: 2, Priority: 10},
	}}}
	var out strings.Builder
	if err := v.WriteText(&out); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"TYPE  PRIORITY", "zone  10 ", "app gave way to higher priorities, which hold the room it could use: zone (priority 10)"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("status lacks %q:\n%s", want, out.String())
		}
	}
}

// TestElasticStatusShowsTheSignal: status and plan show a type's signal,
// its last value and the decision taken on it.
func TestElasticStatusShowsTheSignal(t *testing.T) {
	at := time.Date(2026, 12, 7, 14, 40, 7, 0, time.UTC)
	sc := &state.ScaleStatus{Signal: "prometheus: sum(jobs)", Target: 5, Reading: state.Reading{Value: 17, At: at}, Want: 4, Decision: "up to 4: the value 17 asks for 4"}
	v := StatusView{Leader: "server-1", Reconcile: &state.Status{Cluster: "c", LastReconcile: time.Now(), Types: map[string]state.TypeStatus{"worker": {Min: 1, Max: 10, Scale: sc}}}}
	var out strings.Builder
	if err := v.WriteText(&out); err != nil {
		t.Fatal(err)
	}
	want := "worker scales on prometheus: sum(jobs) (5 a machine): 17 at 14:40:07; up to 4: the value 17 asks for 4"
	if !strings.Contains(out.String(), want) {
		t.Errorf("status lacks %q:\n%s", want, out.String())
	}
	out.Reset()
	if err := WritePlan(&out, state.Plan{Types: map[string]state.TypeStatus{"worker": {Scale: &state.ScaleStatus{Signal: "consul_service: jobs", Target: 1, Reading: state.Reading{At: at, Error: "boom"}, Decision: "holds at 3: the signal failed: boom"}}}}); err != nil {
		t.Fatal(err)
	}
	if want := "worker on consul_service: jobs (1 a machine): read failed at 14:40:07; holds at 3: the signal failed: boom"; !strings.Contains(out.String(), want) {
		t.Errorf("plan lacks %q:\n%s", want, out.String())
	}
}
