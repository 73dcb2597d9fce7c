package reconcile

import (
	"testing"
	"time"
)

// TestScaleAListAskedBeforeAStopIsNotKept: a backend that reports a stop
// while its list is in flight must not have that list reused by the pass
// the stop woke: the list was asked before the machine stopped.
func TestScaleAListAskedBeforeAStopIsNotKept(t *testing.T) {
	l := &Lists{MinGap: time.Hour}
	_, _, ok, gen := l.recent("local")
	if ok {
		t.Fatal("an empty cache answered")
	}
	asked := time.Now()
	l.Forget("local") // the stop, reported while the list was in flight
	l.keep("local", answer{name: "local"}, 7, gen, asked)
	if _, _, ok, _ := l.recent("local"); ok {
		t.Error("a list asked before the stop was kept and reused")
	}
	_, _, _, gen = l.recent("local")
	l.keep("local", answer{name: "local"}, 8, gen, time.Now())
	if _, index, ok, _ := l.recent("local"); !ok || index != 8 {
		t.Errorf("a list asked after the stop: ok %v, index %d; want it kept at 8", ok, index)
	}
}
