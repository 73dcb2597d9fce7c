package reconcile

import (
	"encoding/json"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/raptiformica/raptiformica/backends"
	"github.com/raptiformica/raptiformica/internal/state"
	"github.com/raptiformica/raptiformica/rules"
)

// scaled is a type of workers between 1 and 10 on a signal, 5 a machine.
func scaled() rules.MachineType {
	return rules.MachineType{Name: "worker", Min: 1, Max: 10, Backends: []string{"local"}, Scale: &rules.Scale{
		Signal: rules.SignalPrometheus, Query: "q", Target: 5, Interval: 10 * time.Second,
		UpCooldown: 30 * time.Second, DownCooldown: time.Minute, DownAfter: 2 * time.Minute,
	}}
}

func reading(v float64, at time.Time) state.Reading { return state.Reading{Value: v, At: at} }

// TestElasticDecideScale: the count is the value over the target, within
// min and max; it rises at once but not within the up cooldown, falls one
// at a time only after the value stayed low for scale_down_after and past
// the down cooldown, and holds on a missing, failed or stale signal.
func TestElasticDecideScale(t *testing.T) {
	mt := scaled()
	now := t0

	// First decision, no state: from the count the type has.
	s, _ := decideScale(mt, state.ScaleState{}, false, reading(17, now), true, 1, now)
	if s.Want != 4 || !s.LastUp.Equal(now) || s.Changes != 1 {
		t.Fatalf("17 over 5 a machine: %+v, want 4 (up at once)", s)
	}
	// Within the up cooldown: held, woken at its end.
	s2, wake := decideScale(mt, s, true, reading(40, now.Add(10*time.Second)), true, 4, now.Add(10*time.Second))
	if s2.Want != 4 || !wake.Equal(now.Add(30*time.Second)) || !strings.Contains(s2.Decision, "after the up cooldown") {
		t.Errorf("in the up cooldown: %+v, wake %v; want 4 until %v", s2, wake, now.Add(30*time.Second))
	}
	// Past it: to max, not beyond.
	s, _ = decideScale(mt, s, true, reading(400, now.Add(31*time.Second)), true, 4, now.Add(31*time.Second))
	if s.Want != 10 {
		t.Errorf("400: want %d, want max 10", s.Want)
	}

	// The value falls: nothing until it stayed low for scale_down_after.
	low := now.Add(time.Minute)
	s, wake = decideScale(mt, s, true, reading(3, low), true, 10, low)
	if s.Want != 10 || !s.LowSince.Equal(low) || !wake.Equal(low.Add(2*time.Minute)) {
		t.Fatalf("low at first: %+v, wake %v", s, wake)
	}
	// Back up for a moment: the low time starts again.
	s3, _ := decideScale(mt, s, true, reading(50, low.Add(time.Minute)), true, 10, low.Add(time.Minute))
	if !s3.LowSince.IsZero() || s3.Want != 10 {
		t.Errorf("a high reading in between: %+v, want the low time reset", s3)
	}
	// Low for the whole time: one down.
	at := low.Add(2 * time.Minute)
	s, _ = decideScale(mt, s, true, reading(3, at), true, 10, at)
	if s.Want != 9 || !s.LastDown.Equal(at) {
		t.Fatalf("low for 2m: %+v, want 9", s)
	}
	// Still low: the next one after the down cooldown only.
	s, wake = decideScale(mt, s, true, reading(3, at.Add(10*time.Second)), true, 9, at.Add(10*time.Second))
	if s.Want != 9 || !wake.Equal(at.Add(time.Minute)) {
		t.Errorf("in the down cooldown: %+v, wake %v", s, wake)
	}
	s, _ = decideScale(mt, s, true, reading(0, at.Add(time.Minute)), true, 9, at.Add(time.Minute))
	if s.Want != 8 {
		t.Errorf("after the down cooldown: want %d, want 8", s.Want)
	}

	// Missing, failed, stale: held where it is, whatever min says.
	for name, tc := range map[string]struct {
		r    state.Reading
		read bool
		why  string
	}{
		"missing": {state.Reading{}, false, "not been read"},
		"failed":  {state.Reading{At: at, Error: "connection refused"}, true, "failed: connection refused"},
		"stale":   {reading(0, at.Add(-time.Hour)), true, "stale"},
	} {
		h, _ := decideScale(mt, s, true, tc.r, tc.read, 8, at.Add(2*time.Minute))
		if h.Want != 8 || !strings.Contains(h.Decision, tc.why) || !h.LowSince.IsZero() {
			t.Errorf("%s: %+v, want held at 8 (%s)", name, h, tc.why)
		}
	}
}

// TestElasticHoverBounded: a value hovering around a machine's target
// makes at most a bounded number of changes: one per up cooldown, and no
// fall while it does not stay low for scale_down_after.
func TestElasticHoverBounded(t *testing.T) {
	mt := scaled()
	s := state.ScaleState{Type: "worker", Want: 2}
	changes := 0
	for i := range 600 { // ten minutes, a reading a second
		now := t0.Add(time.Duration(i) * time.Second)
		v := 10.0 + 0.5*float64(i%7-3) // 8.5 to 11.5 around two machines' target
		next, _ := decideScale(mt, s, true, reading(v, now), true, s.Want, now)
		if next.Want != s.Want {
			changes++
		}
		s = next
	}
	if changes > 1 {
		t.Errorf("%d changes for a value hovering at the target, want at most 1", changes)
	}
}

// TestElasticPlanFollowsTheSignal: the planner spawns up to what the
// signal decides and removes one machine at a time once it decides fewer;
// a new leader reads the state kept before it and honours its cooldown.
func TestElasticPlanFollowsTheSignal(t *testing.T) {
	p := platform(t, `
policy {
  max_concurrent_spawns = 10
}
machine "server" {
  min = 1
  consul_server = true
}
machine "worker" {
  min = 1
  max = 10
  scale {
    signal     = "consul_service"
    service    = "jobs"
    target     = 5
    scale_up_cooldown   = "30s"
    scale_down_cooldown = "1m"
    scale_down_after    = "2m"
  }
}
`)
	obs := with(cluster("server", "a"), func(o *Observed) {
		o.Self = "a"
		o.Records["w1"] = Record{ID: "w1", Type: "worker", Backend: "local", State: StateJoined, Created: t0}
		o.Members["w1"] = Member{Name: "w1", Status: state.MemberAlive, Type: "worker"}
		o.Instances["local"]["w1"] = backends.Instance{MachineID: "w1", MachineType: "worker", Running: true, Created: t0}
		o.Signals = map[string]state.Reading{"worker": reading(17, t0)}
	})
	d := Plan(p, obs, t0)
	if got := kinds(d, state.KindSpawn); got["worker"] != 3 {
		t.Errorf("spawns %v, want 3 (4 asked, 1 live)", got)
	}
	st := d.Scales["worker"]
	if st.Want != 4 || d.Types["worker"].Scale == nil || d.Types["worker"].Scale.Want != 4 {
		t.Fatalf("scale state %+v, status %+v", st, d.Types["worker"].Scale)
	}

	// A new leader, 10 s on, with the value up: it honours the up
	// cooldown kept in KV.
	obs.Scales = map[string]state.ScaleState{"worker": st}
	obs.Signals["worker"] = reading(100, t0.Add(10*time.Second))
	d = Plan(p, obs, t0.Add(10*time.Second))
	if d.Scales["worker"].Want != 4 || !d.NextCheck.Equal(t0.Add(30*time.Second)) {
		t.Errorf("in the cooldown kept in KV: want %d, next check %v", d.Scales["worker"].Want, d.NextCheck)
	}

	// Decided down to 3 with 4 live: one removal, saying why.
	for _, id := range []string{"w2", "w3", "w4"} {
		obs.Records[id] = Record{ID: id, Type: "worker", Backend: "local", State: StateJoined, Created: t0.Add(time.Second)}
		obs.Members[id] = Member{Name: id, Status: state.MemberAlive, Type: "worker"}
		obs.Instances["local"][id] = backends.Instance{MachineID: id, MachineType: "worker", Running: true, Created: t0}
	}
	at := t0.Add(10 * time.Minute)
	obs.Scales = map[string]state.ScaleState{"worker": {Type: "worker", Want: 4, LastUp: t0, LowSince: at.Add(-3 * time.Minute)}}
	obs.Signals["worker"] = reading(2, at)
	d = Plan(p, obs, at)
	var downs []state.Action
	for _, a := range d.Actions {
		if a.Kind == state.KindScaleDown {
			downs = append(downs, a)
		}
	}
	if len(downs) != 1 || !strings.Contains(downs[0].Reason, "scaled in on its signal: down to 3") {
		t.Errorf("scale-downs %+v, want one, scaled in on its signal", downs)
	}
}

// TestElasticOddValuesAskForNoOdd: a value too large for an int asks for
// max, never min; one that is not a number holds, and is kept as an error
// (JSON has no NaN: the state and the status must still be written).
func TestElasticOddValuesAskForNoOdd(t *testing.T) {
	mt := scaled()
	s, _ := decideScale(mt, state.ScaleState{}, false, reading(1e300, t0), true, 1, t0)
	if s.Want != mt.Max {
		t.Errorf("1e300: want %d, want max %d", s.Want, mt.Max)
	}
	mt.Scale.Target = 1e-300
	if s, _ = decideScale(mt, state.ScaleState{}, false, reading(5, t0), true, 1, t0); s.Want != mt.Max {
		t.Errorf("5 over a tiny target: want %d, want max %d", s.Want, mt.Max)
	}
	s, _ = decideScale(mt, state.ScaleState{Type: "worker", Want: 3}, true, reading(math.NaN(), t0), true, 3, t0)
	if s.Want != 3 || s.Reading.Error == "" || s.Reading.Value != 0 {
		t.Errorf("NaN: %+v, want held at 3 with the reading an error", s)
	}
	if _, err := json.Marshal(s); err != nil {
		t.Errorf("the state after a NaN cannot be stored: %v", err)
	}
}

// TestElasticSignalDemandTakesNoRoom: what a signal asks beyond the
// type's min is served from free room only: it never takes a lower
// priority's room.
func TestElasticSignalDemandTakesNoRoom(t *testing.T) {
	p := platform(t, strings.Replace(elastic, `machine "zone" {
  min      = 2
  priority = 10
  backends = ["docker"]
}`, `machine "zone" {
  min      = 1
  max      = 4
  priority = 10
  backends = ["docker"]
  scale {
    signal  = "consul_service"
    service = "jobs"
    target  = 1
  }
}`, 1))
	obs := elasticObs([]string{"b", "c"}, map[string]string{"app-1": "app@b", "app-2": "app@b", "app-3": "app@c", "zone-1": "zone@c"})
	obs.Signals = map[string]state.Reading{"zone": reading(4, t0)}
	d := Plan(p, obs, t0)
	if pre := preempts(d); len(pre) != 0 {
		t.Errorf("preempts %+v for a signal's demand above min", pre)
	}
	if d.Scales["zone"].Want != 4 {
		t.Errorf("zone's signal asks %d, want 4", d.Scales["zone"].Want)
	}
}
