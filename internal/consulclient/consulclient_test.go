package consulclient_test

import (
	"net/http"
	"net/http/httptest"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/raptiformica/raptiformica/internal/consulclient"
	"github.com/raptiformica/raptiformica/internal/testconsul"
)

// hungConsul is a Consul that accepts connections and never answers, as a
// server does that is stopped (SIGSTOP), swapping, or behind a firewall
// that drops replies; it returns its port.
func hungConsul(t *testing.T) int {
	t.Helper()
	return testconsul.Silent(t).Port
}

// call runs f and fails the test unless it returns an error within
// within: a call that hangs fails it instead of the whole run.
func call(t *testing.T, within time.Duration, f func() error) time.Duration {
	t.Helper()
	start := time.Now()
	errc := make(chan error, 1)
	go func() { errc <- f() }()
	select {
	case err := <-errc:
		if err == nil {
			t.Fatal("got no error from a Consul that never answers")
		}
		return time.Since(start)
	case <-time.After(within):
		t.Fatalf("the call still hangs after %s", within)
	}
	return 0
}

// A call made without a context, of which the Consul API has some
// (Agent().Members), to a Consul that never answers once hung its caller
// forever: the status page, a completion, a member's CLI.
func TestHungConsulCallTimesOut(t *testing.T) {
	c, err := consulclient.New(consulclient.Target{Host: "127.0.0.1", HTTPPort: hungConsul(t), Timeout: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	for name, f := range map[string]func() error{
		"kv get":        func() error { _, _, err := c.KV().Get("k", nil); return err },
		"agent members": func() error { _, err := c.Agent().Members(false); return err },
		"status leader": func() error { _, err := c.Status().Leader(); return err },
	} {
		t.Run(name, func(t *testing.T) {
			if took := call(t, 5*time.Second, f); took < 300*time.Millisecond {
				t.Errorf("gave up after %s, before its timeout", took)
			}
		})
	}
}

// A blocking query is held by Consul up to its wait and a sixteenth more:
// the deadline of a call must not cut it, and still ends one that hangs.
func TestBlockingQueryKeepsItsWait(t *testing.T) {
	const wait = 600 * time.Millisecond
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Has("index") {
			time.Sleep(wait + wait/16)
		}
		w.Header().Set("X-Consul-Index", "8")
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte("[]"))
	}))
	defer srv.Close()
	port, _ := strconv.Atoi(srv.URL[len("http://127.0.0.1:"):])
	c, err := consulclient.New(consulclient.Target{Host: "127.0.0.1", HTTPPort: port, Timeout: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if _, meta, err := c.KV().List("p", &api.QueryOptions{WaitIndex: 7, WaitTime: wait}); err != nil || meta.LastIndex != 8 {
		t.Errorf("blocking query held for its wait: got %v (meta %+v), want index 8", err, meta)
	}

	hung, err := consulclient.New(consulclient.Target{Host: "127.0.0.1", HTTPPort: hungConsul(t), Timeout: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	took := call(t, 5*time.Second, func() error {
		_, _, err := hung.KV().List("p", &api.QueryOptions{WaitIndex: 7, WaitTime: wait})
		return err
	})
	if took < wait {
		t.Errorf("a blocking query gave up after %s, before its wait of %s", took, wait)
	}
}

// A machine's node ID is a UUID Consul accepts, the same for the same name
// every time (the reaper derives it again) and different for another name.
func TestNodeIDIsAUUIDOfTheName(t *testing.T) {
	uuid := regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-8[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)
	a, b := consulclient.NodeID("server-0a1b2c3d"), consulclient.NodeID("server-0a1b2c3e")
	if !uuid.MatchString(a) || !uuid.MatchString(b) {
		t.Fatalf("not a version 8 UUID: %q, %q", a, b)
	}
	if a == b {
		t.Errorf("two names, one ID: %s", a)
	}
	if again := consulclient.NodeID("server-0a1b2c3d"); again != a {
		t.Errorf("the same name gave %s, then %s", a, again)
	}
}
