package daemon

import (
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"

	"github.com/raptiformica/raptiformica/internal/clock"
	"github.com/raptiformica/raptiformica/internal/nodeconfig"
	"github.com/raptiformica/raptiformica/internal/telemetry"
)

// A recovery request holds for recoverRequestTTL; one expired, or
// unreadable, is removed rather than acted on.
func TestHostileRecoveryRequestExpires(t *testing.T) {
	dir := t.TempDir()
	now := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	if err := RequestRecovery(dir, now, "test"); err != nil {
		t.Fatal(err)
	}
	if req, ok, _ := pendingRecovery(dir, now.Add(time.Minute)); !ok || req.Nonce == "" || req.Why != "test" {
		t.Fatalf("a fresh request: %+v, %v", req, ok)
	}
	if _, ok, dropped := pendingRecovery(dir, now.Add(recoverRequestTTL)); ok || dropped == "" {
		t.Errorf("an expired request held (dropped %q)", dropped)
	}
	if _, err := os.Stat(filepath.Join(dir, RecoverFile)); err == nil {
		t.Error("the expired request is still there")
	}
	// What an older version wrote: a line, no expiry.
	if err := os.WriteFile(filepath.Join(dir, RecoverFile), []byte("2026-11-30T12:00:00Z by raptiformica recover\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, ok, dropped := pendingRecovery(dir, now); ok || dropped == "" {
		t.Errorf("an unreadable request held")
	}
}

// A request left while the cluster has a leader (quorum came back before
// the node acted on it) is removed: once, it stayed, and the next
// partition made the node recover alone at once, splitting the cluster.
func TestHostileStaleRecoveryRequestDropped(t *testing.T) {
	leader := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte(`"127.0.0.1:8300"`))
	}))
	defer leader.Close()
	cfg := api.DefaultConfig()
	cfg.Address = leader.Listener.Addr().String()
	client, err := api.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := RequestRecovery(dir, time.Now(), "test"); err != nil {
		t.Fatal(err)
	}
	q := &quorumWatch{cfg: nodeconfig.Config{DataDir: dir, ConsulServer: true}, consul: client, clock: clock.Real{}, log: hclog.NewNullLogger(), metrics: telemetry.New()}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	go func() { _ = q.Run(ctx) }()
	for ctx.Err() == nil {
		if _, err := os.Stat(filepath.Join(dir, RecoverFile)); os.IsNotExist(err) {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Error("a recovery request left while the cluster has a leader was kept")
}

// TestScaleOnlyServersWatchQuorumEverySecond: a client's look at the leader
// is an RPC to a server, and a client never recovers: it looks ten times
// less often than a server, which may have to.
func TestScaleOnlyServersWatchQuorumEverySecond(t *testing.T) {
	for _, server := range []bool{true, false} {
		var looks atomic.Int64
		leader := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			looks.Add(1)
			_, _ = w.Write([]byte(`"127.0.0.1:8300"`))
		}))
		cfg := api.DefaultConfig()
		cfg.Address = leader.Listener.Addr().String()
		client, err := api.NewClient(cfg)
		if err != nil {
			t.Fatal(err)
		}
		fake := clock.NewFake(time.Now())
		q := &quorumWatch{cfg: nodeconfig.Config{DataDir: t.TempDir(), ConsulServer: server}, consul: client, clock: fake, log: hclog.NewNullLogger(), metrics: telemetry.New()}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { _ = q.Run(ctx); close(done) }()
		for i := 0; i < 20; i++ { // 20 s of the fake clock, a second at a time
			for fake.Waiters() == 0 {
				time.Sleep(time.Millisecond)
			}
			fake.Advance(time.Second)
		}
		for fake.Waiters() == 0 {
			time.Sleep(time.Millisecond)
		}
		cancel()
		<-done
		leader.Close()
		want := int64(20)
		if !server {
			want = 2
		}
		if got := looks.Load(); got != want {
			t.Errorf("server=%v: %d looks at the leader in 20 s, want %d", server, got, want)
		}
	}
}
