package daemon

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/raptiformica/raptiformica/internal/consulclient"
	"github.com/raptiformica/raptiformica/internal/nodeconfig"
	"github.com/raptiformica/raptiformica/internal/telemetry"
	"github.com/raptiformica/raptiformica/internal/testconsul"
)

// Only a caller holding the cluster's token makes a node act; a node that
// has no token (a config from before ACLs) acts for nobody. The token comes
// over TLS, or from the machine itself: sent in clear from another
// machine, it is refused (and whoever listened has it: rotate it).
func TestActingNeedsTheToken(t *testing.T) {
	const lo, remote = "127.0.0.1:40000", "192.0.2.7:40000"
	for _, tc := range []struct {
		name, token, auth, from string
		tls                     bool
		want                    int
	}{
		{"no header", "tok", "", lo, false, http.StatusUnauthorized},
		{"wrong token", "tok", "Bearer other", lo, false, http.StatusUnauthorized},
		{"a prefix of the token", "tok", "Bearer to", lo, false, http.StatusUnauthorized},
		{"not a bearer", "tok", "tok", lo, false, http.StatusUnauthorized},
		{"a node without a token", "", "Bearer ", lo, false, http.StatusUnauthorized},
		{"the token from the machine", "tok", "Bearer tok", lo, false, http.StatusNoContent},
		{"the token over TLS", "tok", "Bearer tok", remote, true, http.StatusNoContent},
		{"the token in clear from another machine", "tok", "Bearer tok", remote, false, http.StatusForbidden},
		{"a wrong token over TLS", "tok", "Bearer x", remote, true, http.StatusUnauthorized},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := &httpServer{cfg: nodeconfig.Config{ACLToken: tc.token}}
			acted := false
			handler := h.acting(func(w http.ResponseWriter, r *http.Request) {
				acted = true
				w.WriteHeader(http.StatusNoContent)
			})
			req := httptest.NewRequest(http.MethodPost, "/v1/mesh/peers", nil)
			req.RemoteAddr = tc.from
			if tc.tls {
				req.TLS = &tls.ConnectionState{}
			}
			if tc.auth != "" {
				req.Header.Set("Authorization", tc.auth)
			}
			rec := httptest.NewRecorder()
			handler(rec, req)
			if rec.Code != tc.want || acted != (tc.want == http.StatusNoContent) {
				t.Errorf("got %d (acted %v), want %d", rec.Code, acted, tc.want)
			}
		})
	}
}

// serveForTest runs h on a loopback listener until the test ends and
// returns its address.
func serveForTest(t *testing.T, h *httpServer) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h.lns = []net.Listener{ln}
	if h.metrics == nil {
		h.metrics = telemetry.New()
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- h.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return ln.Addr().String()
}

// closedWithin reports whether the server closes conn within d, while
// feed, if not nil, keeps sending it bytes.
func closedWithin(t *testing.T, conn net.Conn, d time.Duration, feed func() error) bool {
	t.Helper()
	closed := make(chan struct{})
	go func() {
		defer close(closed)
		_, _ = io.Copy(io.Discard, conn) // until the server closes it
	}()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(d)
	for {
		select {
		case <-closed:
			return true
		case <-deadline:
			return false
		case <-tick.C:
			if feed != nil && feed() != nil {
				<-closed
				return true
			}
		}
	}
}

// One client must not hold a connection of the agent's API forever: one
// that sends its headers or its body a byte at a time (slowloris), or that
// keeps an idle connection open, is cut off.
func TestHostileSlowHTTPClient(t *testing.T) {
	limits := &httpLimits{readHeader: 300 * time.Millisecond, read: 600 * time.Millisecond, write: time.Second, idle: 300 * time.Millisecond, maxHeaderBytes: 4 << 10, maxBodyBytes: 4 << 10}
	addr := serveForTest(t, &httpServer{limits: limits})
	for _, tc := range []struct {
		name  string
		start string
		feed  string // sent every 50 ms
	}{
		{"headers a line at a time", "GET /metrics HTTP/1.1\r\nHost: x\r\n", "X-Slow: 1\r\n"},
		{"a body a byte at a time", "POST /v1/join HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n", "x"},
		{"an idle connection after an answer", "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			conn, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			if _, err := io.WriteString(conn, tc.start); err != nil {
				t.Fatal(err)
			}
			var feed func() error
			if tc.feed != "" {
				feed = func() error { _, err := io.WriteString(conn, tc.feed); return err }
			}
			if !closedWithin(t, conn, 3*time.Second, feed) {
				t.Error("the connection is still open after 3s")
			}
		})
	}
}

// A body larger than the cap is refused, whichever endpoint reads it.
func TestHTTPBodyCap(t *testing.T) {
	h := &httpServer{limits: &httpLimits{readHeader: time.Second, read: time.Second, write: time.Second, idle: time.Second, maxHeaderBytes: 4 << 10, maxBodyBytes: 16}}
	var got error
	srv := h.server(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, got = io.ReadAll(r.Body) }))
	srv.Handler.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest(http.MethodPost, "/", strings.NewReader(strings.Repeat("x", 17))))
	var tooLarge *http.MaxBytesError
	if !errors.As(got, &tooLarge) {
		t.Errorf("reading 17 bytes under a cap of 16: got %v, want http.MaxBytesError", got)
	}
}

// /healthz answers within a second when Consul hangs (accepts, never
// answers): systemd, a load balancer or Prometheus asking it must not
// hang too, and a hung Consul is unhealthy.
func TestHostileHealthzWithHungConsul(t *testing.T) {
	ln := testconsul.Silent(t)
	client, err := consulclient.New(consulclient.Target{Host: "127.0.0.1", HTTPPort: ln.Port})
	if err != nil {
		t.Fatal(err)
	}
	addr := serveForTest(t, &httpServer{consul: client, mirror: &mirror{ready: true}})
	hc := &http.Client{Timeout: 5 * time.Second}
	start := time.Now()
	resp, err := hc.Get("http://" + addr + "/healthz")
	if err != nil {
		t.Fatalf("/healthz: %v after %s", err, time.Since(start))
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if took := time.Since(start); took > time.Second || resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("/healthz with a hung Consul: got %d %q after %s, want 503 within 1s", resp.StatusCode, body, took)
	}
}

// TestScaleLivezAsksNothingOfConsul: Consul's check of every member asks
// /livez, which must not depend on the servers: with a hung Consul it
// still says the agent lives. Were it /healthz, every member's check would
// turn critical whenever the servers are slow, a hundred catalog writes
// through a Raft leader already behind (seen at 103 machines: the leader
// lost for minutes after one worker died).
func TestScaleLivezAsksNothingOfConsul(t *testing.T) {
	ln := testconsul.Silent(t)
	client, err := consulclient.New(consulclient.Target{Host: "127.0.0.1", HTTPPort: ln.Port})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		ready bool
		want  int
	}{{true, http.StatusOK}, {false, http.StatusServiceUnavailable}} {
		addr := serveForTest(t, &httpServer{consul: client, mirror: &mirror{ready: tc.ready}})
		resp, err := (&http.Client{Timeout: 5 * time.Second}).Get("http://" + addr + "/livez")
		if err != nil {
			t.Fatalf("/livez: %v", err)
		}
		resp.Body.Close()
		if resp.StatusCode != tc.want {
			t.Errorf("/livez of an agent ready=%v with a hung Consul: %d, want %d", tc.ready, resp.StatusCode, tc.want)
		}
	}
	check := agentService(nodeconfig.Config{MachineID: "m", BindAddr: "127.0.0.7", HTTPPort: 9550}).Checks
	if len(check) != 1 || !strings.HasSuffix(check[0].HTTP, "/livez") {
		t.Errorf("the agent's Consul check: %+v, want one on /livez", check)
	}
}
