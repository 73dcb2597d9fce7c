package probe

import (
	"context"
	"net"
	"testing"
	"time"
)

// A measurement against a real prober on loopback: the round trips are
// ordered and the receiver confirms a stream.
func TestMeasureOnLoopback(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, ln) }()
	r, err := Measure(context.Background(), ln.Addr().String(), 50, 100*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if r.RTTP50 <= 0 || r.RTTP99 < r.RTTP50 || r.BitsPerSecond <= 0 {
		t.Errorf("got %+v, want positive round trips with p99 >= p50 and a confirmed throughput", r)
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Serve after cancel: got %v, want nil", err)
	}
	if _, err := Measure(context.Background(), ln.Addr().String(), 1, time.Millisecond); err == nil {
		t.Error("a measurement against a stopped prober succeeded")
	}
}
