// Command simulate plays N agents' Consul traffic, as the agent makes it,
// against a real three-server Consul on loopback addresses, and prints what
// that costs the Consul leader server beside the floor of the same Consul
// with no simulated traffic, measured in the same run:
//
//	leader CPU      the Raft leader's Consul process, from /proc/<pid>/stat
//	probe latency   a consistent KV read and a KV write, a few a second,
//	                p50/p99, made the same way in the floor and with N agents
//	sim latency     p50/p99 of the simulated agents' own non-blocking requests
//	pass            the raptiformica leader's pass with N members: the
//	                observe reads (reconcile.Observe against the real Consul)
//	                and reconcile.Plan over the N records
//
// What each simulated agent does is read from the daemon (package daemon):
//
//	client (N)  blocking watches, each with a five-minute wait: its own
//	            inventory record (stale), the description and the modules
//	            (stale), its work orders; the mesh folder
//	            (stale, at most one read per 5 s); a quorum look every minute;
//	            the servers' addresses (stale) at most once a minute when its
//	            record watch returns; its offer rewritten every 10 minutes
//	            (the agent asks every minute and writes when the offer
//	            changed or grew ten minutes old). Clients hold no session.
//	server (3)  the same watches (the description and the modules read
//	            consistently on the one that holds the lock, as the leader
//	            reads them), but the inventory snapshot's head (stale)
//	            and its chunks instead of an own record; a quorum look every
//	            second; the campaign: one holds the lock and renews its
//	            session every 5 s (TTL 10 s), the others block on the lock
//	            key 10 s at a time.
//	leader      on the Raft leader's server: the snapshot writer (a blocking
//	            list of the inventory, a snapshot written at most every 2 s
//	            after a change), the failure detector's health watch, a pass
//	            every resync interval (10 s) and on each change, its status
//	            written after each pass, autopilot's health every 5 s; and
//	            the churn: every -churn, one machine replaced (its record
//	            and its mesh entry rewritten), which wakes its own record
//	            watch, the snapshot and every member's mesh watch.
//
// A failed watch waits as the agent's do: a draw of watch.Retry (full
// jitter from 1 s), and the mesh's read its gap and a draw from [0, gap]
// on top.
//
// The watches start where an agent at rest is: blocked on the current index,
// each's first wait drawn at random within the five minutes, so that the
// waits that end in the window are the steady rate, not a burst.
//
// Not simulated: the consistent read with which an agent checks a stale
// answer older than the one it applied (rare: a server behind the leader
// answering right after a failed query) and its first read of each after
// it starts, the Consul client agents themselves (their gossip and
// anti-entropy; the simulated agents speak HTTP straight to the servers,
// spread over the three as client agents' RPCs are), the join (each new
// agent's first full reads), cluster_change hooks, and ACLs (off here; on a
// real cluster every request also resolves a token). A worker process plays
// at most -per-worker agents, so that the blocking connections of 5,000
// agents (five each) stay under the open-file limit of one process.
package main

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/raptiformica/raptiformica/backends"
	"github.com/raptiformica/raptiformica/internal/clock"
	"github.com/raptiformica/raptiformica/internal/kvschema"
	"github.com/raptiformica/raptiformica/internal/state"
	"github.com/raptiformica/raptiformica/internal/watch"
	"github.com/raptiformica/raptiformica/reconcile"
	"github.com/raptiformica/raptiformica/rules"
)

// The agent's cadences, as the daemon has them (see the package doc).
const (
	watchWait        = 5 * time.Minute
	meshReadGap      = 5 * time.Second
	clientQuorumLook = time.Minute
	serverQuorumLook = time.Second
	serversEvery     = time.Minute
	offerRefresh     = 10 * time.Minute
	sessionRenew     = 5 * time.Second
	lockWait         = 10 * time.Second
	snapshotEvery    = 2 * time.Second
	snapshotChunk    = 384 << 10
	resyncInterval   = 10 * time.Second
	autopilotEvery   = 5 * time.Second
	// meshRetryMax caps the mesh read's jittered retry, as the agent's.
	meshRetryMax = time.Minute
	// callTimeout bounds every non-blocking request; a blocking one gets
	// its wait, Consul's jitter (wait/16) and this on top.
	callTimeout = 10 * time.Second
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "worker" {
		if err := worker(os.Args[2:]); err != nil {
			fmt.Fprintln(os.Stderr, "simulate worker:", err)
			os.Exit(1)
		}
		return
	}
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "simulate:", err)
		os.Exit(1)
	}
}

// stats is what one process measured in the window.
type stats struct {
	// Latencies of the non-blocking requests, in milliseconds.
	Latencies []float64 `json:"latencies"`
	Requests  int64     `json:"requests"`
	Wakes     int64     `json:"wakes"` // blocking queries that returned a change
	// WakesBy counts the wakes by watch: own_record, work, mesh, ...
	WakesBy  map[string]int64 `json:"wakes_by"`
	Bytes    int64            `json:"bytes"` // response bytes read
	Errors   int64            `json:"errors"`
	FirstErr string           `json:"first_error,omitempty"`
}

// recorder collects stats while on is set; mu guards lat, wakesBy and
// firstErr.
type recorder struct {
	on                              atomic.Bool
	requests, wakes, bytes, errorsN atomic.Int64
	mu                              sync.Mutex
	lat                             []float64
	wakesBy                         map[string]int64
	firstErr                        string
}

func (r *recorder) wake(kind string) {
	if !r.on.Load() {
		return
	}
	r.wakes.Add(1)
	r.mu.Lock()
	if r.wakesBy == nil {
		r.wakesBy = map[string]int64{}
	}
	r.wakesBy[kind]++
	r.mu.Unlock()
}

const maxSamples = 2_000_000

func (r *recorder) latency(d time.Duration) {
	if !r.on.Load() {
		return
	}
	r.mu.Lock()
	if len(r.lat) < maxSamples {
		r.lat = append(r.lat, float64(d.Microseconds())/1000)
	}
	r.mu.Unlock()
}

func (r *recorder) fail(err error) {
	if !r.on.Load() {
		return
	}
	r.errorsN.Add(1)
	r.mu.Lock()
	if r.firstErr == "" {
		r.firstErr = err.Error()
	}
	r.mu.Unlock()
}

func (r *recorder) snapshot() stats {
	r.mu.Lock()
	defer r.mu.Unlock()
	by := map[string]int64{}
	for k, v := range r.wakesBy {
		by[k] = v
	}
	return stats{Latencies: slices.Clone(r.lat), Requests: r.requests.Load(), Wakes: r.wakes.Load(), WakesBy: by, Bytes: r.bytes.Load(), Errors: r.errorsN.Load(), FirstErr: r.firstErr}
}

// client speaks Consul's HTTP API to the servers, counting what it does.
type client struct {
	http    *http.Client
	servers []string // host:port of each server's HTTP API
	rec     *recorder
}

func newClient(servers []string, rec *recorder) *client {
	tr := &http.Transport{
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
		MaxIdleConns:        4096,
		MaxIdleConnsPerHost: 4096,
		IdleConnTimeout:     90 * time.Second,
	}
	return &client{http: &http.Client{Transport: tr}, servers: servers, rec: rec}
}

// do makes one request to server s and returns the index Consul answered
// with and the body when keep is set (else it is read and dropped). A
// blocking request is not timed: its latency is its wait.
func (c *client) do(ctx context.Context, s int, method, path string, body []byte, blocking, keep bool) (uint64, []byte, error) {
	timeout := callTimeout
	if blocking {
		timeout += watchWait + watchWait/16
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://"+c.servers[s%len(c.servers)]+path, rd)
	if err != nil {
		return 0, nil, err
	}
	start := time.Now()
	resp, err := c.http.Do(req)
	if err != nil {
		if ctx.Err() == nil || !errors.Is(ctx.Err(), context.Canceled) {
			c.rec.fail(err)
		}
		return 0, nil, err
	}
	defer resp.Body.Close()
	var out []byte
	var n int64
	if keep {
		out, err = io.ReadAll(io.LimitReader(resp.Body, 64<<20))
		n = int64(len(out))
	} else {
		n, err = io.Copy(io.Discard, resp.Body)
	}
	if c.rec.on.Load() {
		c.rec.requests.Add(1)
		c.rec.bytes.Add(n)
	}
	if err != nil {
		c.rec.fail(err)
		return 0, nil, err
	}
	if !blocking {
		c.rec.latency(time.Since(start))
	}
	if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusNotFound {
		err := fmt.Errorf("%s %s: %s: %s", method, path, resp.Status, bytes.TrimSpace(out))
		c.rec.fail(err)
		return 0, nil, err
	}
	index, _ := strconv.ParseUint(resp.Header.Get("X-Consul-Index"), 10, 64)
	return index, out, nil
}

// kvIndex is the KV table's index: a read of a key that does not exist
// answers with it, and a watch started there blocks, as an agent at rest
// does.
func (c *client) kvIndex(ctx context.Context) (uint64, error) {
	index, _, err := c.do(ctx, 0, http.MethodGet, "/v1/kv/raptiformica/simulate-missing", nil, false, false)
	return index, err
}

// watch runs a blocking query on path from index until ctx ends, calling
// changed after each answer with a new index. gap is the least time
// between two reads; the first wait is drawn at random within watchWait.
func (c *client) watch(ctx context.Context, kind string, s int, path string, stale bool, index uint64, gap time.Duration, changed func(body []byte)) {
	sep := "?"
	if strings.Contains(path, "?") {
		sep = "&"
	}
	wait := time.Duration(1+rand.Int64N(int64(watchWait/time.Second))) * time.Second
	first := true
	retry, failures := watch.Retry, 0
	if gap > 0 {
		retry = meshRetry
	}
	for ctx.Err() == nil {
		started := time.Now()
		q := fmt.Sprintf("%s%sindex=%d&wait=%ds", path, sep, index, int(wait/time.Second))
		if stale {
			q += "&stale"
		}
		next, body, err := c.do(ctx, s, http.MethodGet, q, nil, true, changed != nil)
		wait = watchWait
		switch {
		case err != nil:
			index = 0
			failures++
			sleep(ctx, max(gap-time.Since(started), 0)+retry.Delay(failures))
			continue
		case first && next < index:
			// The folder's own index, below the table's it started
			// from: what an agent at rest would hold.
			index = next
		case next < index:
			index = 0
		case next == index:
		default:
			index = next
			c.rec.wake(kind)
			if changed != nil {
				changed(body)
			}
		}
		first, failures = false, 0
		if rest := gap - time.Since(started); rest > 0 {
			sleep(ctx, rest)
		}
	}
}

// meshRetry is the mesh read's draw after a failure, as the agent's.
var meshRetry = clock.Backoff{Initial: meshReadGap, Max: meshRetryMax, Spread: 1}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// every calls f every d until ctx ends, the first time after a random part
// of d so that N agents do not tick together.
func every(ctx context.Context, d time.Duration, f func()) {
	sleep(ctx, time.Duration(rand.Int64N(int64(d))))
	for ctx.Err() == nil {
		f()
		sleep(ctx, d)
	}
}

func workerID(i int) string { return fmt.Sprintf("sim-%05d", i) }
func serverID(i int) string { return fmt.Sprintf("srv-%d", i) }

// clientAgent plays agent i, a Consul client, until ctx ends.
func clientAgent(ctx context.Context, c *client, i int, index uint64) {
	id, s := workerID(i), i%len(c.servers)
	var wg sync.WaitGroup
	goWatch := func(kind, path string, stale bool, gap time.Duration, changed func([]byte)) {
		wg.Add(1)
		go func() { defer wg.Done(); c.watch(ctx, kind, s, path, stale, index, gap, changed) }()
	}
	var asked time.Time
	goWatch("own_record", "/v1/kv/"+kvschema.Inventory+id, true, 0, func([]byte) {
		if time.Since(asked) >= serversEvery {
			asked = time.Now()
			_, _, _ = c.do(ctx, s, http.MethodGet, "/v1/status/peers?stale", nil, false, false)
		}
	})
	goWatch("description", "/v1/kv/"+kvschema.Platform, true, 0, nil)
	goWatch("modules", "/v1/kv/"+kvschema.Modules, true, 0, nil)
	goWatch("work", "/v1/kv/"+kvschema.Work+id+"/?recurse", false, 0, nil)
	goWatch("mesh", "/v1/kv/"+kvschema.Prefix+"mesh/?recurse", true, meshReadGap, nil)
	wg.Add(2)
	go func() {
		defer wg.Done()
		every(ctx, clientQuorumLook, func() { _, _, _ = c.do(ctx, s, http.MethodGet, "/v1/status/leader", nil, false, false) })
	}()
	go func() {
		defer wg.Done()
		every(ctx, offerRefresh, func() { _, _, _ = c.do(ctx, s, http.MethodPut, "/v1/txn", offerTxn(id), false, false) })
	}()
	wg.Wait()
}

func offerTxn(id string) []byte {
	b, _ := json.Marshal([]map[string]any{{"KV": map[string]any{"Verb": "set", "Key": kvschema.Offers + id, "Value": offerValue(id)}}})
	return b
}

// worker runs agents [from, to) against the servers for warmup+window, and
// prints what it measured in the window as JSON.
func worker(args []string) error {
	fs := flag.NewFlagSet("worker", flag.ContinueOnError)
	from := fs.Int("from", 0, "first agent")
	to := fs.Int("to", 0, "one past the last agent")
	servers := fs.String("servers", "", "the servers' HTTP addresses, comma-separated")
	warmup := fs.Duration("warmup", 10*time.Second, "")
	window := fs.Duration("window", time.Minute, "")
	if err := fs.Parse(args); err != nil {
		return err
	}
	raiseFileLimit()
	rec := &recorder{}
	c := newClient(strings.Split(*servers, ","), rec)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	index, err := c.kvIndex(ctx)
	if err != nil {
		return err
	}
	var wg sync.WaitGroup
	for i := *from; i < *to; i++ {
		wg.Add(1)
		go func() { defer wg.Done(); clientAgent(ctx, c, i, index) }()
	}
	time.Sleep(*warmup)
	rec.on.Store(true)
	time.Sleep(*window)
	rec.on.Store(false)
	out := rec.snapshot()
	cancel()
	wg.Wait()
	return json.NewEncoder(os.Stdout).Encode(out)
}

// fileLimit is this process's open-file limit (its children inherit it).
func fileLimit() int {
	var l syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l) != nil || l.Cur > 1<<20 {
		return 1 << 20
	}
	return int(l.Cur)
}

func raiseFileLimit() {
	var l syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l) == nil {
		l.Cur = l.Max
		_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &l)
	}
}

// A record, a mesh entry and an offer, as an agent's would look.
var created = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func recordValue(id, typ string, updated time.Time) []byte {
	b, _ := json.Marshal(reconcile.Record{ID: id, Type: typ, Backend: "local", State: reconcile.StateJoined,
		Address: "10.0.0.1", Addresses: []string{"10.0.0.1", "fd00::1"}, Created: created, Updated: updated})
	return b
}

func meshValue(id string, key int) []byte {
	b, _ := json.Marshal(map[string]any{"machine_id": id, "key": fmt.Sprintf("%064x", key), "address": "200:1234:5678::1",
		"endpoints": []string{"10.0.0.1:7400"}, "listen_secret": "0123456789abcdef", "dial_secrets": []string{"0123456789abcdef"}})
	return b
}

func offerValue(id string) []byte {
	b, _ := json.Marshal(state.Offer{Machine: id, Backends: map[string]state.BackendOffer{"local": {Available: true}}, Checked: created})
	return b
}

func description(n int) string {
	return fmt.Sprintf(`machine "server" {
  min = 3
  consul_server = true
  backends = ["local"]
}
machine "worker" {
  min = %d
  backends = ["local"]
}
`, n)
}

// seed writes the state of a cluster of n workers (records, mesh entries,
// offers) for the workers not yet written, from have on.
func seed(ctx context.Context, kv *api.KV, have, n int, workEntries bool) error {
	var ops api.KVTxnOps
	flush := func() error {
		if len(ops) == 0 {
			return nil
		}
		ok, resp, _, err := kv.Txn(ops, (&api.QueryOptions{}).WithContext(ctx))
		if err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("seed transaction refused: %v", resp.Errors)
		}
		ops = ops[:0]
		return nil
	}
	for i := have; i < n; i++ {
		id := workerID(i)
		ops = append(ops,
			&api.KVTxnOp{Verb: api.KVSet, Key: kvschema.Inventory + id, Value: recordValue(id, "worker", created)},
			&api.KVTxnOp{Verb: api.KVSet, Key: kvschema.MeshNodes + id, Value: meshValue(id, i)},
			&api.KVTxnOp{Verb: api.KVSet, Key: kvschema.Offers + id, Value: offerValue(id)})
		if workEntries {
			ops = append(ops, &api.KVTxnOp{Verb: api.KVSet, Key: kvschema.Work + id + "/simulate", Value: []byte("{}")})
		}
		if len(ops) >= kvschema.MaxTxnOps-4 {
			if err := flush(); err != nil {
				return err
			}
		}
	}
	return flush()
}

// consulServer is one of the three.
type consulServer struct {
	ip, dir string
	cmd     *exec.Cmd
}

func (s *consulServer) http() string { return s.ip + ":8500" }

// startCluster starts three Consul servers on free loopback addresses.
func startCluster(bin, dir string) ([]*consulServer, error) {
	var ips []string
	base := fmt.Sprintf("127.%d.%d.", 16+rand.IntN(224), rand.IntN(256))
	for len(ips) < 3 {
		ip := base + strconv.Itoa(2+len(ips)+10*rand.IntN(20))
		if slices.Contains(ips, ip) {
			continue
		}
		ln, err := net.Listen("tcp", ip+":8500")
		if err != nil {
			continue
		}
		ln.Close()
		ips = append(ips, ip)
	}
	var out []*consulServer
	for i, ip := range ips {
		d := filepath.Join(dir, serverID(i))
		if err := os.MkdirAll(d, 0o700); err != nil {
			return out, err
		}
		// The agent's own server settings that bear on load: ACLs are off
		// here (see the package doc); the connection cap is lifted because
		// every simulated agent's requests come from one address.
		// (Consul wants the open-file limit above the cap.) Consul's own
		// Raft timings, as the agent keeps them for a description of more
		// than nodeconfig.FastGossipMax machines.
		cfg := fmt.Sprintf(`limits { http_max_conns_per_client = %d }
disable_update_check = true
ports { dns = -1, grpc = -1, serf_wan = -1 }
`, fileLimit()-100)
		if err := os.WriteFile(filepath.Join(d, "sim.hcl"), []byte(cfg), 0o600); err != nil {
			return out, err
		}
		args := []string{"agent", "-server", "-bootstrap-expect", "3", "-node", serverID(i), "-bind", ip, "-client", ip,
			"-data-dir", filepath.Join(d, "data"), "-config-file", filepath.Join(d, "sim.hcl"), "-log-level", "warn"}
		for _, other := range ips {
			if other != ip {
				args = append(args, "-retry-join", other)
			}
		}
		cmd := exec.Command(bin, args...)
		logf, err := os.Create(filepath.Join(d, "consul.log"))
		if err != nil {
			return out, err
		}
		cmd.Stdout, cmd.Stderr = logf, logf
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := cmd.Start(); err != nil {
			return out, err
		}
		out = append(out, &consulServer{ip: ip, dir: d, cmd: cmd})
	}
	return out, nil
}

func stopCluster(servers []*consulServer) {
	for _, s := range servers {
		if s.cmd.Process != nil {
			_ = s.cmd.Process.Kill()
			_ = s.cmd.Wait()
		}
	}
}

// cpuTicks is a process's user and system time, in clock ticks.
func cpuTicks(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: %d fields after the name", pid, len(f))
	}
	u, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	return u + st, errors.Join(err1, err2)
}

// rssMB is a process's resident memory.
func rssMB(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, _ := strconv.ParseFloat(f[1], 64)
			return kb / 1024
		}
	}
	return 0
}

// clkTck is Linux's USER_HZ, which /proc reports times in.
const clkTck = 100

// phase is one measured window: the floor (n = 0) or n agents.
type phase struct {
	n                  int
	leaderCPU, allCPU  float64 // percent of one core
	simCPU             float64 // the load generator's processes
	leaderRSS          float64
	probeRead          []float64
	probeWrite         []float64
	sim                stats
	observe, plan      []float64
	snapshots, churned int
	window             time.Duration
}

// probeKey is outside the agents' folders, so that the probe's own
// writes wake none of their watches.
const probeKey = "simulate/probe"

// probe reads and writes the KV a few times a second through the leader
// server, the same in every phase, and keeps the latencies while on.
func probe(ctx context.Context, kv *api.KV, on *atomic.Bool, reads, writes *[]float64, mu *sync.Mutex) {
	every(ctx, 200*time.Millisecond, func() {
		cctx, cancel := context.WithTimeout(ctx, callTimeout)
		defer cancel()
		start := time.Now()
		_, _, rerr := kv.Get(kvschema.Epoch, (&api.QueryOptions{RequireConsistent: true}).WithContext(cctx))
		read := time.Since(start)
		start = time.Now()
		_, werr := kv.Put(&api.KVPair{Key: probeKey, Value: []byte(start.String())}, (&api.WriteOptions{}).WithContext(cctx))
		write := time.Since(start)
		if !on.Load() || ctx.Err() != nil {
			return
		}
		mu.Lock()
		defer mu.Unlock()
		if rerr == nil {
			*reads = append(*reads, float64(read.Microseconds())/1000)
		}
		if werr == nil {
			*writes = append(*writes, float64(write.Microseconds())/1000)
		}
	})
}

func run(args []string) error {
	fs := flag.NewFlagSet("simulate", flag.ContinueOnError)
	bin := fs.String("consul", os.Getenv("RAPTIFORMICA_CONSUL"), "the Consul binary (default $RAPTIFORMICA_CONSUL)")
	agentsFlag := fs.String("agents", "1000,5000", "the cluster sizes to simulate, comma-separated")
	window := fs.Duration("window", time.Minute, "how long each size is measured")
	warmup := fs.Duration("warmup", 15*time.Second, "how long the agents run before the window")
	churn := fs.Duration("churn", 15*time.Second, "one machine replaced this often (0: none)")
	perWorker := fs.Int("per-worker", 2500, "agents per worker process")
	keep := fs.Bool("keep", false, "keep the servers' folders and logs")
	workEntries := fs.Bool("work-entries", true, "give each agent's work-order folder its anchor key, as the agent does (false: the empty folder of agents before the anchor, whose watch wakes on every KV write)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *bin == "" {
		return errors.New("no Consul: set RAPTIFORMICA_CONSUL or pass -consul")
	}
	var sizes []int
	for _, f := range strings.Split(*agentsFlag, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 {
			return fmt.Errorf("-agents: %q is not a positive number", f)
		}
		sizes = append(sizes, n)
	}
	sort.Ints(sizes)
	raiseFileLimit()
	self, err := os.Executable()
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "simulate")
	if err != nil {
		return err
	}
	defer func() {
		if *keep {
			fmt.Printf("(the servers' folders and logs are kept in %s)\n", dir)
			return
		}
		os.RemoveAll(dir)
	}()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	servers, err := startCluster(*bin, dir)
	defer stopCluster(servers)
	if err != nil {
		return err
	}
	var addrs []string
	for _, s := range servers {
		addrs = append(addrs, s.http())
	}
	leaderIdx, cl, err := waitLeader(ctx, servers)
	if err != nil {
		return err
	}
	leader := servers[leaderIdx]
	fmt.Printf("simulate: 3 Consul servers (%s) on %s; the Raft leader is %s; ACLs off; agents speak HTTP straight to the servers\n",
		consulVersion(*bin), strings.Join(addrs, " "), serverID(leaderIdx))
	kv := cl.KV()
	store := kvschema.New(cl)
	base := map[string]string{kvschema.Epoch: "1", kvschema.Modules: "[]", kvschema.MeshSecret: "simulated-secret"}
	for i := range servers {
		if *workEntries {
			base[kvschema.Work+serverID(i)+"/simulate"] = "{}"
		}
	}
	for k, v := range base {
		if _, err := kv.Put(&api.KVPair{Key: k, Value: []byte(v)}, (&api.WriteOptions{}).WithContext(ctx)); err != nil {
			return fmt.Errorf("seed %s: %w", k, err)
		}
	}

	// The probe runs through every phase; on says when its samples count.
	var probeOn atomic.Bool
	var probeMu sync.Mutex
	var reads, writes []float64
	pctx, pcancel := context.WithCancel(ctx)
	defer pcancel()
	go probe(pctx, kv, &probeOn, &reads, &writes, &probeMu)

	measure := func(n int, during func(context.Context, *recorder) (func() phase, error)) (phase, error) {
		ph := phase{n: n, window: *window}
		rec := &recorder{}
		phaseCtx, cancel := context.WithCancel(ctx)
		defer cancel()
		finish, err := during(phaseCtx, rec)
		if err != nil {
			return ph, err
		}
		sleep(ctx, *warmup)
		probeMu.Lock()
		reads, writes = nil, nil
		probeMu.Unlock()
		probeOn.Store(true)
		rec.on.Store(true)
		lt0, _ := cpuTicks(leader.cmd.Process.Pid)
		var all0 int64
		for _, s := range servers {
			t, _ := cpuTicks(s.cmd.Process.Pid)
			all0 += t
		}
		self0, _ := cpuTicks(os.Getpid())
		sleep(ctx, *window)
		lt1, _ := cpuTicks(leader.cmd.Process.Pid)
		var all1 int64
		for _, s := range servers {
			t, _ := cpuTicks(s.cmd.Process.Pid)
			all1 += t
		}
		self1, _ := cpuTicks(os.Getpid())
		probeOn.Store(false)
		rec.on.Store(false)
		secs := window.Seconds()
		ph.leaderCPU = float64(lt1-lt0) / clkTck / secs * 100
		ph.allCPU = float64(all1-all0) / clkTck / secs * 100
		ph.simCPU = float64(self1-self0) / clkTck / secs * 100
		ph.leaderRSS = rssMB(leader.cmd.Process.Pid)
		probeMu.Lock()
		ph.probeRead, ph.probeWrite = slices.Clone(reads), slices.Clone(writes)
		probeMu.Unlock()
		if finish != nil {
			more := finish()
			ph.sim, ph.observe, ph.plan, ph.snapshots, ph.churned = more.sim, more.observe, more.plan, more.snapshots, more.churned
			ph.simCPU += more.simCPU
		}
		ph.sim = merge(ph.sim, rec.snapshot())
		if ctx.Err() != nil {
			return ph, ctx.Err()
		}
		return ph, nil
	}

	floor, err := measure(0, func(context.Context, *recorder) (func() phase, error) { return nil, nil })
	if err != nil {
		return err
	}
	printPhase(floor, floor)
	have := 0
	for _, n := range sizes {
		start := time.Now()
		if err := seed(ctx, kv, have, n, *workEntries); err != nil {
			return fmt.Errorf("seed %d machines: %w", n, err)
		}
		have = n
		src := description(n)
		if _, err := kv.Put(&api.KVPair{Key: kvschema.Platform, Value: []byte(src), Flags: 1}, (&api.WriteOptions{}).WithContext(ctx)); err != nil {
			return err
		}
		fmt.Printf("  (%d machines' records, mesh entries and offers written in %s)\n", n, time.Since(start).Round(time.Millisecond))
		p, err := rules.Parse("simulate.hcl", []byte(src), rules.Options{BackendTypes: []string{"local"}})
		if err != nil {
			return fmt.Errorf("the simulated description: %w", err)
		}
		ph, err := measure(n, func(pctx context.Context, rec *recorder) (func() phase, error) {
			return startLoad(pctx, self, addrs, leaderIdx, store, cl, p, n, *perWorker, *warmup, *window, *churn, rec)
		})
		if err != nil {
			return err
		}
		printPhase(ph, floor)
	}
	return nil
}

func waitLeader(ctx context.Context, servers []*consulServer) (int, *api.Client, error) {
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		cfg := api.DefaultConfig()
		cfg.Address, cfg.Token = servers[0].http(), ""
		c, err := api.NewClient(cfg)
		if err != nil {
			return 0, nil, err
		}
		if l, err := c.Status().Leader(); err == nil && l != "" {
			host, _, _ := net.SplitHostPort(l)
			for i, s := range servers {
				if s.ip == host {
					cfg.Address = s.http()
					lc, err := api.NewClient(cfg)
					return i, lc, err
				}
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	var logs []string
	for _, s := range servers {
		b, _ := os.ReadFile(filepath.Join(s.dir, "consul.log"))
		logs = append(logs, string(b))
	}
	return 0, nil, fmt.Errorf("the three servers elected no leader in 60s:\n%s", strings.Join(logs, "\n"))
}

func consulVersion(bin string) string {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, "version").Output()
	if err != nil {
		return "consul"
	}
	return strings.TrimSpace(strings.SplitN(string(out), "\n", 2)[0])
}

// startLoad starts the worker processes, the three servers' traffic and the
// leader's, and returns what gathers their figures once the window ended.
func startLoad(ctx context.Context, self string, addrs []string, leaderIdx int, store *kvschema.Store, cl *api.Client, p *rules.Platform,
	n, perWorker int, warmup, window, churn time.Duration, rec *recorder) (func() phase, error) {
	type proc struct {
		cmd *exec.Cmd
		out *bytes.Buffer
	}
	var procs []proc
	for from := 0; from < n; from += perWorker {
		to := min(from+perWorker, n)
		cmd := exec.CommandContext(ctx, self, "worker", "-from", strconv.Itoa(from), "-to", strconv.Itoa(to),
			"-servers", strings.Join(addrs, ","), "-warmup", warmup.String(), "-window", window.String())
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, os.Stderr
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := cmd.Start(); err != nil {
			return nil, err
		}
		procs = append(procs, proc{cmd, &out})
	}
	c := newClient(addrs, rec)
	index, err := c.kvIndex(ctx)
	if err != nil {
		return nil, err
	}
	for i := range addrs {
		go serverAgent(ctx, c, i, leaderIdx, index)
	}
	l := &leaderSim{c: c, s: leaderIdx, store: store, consul: cl, platform: p, n: n, rec: rec}
	go l.run(ctx, churn)
	return func() phase {
		var ph phase
		var ticks int64
		for _, pr := range procs {
			var st stats
			err := pr.cmd.Wait()
			if ps := pr.cmd.ProcessState; ps != nil {
				ticks += int64((ps.UserTime() + ps.SystemTime()) / (time.Second / clkTck))
			}
			if err == nil {
				err = json.Unmarshal(pr.out.Bytes(), &st)
			}
			if err != nil {
				st.Errors, st.FirstErr = 1, fmt.Sprintf("worker: %v", err)
			}
			ph.sim = merge(ph.sim, st)
		}
		// The workers' time covers their warmup too: scaled to the window.
		ph.simCPU = float64(ticks) / clkTck / (warmup + window).Seconds() * 100
		l.mu.Lock()
		ph.observe, ph.plan, ph.snapshots, ph.churned = slices.Clone(l.observe), slices.Clone(l.plan), l.snapshots, l.churned
		l.mu.Unlock()
		return ph
	}, nil
}

func merge(a, b stats) stats {
	a.Latencies = append(a.Latencies, b.Latencies...)
	a.Requests += b.Requests
	a.Wakes += b.Wakes
	if a.WakesBy == nil {
		a.WakesBy = map[string]int64{}
	}
	for k, v := range b.WakesBy {
		a.WakesBy[k] += v
	}
	a.Bytes += b.Bytes
	a.Errors += b.Errors
	if a.FirstErr == "" {
		a.FirstErr = b.FirstErr
	}
	return a
}

// serverAgent plays server i's agent until ctx ends.
func serverAgent(ctx context.Context, c *client, i, holder int, index uint64) {
	id := serverID(i)
	go c.watch(ctx, "snapshot", i, "/v1/kv/"+kvschema.InventorySnapshot, true, index, 0, func(body []byte) {
		var pairs []struct{ Value []byte }
		var head struct {
			Version string `json:"version"`
			Chunks  int    `json:"chunks"`
		}
		if json.Unmarshal(body, &pairs) != nil || len(pairs) != 1 || json.Unmarshal(pairs[0].Value, &head) != nil {
			return
		}
		for n := range head.Chunks {
			_, _, _ = c.do(ctx, i, http.MethodGet, fmt.Sprintf("/v1/kv/%s%s/%d?stale", kvschema.InventorySnapshotChunks, head.Version, n), nil, false, false)
		}
	})
	// The lock holder reads the description and the modules from the
	// Raft leader (consistent reads): it plans with them.
	consistent, stale := "", i != holder
	if !stale {
		consistent = "?consistent"
	}
	go c.watch(ctx, "description", i, "/v1/kv/"+kvschema.Platform+consistent, stale, index, 0, nil)
	go c.watch(ctx, "modules", i, "/v1/kv/"+kvschema.Modules+consistent, stale, index, 0, nil)
	go c.watch(ctx, "work", i, "/v1/kv/"+kvschema.Work+id+"/?recurse", false, index, 0, nil)
	var meshChanged func([]byte)
	if i == holder {
		// The leader's mesh sync lists the inventory on each read of
		// the mesh's folder, to prune and add entries.
		meshChanged = func([]byte) {
			_, _, _ = c.do(ctx, i, http.MethodGet, "/v1/kv/"+kvschema.Inventory+"?recurse&stale", nil, false, false)
		}
	}
	go c.watch(ctx, "mesh", i, "/v1/kv/"+kvschema.Prefix+"mesh/?recurse", true, index, meshReadGap, meshChanged)
	go every(ctx, serverQuorumLook, func() { _, _, _ = c.do(ctx, i, http.MethodGet, "/v1/status/leader", nil, false, false) })
	// The campaign: a session each; the holder renews, the others wait
	// on the lock key.
	_, body, err := c.do(ctx, i, http.MethodPut, "/v1/session/create", []byte(`{"TTL":"10s","LockDelay":"1s","Behavior":"release"}`), false, true)
	if err != nil {
		return
	}
	var sess struct{ ID string }
	_ = json.Unmarshal(body, &sess)
	if i == holder {
		_, _, _ = c.do(ctx, i, http.MethodPut, "/v1/kv/"+kvschema.Leader+"?acquire="+sess.ID, []byte(id), false, false)
		every(ctx, sessionRenew, func() { _, _, _ = c.do(ctx, i, http.MethodPut, "/v1/session/renew/"+sess.ID, nil, false, false) })
		return
	}
	go every(ctx, sessionRenew, func() { _, _, _ = c.do(ctx, i, http.MethodPut, "/v1/session/renew/"+sess.ID, nil, false, false) })
	var li uint64
	for ctx.Err() == nil {
		next, _, err := c.do(ctx, i, http.MethodGet, fmt.Sprintf("/v1/kv/%s?index=%d&wait=%ds", kvschema.Leader, li, int(lockWait/time.Second)), nil, true, false)
		if err != nil {
			sleep(ctx, time.Second)
			continue
		}
		li = next
	}
}

// leaderSim is the raptiformica leader's traffic, on the Raft leader's
// server; mu guards the figures.
type leaderSim struct {
	c        *client
	s        int
	store    *kvschema.Store
	consul   *api.Client
	platform *rules.Platform
	n        int
	rec      *recorder

	mu                 sync.Mutex
	observe, plan      []float64
	snapshots, churned int
}

func (l *leaderSim) run(ctx context.Context, churn time.Duration) {
	wake := make(chan struct{}, 1)
	poke := func() {
		select {
		case wake <- struct{}{}:
		default:
		}
	}
	index, _ := l.c.kvIndex(ctx)
	go l.snapshotter(ctx)
	go l.c.watch(ctx, "leader_health", l.s, "/v1/health/state/any?filter="+urlQuery(`CheckID == "serfHealth"`), false, index, 0, func([]byte) { poke() })
	go l.c.watch(ctx, "leader_inventory", l.s, "/v1/kv/"+kvschema.Inventory+"?recurse", false, index, 0, func([]byte) { poke() })
	go every(ctx, autopilotEvery, func() { _, _, _ = l.c.do(ctx, l.s, http.MethodGet, "/v1/operator/autopilot/health", nil, false, false) })
	if churn > 0 {
		go every(ctx, churn, func() { l.replace(ctx) })
	}
	for ctx.Err() == nil {
		l.pass(ctx)
		t := time.NewTimer(resyncInterval)
		select {
		case <-ctx.Done():
		case <-wake:
		case <-t.C:
		}
		t.Stop()
	}
}

func urlQuery(s string) string {
	r := strings.NewReplacer(" ", "%20", `"`, "%22", "=", "%3D")
	return r.Replace(s)
}

// pass observes as the leader does (the inventory, the members, the
// offers, from the real Consul) and plans over N members. The simulated
// agents are not Consul members: they are added to the observation as
// alive, with a running instance each, as a cluster at rest has them.
func (l *leaderSim) pass(ctx context.Context) {
	inv := &reconcile.Inventory{Store: l.store}
	start := time.Now()
	obs, err := reconcile.Observe(ctx, l.consul, inv, map[string]backends.Backend{}, nil, nil)
	observed := time.Since(start)
	if err != nil {
		l.rec.fail(fmt.Errorf("observe: %w", err))
		return
	}
	obs.Instances = map[string]map[string]backends.Instance{"local": {}}
	for id, r := range obs.Records {
		if _, ok := obs.Members[id]; !ok {
			obs.Members[id] = reconcile.Member{Name: id, Status: state.MemberAlive, Type: r.Type}
		}
		obs.Instances["local"][id] = backends.Instance{MachineID: id, MachineType: r.Type, Running: true, Created: created}
	}
	for i := range 3 {
		id := serverID(i)
		if _, ok := obs.Records[id]; !ok {
			obs.Records[id] = reconcile.Record{ID: id, Type: "server", Backend: "local", State: reconcile.StateJoined, Created: created, Updated: created}
			obs.Instances["local"][id] = backends.Instance{MachineID: id, MachineType: "server", Running: true, Created: created}
		}
		m := obs.Members[id]
		m.Type, m.Voter = "server", true
		obs.Members[id] = m
	}
	obs.Self = serverID(l.s)
	start = time.Now()
	d := reconcile.Plan(l.platform, obs, time.Now())
	planned := time.Since(start)
	b, _ := json.Marshal(map[string]any{"last_result": "ok", "duration": (observed + planned).String(), "planned": d.Actions, "waiting": d.Waiting})
	_, _, _ = l.c.do(ctx, l.s, http.MethodPut, "/v1/kv/"+kvschema.Status, b, false, false)
	if !l.rec.on.Load() {
		return
	}
	l.mu.Lock()
	l.observe = append(l.observe, float64(observed.Microseconds())/1000)
	l.plan = append(l.plan, float64(planned.Microseconds())/1000)
	l.mu.Unlock()
}

// snapshotter writes the inventory's snapshot as the leader's does: after
// each change, at most every snapshotEvery.
func (l *leaderSim) snapshotter(ctx context.Context) {
	var index uint64
	for ctx.Err() == nil {
		next, body, err := l.c.do(ctx, l.s, http.MethodGet, fmt.Sprintf("/v1/kv/%s?recurse&index=%d&wait=%ds", kvschema.Inventory, index, int(watchWait/time.Second)), nil, true, true)
		if err != nil || next == index {
			if err != nil {
				sleep(ctx, time.Second)
			}
			continue
		}
		index = next
		var pairs []struct{ Value []byte }
		if json.Unmarshal(body, &pairs) != nil {
			continue
		}
		var recs bytes.Buffer
		recs.WriteByte('[')
		for i, p := range pairs {
			if i > 0 {
				recs.WriteByte(',')
			}
			recs.Write(p.Value)
		}
		recs.WriteByte(']')
		var gz bytes.Buffer
		w := gzip.NewWriter(&gz)
		_, _ = w.Write(recs.Bytes())
		_ = w.Close()
		var chunks [][]byte
		for b := gz.Bytes(); len(b) > 0; {
			k := min(len(b), snapshotChunk)
			chunks = append(chunks, b[:k])
			b = b[k:]
		}
		version := "1-" + strconv.FormatUint(index, 10)
		head, _ := json.Marshal(map[string]any{"version": version, "chunks": len(chunks)})
		_, _, _ = l.c.do(ctx, l.s, http.MethodGet, "/v1/kv/"+kvschema.Epoch, nil, false, false)
		start := time.Now()
		wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		err = l.store.PutInventorySnapshot(wctx, version, head, chunks)
		cancel()
		if err != nil {
			l.rec.fail(fmt.Errorf("snapshot: %w", err))
		} else {
			l.rec.latency(time.Since(start))
			l.mu.Lock()
			if l.rec.on.Load() {
				l.snapshots++
			}
			l.mu.Unlock()
		}
		sleep(ctx, snapshotEvery)
	}
}

// replace plays one machine replaced: its record and its mesh entry
// rewritten (a new machine's key), as a heal leaves them.
func (l *leaderSim) replace(ctx context.Context) {
	i := rand.IntN(l.n)
	id := workerID(i)
	ops, _ := json.Marshal([]map[string]any{
		{"KV": map[string]any{"Verb": "set", "Key": kvschema.Inventory + id, "Value": recordValue(id, "worker", time.Now().UTC())}},
	})
	_, _, err1 := l.c.do(ctx, l.s, http.MethodPut, "/v1/txn", ops, false, false)
	_, _, err2 := l.c.do(ctx, i, http.MethodPut, "/v1/kv/"+kvschema.MeshNodes+id, meshValue(id, rand.Int()), false, false)
	if err1 == nil && err2 == nil && l.rec.on.Load() {
		l.mu.Lock()
		l.churned++
		l.mu.Unlock()
	}
}

func pct(xs []float64, p float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	sort.Float64s(s)
	return s[min(len(s)-1, int(p*float64(len(s))))]
}

// pcts is "p50 / p99 ms" of xs, or says that nothing answered.
func pcts(xs []float64, hi float64) string {
	if len(xs) == 0 {
		return "none answered"
	}
	return fmt.Sprintf("%.2f / %.2f ms", pct(xs, .5), pct(xs, hi))
}

func printPhase(ph, floor phase) {
	secs := ph.window.Seconds()
	if ph.n == 0 {
		fmt.Printf("floor: the same 3 servers, no simulated traffic, %s window\n", ph.window)
		fmt.Printf("  %-34s %8.1f %%\n", "leader_cpu", ph.leaderCPU)
		fmt.Printf("  %-34s %8.1f %%\n", "servers_cpu (3)", ph.allCPU)
		fmt.Printf("  %-34s %8.0f MB\n", "leader_rss", ph.leaderRSS)
		fmt.Printf("  %-34s %s\n", "probe_read p50/p99", pcts(ph.probeRead, .99))
		fmt.Printf("  %-34s %s\n", "probe_write p50/p99", pcts(ph.probeWrite, .99))
		return
	}
	fmt.Printf("N=%d agents (+3 servers, one leading), %s window, one machine replaced every churn interval (%d in the window)\n", ph.n, ph.window, ph.churned)
	fmt.Printf("  %-34s %8.1f %%   floor %.1f %%   per agent %.4f %%\n", "leader_cpu", ph.leaderCPU, floor.leaderCPU, (ph.leaderCPU-floor.leaderCPU)/float64(ph.n))
	fmt.Printf("  %-34s %8.1f %%   floor %.1f %%\n", "servers_cpu (3)", ph.allCPU, floor.allCPU)
	fmt.Printf("  %-34s %8.0f MB  floor %.0f MB\n", "leader_rss", ph.leaderRSS, floor.leaderRSS)
	fmt.Printf("  %-34s %s   floor %s   (%d answered)\n", "probe_read p50/p99", pcts(ph.probeRead, .99), pcts(floor.probeRead, .99), len(ph.probeRead))
	fmt.Printf("  %-34s %s   floor %s   (%d answered)\n", "probe_write p50/p99", pcts(ph.probeWrite, .99), pcts(floor.probeWrite, .99), len(ph.probeWrite))
	fmt.Printf("  %-34s %s   (%d requests)\n", "sim_request p50/p99", pcts(ph.sim.Latencies, .99), len(ph.sim.Latencies))
	fmt.Printf("  %-34s %8.1f /s   per agent %.3f /s\n", "sim_requests", float64(ph.sim.Requests)/secs, float64(ph.sim.Requests)/secs/float64(ph.n))
	var by []string
	for _, k := range slices.Sorted(maps.Keys(ph.sim.WakesBy)) {
		by = append(by, fmt.Sprintf("%s %.1f", k, float64(ph.sim.WakesBy[k])/secs))
	}
	fmt.Printf("  %-34s %8.1f /s   (%s)\n", "watch_wakes", float64(ph.sim.Wakes)/secs, strings.Join(by, ", "))
	fmt.Printf("  %-34s %8.2f MB/s per agent %.1f B/s\n", "bytes_served", float64(ph.sim.Bytes)/secs/1e6, float64(ph.sim.Bytes)/secs/float64(ph.n))
	fmt.Printf("  %-34s %8d\n", "snapshots_written", ph.snapshots)
	fmt.Printf("  %-34s %s   (%d passes)\n", "pass_observe p50/max", pcts(ph.observe, 1), len(ph.observe))
	fmt.Printf("  %-34s %s\n", "pass_plan p50/max", pcts(ph.plan, 1))
	fmt.Printf("  %-34s %8.1f %%   (the load generator, on the same cores)\n", "simulator_cpu", ph.simCPU)
	if ph.sim.Errors > 0 {
		fmt.Printf("  %-34s %8d   first: %s\n", "errors", ph.sim.Errors, ph.sim.FirstErr)
	}
}
