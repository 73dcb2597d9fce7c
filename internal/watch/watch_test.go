package watch

import (
	"testing"
	"time"
)

// TestScaleRetrySpreadsOverTheWait guards what spreads a thousand members'
// retries after a common failure: the first wait may be anywhere in [0, 1 s]
// and the later ones never exceed the cap.
func TestScaleRetrySpreadsOverTheWait(t *testing.T) {
	lowest, highest := time.Hour, time.Duration(0)
	for range 1000 {
		d := Retry.Delay(1)
		if d < 0 || d > time.Second {
			t.Fatalf("first retry: got %v want within [0, 1s]", d)
		}
		lowest, highest = min(lowest, d), max(highest, d)
	}
	if lowest > 100*time.Millisecond || highest < 900*time.Millisecond {
		t.Errorf("1000 first retries span [%v, %v]: want them over the whole of [0, 1s]", lowest, highest)
	}
	for failures := 1; failures < 100; failures++ {
		if d := Retry.Delay(failures); d > 30*time.Second {
			t.Fatalf("retry after %d failures: got %v want at most 30s", failures, d)
		}
	}
}
