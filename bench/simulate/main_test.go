package main

import (
	"os"
	"syscall"
	"testing"
	"time"
)

func TestPct(t *testing.T) {
	xs := []float64{5, 1, 4, 2, 3, 10, 9, 8, 7, 6}
	for _, c := range []struct {
		name string
		p    float64
		want float64
	}{
		{"p50", .5, 6}, {"p99", .99, 10}, {"max", 1, 10}, {"min", 0, 1},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got := pct(xs, c.p); got != c.want {
				t.Errorf("pct(%v) = %v, want %v", c.p, got, c.want)
			}
		})
	}
	if got := pct(nil, .5); got != 0 {
		t.Errorf("pct(nil) = %v, want 0", got)
	}
	if xs[0] != 5 {
		t.Errorf("pct sorted its input in place: %v", xs)
	}
}

// TestCPUTicks reads this process's own CPU time around a spin and
// compares it with what getrusage says of the same spin.
func TestCPUTicks(t *testing.T) {
	used := func() time.Duration {
		var ru syscall.Rusage
		if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
			t.Fatal(err)
		}
		return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	before, err := cpuTicks(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	start := used()
	for used()-start < 300*time.Millisecond {
	}
	spent := used() - start
	after, err := cpuTicks(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	want := int64(spent / (time.Second / clkTck))
	if d := after - before; d < want-5 || d > want+5 {
		t.Errorf("a spin of %s CPU read as %d ticks, want %d ± 5", spent, d, want)
	}
	if rssMB(os.Getpid()) <= 0 {
		t.Error("rssMB of this process is 0")
	}
}
