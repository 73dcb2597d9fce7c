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
	"github.com/raptiformica/raptiformica/internal/clock/clocktest"
	"github.com/raptiformica/raptiformica/internal/nodeconfig"
	"github.com/raptiformica/raptiformica/internal/recoverfile"
	"github.com/raptiformica/raptiformica/internal/telemetry"
)

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
	if err := recoverfile.Write(dir, time.Now(), "test"); err != nil {
		t.Fatal(err)
	}
	q := &quorumWatch{cfg: nodeconfig.Config{DataDir: dir, ConsulServer: true}, consul: client, clock: clock.Real{}, log: hclog.NewNullLogger(), metrics: telemetry.New()}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	go func() { _ = q.Run(ctx) }()
	for ctx.Err() == nil {
		if _, err := os.Stat(filepath.Join(dir, recoverfile.Name)); os.IsNotExist(err) {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Error("a recovery request left while the cluster has a leader was kept")
}

// TestScaleOnlyServersWatchQuorumEverySecond: a client's look at the leader
// is an RPC to a server, and a client never recovers: it looks once a
// minute while there is a leader. Once a look finds none it looks every
// 10 s (a thousand clients looking every second would load the surviving
// servers while they recover), and counts the outage from that look, not
// from its last look with a leader a minute before (it would say quorum
// lost before any server did).
func TestScaleOnlyServersWatchQuorumEverySecond(t *testing.T) {
	for _, server := range []bool{true, false} {
		var looks atomic.Int64
		var leaderless atomic.Bool
		consul := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			switch r.URL.Path {
			case "/v1/status/leader":
				looks.Add(1)
				if leaderless.Load() {
					_, _ = w.Write([]byte(`""`))
					return
				}
				_, _ = w.Write([]byte(`"127.0.0.1:8300"`))
			case "/v1/agent/members":
				_, _ = w.Write([]byte(`[]`))
			default:
				_, _ = w.Write([]byte(`{}`))
			}
		}))
		cfg := api.DefaultConfig()
		cfg.Address = consul.Listener.Addr().String()
		client, err := api.NewClient(cfg)
		if err != nil {
			t.Fatal(err)
		}
		fake := clocktest.NewFake(time.Now())
		q := &quorumWatch{cfg: nodeconfig.Config{DataDir: t.TempDir(), ConsulServer: server}, consul: client, mirror: &mirror{},
			clock: fake, log: hclog.NewNullLogger(), metrics: telemetry.New()}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { _ = q.Run(ctx); close(done) }()
		seconds := func(n int) { // n seconds of the fake clock, one at a time
			for range n {
				for fake.Waiters() == 0 {
					time.Sleep(time.Millisecond)
				}
				fake.Advance(time.Second)
			}
			for fake.Waiters() == 0 {
				time.Sleep(time.Millisecond)
			}
		}
		seconds(120)
		want := map[bool]int64{true: 120, false: 2}[server]
		if got := looks.Load(); got != want {
			t.Errorf("server=%v: %d looks at the leader in 120 s with a leader, want %d", server, got, want)
		}
		leaderless.Store(true)
		lost := fake.Now()
		seconds(75)
		// The client finds the leader gone at its next look, 60 s on,
		// then looks every 10 s.
		want = map[bool]int64{true: 195, false: 2 + 2}[server]
		if got := looks.Load(); got != want {
			t.Errorf("server=%v: %d looks in all, want %d", server, got, want)
		}
		st := q.Status()
		cancel()
		<-done
		consul.Close()
		if st == nil {
			t.Fatalf("server=%v: no quorum status while leaderless", server)
		}
		since := map[bool]time.Time{true: lost, false: lost.Add(time.Minute)}[server]
		if !st.LeaderlessSince.Equal(since) {
			t.Errorf("server=%v: leaderless since %s, want %s (the leader went at %s)", server, st.LeaderlessSince, since, lost)
		}
	}
}
