// Package signals reads the values machine types scale on (rules.Scale):
// a Prometheus instant query, the passing instances of a service in
// Consul's catalog, or the number a Consul check's output starts with.
//
// The leader reads them, beside its passes and never inside one: a signal
// that hangs must not hold the control loop. Each read has a deadline and
// each answer a cap; a read that fails is a reading with an error, which
// the planner holds on (reconcile.decideScale).
package signals

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/raptiformica/raptiformica/internal/clock"
	"github.com/raptiformica/raptiformica/internal/kvschema"
	"github.com/raptiformica/raptiformica/internal/state"
	"github.com/raptiformica/raptiformica/rules"
)

// MaxAnswer caps what one read takes of an answer: an instant query that
// returns one number needs far less, and a query that returns every
// series of a big Prometheus is a mistake to refuse, not to parse.
const MaxAnswer = 1 << 20

// maxTokenFile caps the bearer token file.
const maxTokenFile = 16 << 10

// readTimeout bounds one read, whatever the signal's interval.
const readTimeout = 10 * time.Second

// maxErrorText caps what a failed reading keeps of its error.
const maxErrorText = 300

func capText(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

// Reader reads the signals of a description's types, each at its own
// interval, in the background, and keeps the last reading of each.
type Reader struct {
	// Consul is the leader's Consul client, for the Consul signals.
	Consul *api.Client
	// HTTP is the client of Prometheus's queries; nil uses the Reader's
	// own (no proxy from the environment, no redirect followed, idle
	// connections closed).
	HTTP  *http.Client
	Clock clock.Clock

	client  sync.Once
	own     *http.Client
	mu      sync.Mutex
	last    map[string]kept
	reading map[string]bool
}

// kept is a type's last reading and the signal it was of: a reading of a
// signal the description has changed since is not the type's.
type kept struct {
	spec    string
	reading state.Reading
}

// Read returns the last reading of every type of p that scales on a
// signal, and starts reading again, in the background, those whose last
// reading is at least their interval old (their first, at once). It does
// not block on any read; ctx ends the reads it starts.
func (r *Reader) Read(ctx context.Context, p *rules.Platform) map[string]state.Reading {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.last == nil {
		r.last, r.reading = map[string]kept{}, map[string]bool{}
	}
	now := r.Clock.Now()
	out := map[string]state.Reading{}
	for name, mt := range p.Machines {
		if mt.Scale == nil {
			continue
		}
		sc := *mt.Scale
		spec := specOf(sc)
		k, ok := r.last[name]
		if ok && k.spec == spec {
			out[name] = k.reading
		}
		if r.reading[name] || ok && k.spec == spec && now.Sub(k.reading.At) < sc.Interval {
			continue
		}
		r.reading[name] = true
		go r.read(ctx, name, spec, sc)
	}
	return out
}

func (r *Reader) read(ctx context.Context, name, spec string, sc rules.Scale) {
	rctx, cancel := context.WithTimeout(ctx, min(readTimeout, sc.Interval))
	defer cancel()
	v, err := r.Once(rctx, sc)
	reading := state.Reading{Value: v, At: r.Clock.Now()}
	if err != nil {
		// Kept in the scale state and the status: an answer's error
		// text is whatever the other side chose to send.
		reading.Value, reading.Error = 0, capText(err.Error(), maxErrorText)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.reading, name)
	if ctx.Err() == nil {
		r.last[name] = kept{spec: spec, reading: reading}
	}
}

// Once reads signal sc now, within ctx. A value that is not a finite
// number is an error: it asks for no count.
func (r *Reader) Once(ctx context.Context, sc rules.Scale) (float64, error) {
	var v float64
	var err error
	switch sc.Signal {
	case rules.SignalPrometheus:
		v, err = r.prometheus(ctx, sc)
	case rules.SignalConsulService:
		v, err = r.passing(ctx, sc.Service)
	case rules.SignalConsulCheck:
		v, err = r.check(ctx, sc.Check)
	default:
		return 0, fmt.Errorf("unknown signal %q", sc.Signal)
	}
	if err == nil && (math.IsNaN(v) || math.IsInf(v, 0)) {
		return 0, fmt.Errorf("%s: the value is %v, not a number", sc.Signal, v)
	}
	return v, err
}

// httpClient is the client of Prometheus's queries.
func (r *Reader) httpClient() *http.Client {
	if r.HTTP != nil {
		return r.HTTP
	}
	r.client.Do(func() {
		r.own = &http.Client{
			Transport: &http.Transport{Proxy: nil, IdleConnTimeout: time.Minute, MaxIdleConns: 4, ResponseHeaderTimeout: readTimeout},
			// A redirect would carry the bearer token wherever it
			// points, over plain HTTP too.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		}
	})
	return r.own
}

func specOf(sc rules.Scale) string {
	return strings.Join([]string{sc.Signal, sc.Prometheus, sc.Query, sc.TokenFile, sc.Service, sc.Check}, "\x00")
}

// prometheus runs sc's instant query, which must answer one number: a
// scalar, or a vector of exactly one sample. An empty vector is no
// value, not zero: write `… or vector(0)` for a series that may vanish.
func (r *Reader) prometheus(ctx context.Context, sc rules.Scale) (float64, error) {
	u, err := url.Parse(strings.TrimRight(sc.Prometheus, "/") + "/api/v1/query")
	if err != nil {
		return 0, err
	}
	u.RawQuery = url.Values{"query": {sc.Query}}.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return 0, err
	}
	if sc.TokenFile != "" {
		tok, err := readToken(sc.TokenFile)
		if err != nil {
			return 0, err
		}
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	resp, err := r.httpClient().Do(req)
	if err != nil {
		return 0, fmt.Errorf("prometheus: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, MaxAnswer+1))
	if err != nil {
		return 0, fmt.Errorf("prometheus: read the answer: %w", err)
	}
	if len(body) > MaxAnswer {
		return 0, fmt.Errorf("prometheus: an answer over %d bytes: the query must return one number", MaxAnswer)
	}
	var ans struct {
		Status string `json:"status"`
		Error  string `json:"error"`
		Data   struct {
			ResultType string          `json:"resultType"`
			Result     json.RawMessage `json:"result"`
		} `json:"data"`
	}
	if err := json.Unmarshal(body, &ans); err != nil {
		return 0, fmt.Errorf("prometheus: HTTP %d, not an API answer: %w", resp.StatusCode, err)
	}
	if ans.Status != "success" {
		return 0, fmt.Errorf("prometheus: %s (HTTP %d)", capText(ans.Error, maxErrorText), resp.StatusCode)
	}
	var pair []json.RawMessage
	switch ans.Data.ResultType {
	case "scalar":
		if err := json.Unmarshal(ans.Data.Result, &pair); err != nil {
			return 0, fmt.Errorf("prometheus: scalar: %w", err)
		}
	case "vector":
		var vec []struct {
			Value []json.RawMessage `json:"value"`
		}
		if err := json.Unmarshal(ans.Data.Result, &vec); err != nil {
			return 0, fmt.Errorf("prometheus: vector: %w", err)
		}
		if len(vec) != 1 {
			return 0, fmt.Errorf("prometheus: the query returned %d series, want 1 (sum() it; `or vector(0)` for one that may vanish)", len(vec))
		}
		pair = vec[0].Value
	default:
		return 0, fmt.Errorf("prometheus: a %s result, want a scalar or a vector of one sample", ans.Data.ResultType)
	}
	var s string
	if len(pair) != 2 || json.Unmarshal(pair[1], &s) != nil {
		return 0, errors.New("prometheus: a sample without a value")
	}
	v, err := strconv.ParseFloat(s, 64)
	if err != nil {
		return 0, fmt.Errorf("prometheus: value %q is not a number", capText(s, 40))
	}
	return v, nil
}

func readToken(file string) (string, error) {
	// A FIFO or a device would block the open past any deadline.
	if fi, err := os.Stat(file); err != nil {
		return "", fmt.Errorf("prometheus token: %w", err)
	} else if !fi.Mode().IsRegular() {
		return "", fmt.Errorf("prometheus token %s: not a regular file", file)
	}
	f, err := os.Open(file)
	if err != nil {
		return "", fmt.Errorf("prometheus token: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxTokenFile+1))
	if err != nil {
		return "", fmt.Errorf("prometheus token %s: %w", file, err)
	}
	if len(b) > maxTokenFile {
		return "", fmt.Errorf("prometheus token %s: over %d bytes", file, maxTokenFile)
	}
	return strings.TrimSpace(string(b)), nil
}

// passing is the number of passing instances of service in the catalog.
func (r *Reader) passing(ctx context.Context, service string) (float64, error) {
	es, _, err := r.Consul.Health().Service(service, "", true, (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return 0, fmt.Errorf("consul: passing instances of %s: %w", service, err)
	}
	return float64(len(es)), nil
}

// check is the number the output of check id starts with, summed over the
// services' checks of that ID (one queue's depth per node, say), as the
// catalog has it. Only checks bound to a service count, and never to the
// agent's own service: a client machine may write its own node's checks
// and its agent's service, and must not steer the count. An agent hands a
// change of output alone to the catalog only every check_update_interval
// (5 minutes unless its config says otherwise), a change of status at once.
func (r *Reader) check(ctx context.Context, id string) (float64, error) {
	q := (&api.QueryOptions{Filter: fmt.Sprintf("CheckID == %q and ServiceID != \"\" and ServiceName != %q", id, kvschema.ServiceName)}).WithContext(ctx)
	checks, _, err := r.Consul.Health().State(api.HealthAny, q)
	if err != nil {
		return 0, fmt.Errorf("consul: check %s: %w", id, err)
	}
	if len(checks) == 0 {
		return 0, fmt.Errorf("consul: no check %s of a service", id)
	}
	sum := 0.0
	for _, c := range checks {
		v, err := leadingNumber(c.Output)
		if err != nil {
			return 0, fmt.Errorf("consul: check %s on %s: %w", id, c.Node, err)
		}
		if v < 0 {
			return 0, fmt.Errorf("consul: check %s on %s: %v, a negative value", id, c.Node, v)
		}
		sum += v
	}
	return sum, nil
}

// leadingNumber is the number a check's output starts with.
func leadingNumber(out string) (float64, error) {
	f := strings.Fields(out)
	if len(f) == 0 {
		return 0, errors.New("an empty output, want a number first")
	}
	v, err := strconv.ParseFloat(f[0], 64)
	if err != nil {
		return 0, fmt.Errorf("output %q does not start with a number", firstLine(out))
	}
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return 0, fmt.Errorf("output %q does not start with a finite number", firstLine(out))
	}
	return v, nil
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(s, "\n")
	if len(s) > 80 {
		s = s[:80] + "…"
	}
	return s
}
