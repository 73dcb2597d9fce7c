package docker

// Tests of Watch against the real Docker engine. The engine holds no images
// and nothing can be pulled: each test builds its own image FROM scratch
// with testdata/idler, a static binary, and removes it at the end with its
// containers. Watch runs on a fake clock, so that a test knows when the
// subscription is open (its resubscription timer is set) and decides when
// the next one starts.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/pprof"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/docker/docker/api/types/build"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/events"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/client"

	"github.com/raptiformica/raptiformica/backends"
	"github.com/raptiformica/raptiformica/internal/clock/clocktest"
	"github.com/raptiformica/raptiformica/internal/nodeconfig"
)

// reportWithin is how long a stop may take to be reported: generous, for
// a machine whose two cores other tests share; the figure is logged.
const reportWithin = 15 * time.Second

// needEngine returns a client of the Docker engine, and skips the test when
// no engine answers.
func needEngine(t *testing.T) *client.Client {
	t.Helper()
	cli, err := client.NewClientWithOpts(client.FromEnv, client.WithAPIVersionNegotiation())
	if err != nil {
		t.Skipf("no Docker client: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := cli.Ping(ctx); err != nil {
		_ = cli.Close()
		t.Skipf("no Docker engine answers: %v", err)
	}
	t.Cleanup(func() { _ = cli.Close() })
	return cli
}

// idlerImage builds an image FROM scratch whose entrypoint is
// testdata/idler, and removes it when the test ends.
func idlerImage(t *testing.T, cli *client.Client) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "idler")
	cmd := exec.Command("go", "build", "-o", bin, "./testdata/idler")
	// Static, and whatever flags the tests run with (-race needs cgo).
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS=")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build testdata/idler: %v\n%s", err, out)
	}
	data, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	tarball, err := tarFiles(map[string]tarEntry{
		"Dockerfile": {data: []byte("FROM scratch\nCOPY idler /idler\nENTRYPOINT [\"/idler\"]\n"), mode: 0o644},
		"idler":      {data: data, mode: 0o755},
	})
	if err != nil {
		t.Fatal(err)
	}
	tag := fmt.Sprintf("raptiformica-watch-idler:%d-%06x", os.Getpid(), rand.IntN(1<<24))
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	resp, err := cli.ImageBuild(ctx, tarball, build.ImageBuildOptions{Tags: []string{tag}, Remove: true, ForceRemove: true})
	if err != nil {
		t.Fatalf("build %s: %v", tag, err)
	}
	out, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	resp.Body.Close()
	if err != nil {
		t.Fatalf("build %s: %v", tag, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if _, err := cli.ImageRemove(ctx, tag, image.RemoveOptions{Force: true, PruneChildren: true}); err != nil {
			t.Errorf("remove image %s: %v", tag, err)
		}
	})
	if _, err := cli.ImageInspect(ctx, tag); err != nil {
		t.Fatalf("build %s: %v\n%s", tag, err, out)
	}
	return tag
}

// uniqueCluster returns a cluster name no other test run uses.
func uniqueCluster() string { return fmt.Sprintf("watch-%06x", rand.IntN(1<<24)) }

// machine describes a container of a test.
type machine struct {
	cluster, id string
	args        []string // the idler's arguments
	memory      int64    // a memory limit in bytes; 0: none
	noStart     bool     // created only
	madeBy      string   // its maker, as Spawn labels it
}

// startMachine creates (and starts, unless m.noStart) a container labelled
// as machine m.id of m.cluster, removed when the test ends, and returns its
// ID.
func startMachine(t *testing.T, cli *client.Client, img string, m machine) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	host := &container.HostConfig{NetworkMode: "none"}
	if m.memory > 0 {
		host.Resources.Memory = m.memory
		host.Resources.MemorySwap = m.memory
	}
	created, err := cli.ContainerCreate(ctx,
		&container.Config{Image: img, Cmd: m.args, Labels: machineLabels(m.cluster, nodeconfig.Config{MachineID: m.id, MadeBy: m.madeBy})},
		host, nil, nil, m.cluster+"-"+m.id)
	if err != nil {
		t.Fatalf("create machine %s of %s: %v", m.id, m.cluster, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		_ = cli.ContainerUnpause(ctx, created.ID)
		if err := cli.ContainerRemove(ctx, created.ID, container.RemoveOptions{Force: true}); err != nil && !strings.Contains(err.Error(), "No such container") {
			t.Errorf("remove machine %s of %s: %v", m.id, m.cluster, err)
		}
	})
	if !m.noStart {
		if err := cli.ContainerStart(ctx, created.ID, container.StartOptions{}); err != nil {
			t.Fatalf("start machine %s of %s: %v", m.id, m.cluster, err)
		}
	}
	return created.ID
}

// watcher returns a docker backend of cluster on a fake clock. socket, if
// set, is the engine's socket.
func watcher(t *testing.T, cluster, socket string) (*Backend, *clocktest.Fake) {
	t.Helper()
	settings := map[string]string{}
	if socket != "" {
		settings["socket"] = socket
	}
	be, err := New(backends.Config{Name: "docker", Settings: settings}, backends.Env{Cluster: cluster})
	if err != nil {
		t.Fatal(err)
	}
	b := be.(*Backend)
	t.Cleanup(func() { _ = b.cli.Close() })
	fake := clocktest.NewFake(time.Now())
	b.clock = fake
	return b, fake
}

// runWatch runs b.Watch until the returned stop is called, which returns
// Watch's error. The machine IDs Watch reports arrive on the channel.
func runWatch(t *testing.T, b *Backend) (<-chan string, func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	reports := make(chan string, 64)
	done := make(chan error, 1)
	go func() {
		done <- b.Watch(ctx, func(id string) {
			select {
			case reports <- id:
			case <-ctx.Done():
			}
		})
	}()
	var once sync.Once
	var err error
	stop := func() error {
		once.Do(func() {
			cancel()
			select {
			case err = <-done:
			case <-time.After(10 * time.Second):
				err = errors.New("Watch did not return within 10s of its context's end")
			}
		})
		return err
	}
	t.Cleanup(func() { _ = stop() })
	return reports, stop
}

// waitSubscribed waits until Watch has the engine's event stream open: it
// sets its resubscription timer only then.
func waitSubscribed(t *testing.T, fake *clocktest.Fake) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for fake.Waiters() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("Watch did not open the engine's event stream within 15s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// expectReport reads reports until want arrives, and fails on any other
// machine ID, or when want does not arrive within reportWithin.
func expectReport(t *testing.T, reports <-chan string, want string) {
	t.Helper()
	timeout := time.After(reportWithin)
	for {
		select {
		case got := <-reports:
			if got != want {
				t.Fatalf("reported machine %q, want %q", got, want)
			}
			return
		case <-timeout:
			t.Fatalf("machine %q not reported within %v", want, reportWithin)
		}
	}
}

// expectQuiet fails if anything is reported within d.
func expectQuiet(t *testing.T, reports <-chan string, d time.Duration) {
	t.Helper()
	select {
	case got := <-reports:
		t.Fatalf("reported machine %q, want nothing", got)
	case <-time.After(d):
	}
}

// eventReaders counts the Docker client's readers of event streams alive
// in this process.
func eventReaders() int {
	var buf bytes.Buffer
	_ = pprof.Lookup("goroutine").WriteTo(&buf, 2)
	return strings.Count(buf.String(), "client.(*Client).Events.func1(")
}

// expectReaders fails unless want readers of event streams are alive
// within a second: a reader that closed its channel may still be on its way
// out for a moment, a leaked one stays.
func expectReaders(t *testing.T, want int) {
	t.Helper()
	deadline := time.Now().Add(time.Second)
	for {
		n := eventReaders()
		if n == want {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("%d readers of the engine's events alive, want %d", n, want)
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestDockerWatchReportsEveryStop: each way a container of the cluster
// stops or goes away is reported once Watch runs, with the container's
// machine ID, within seconds.
func TestDockerWatchReportsEveryStop(t *testing.T) {
	cli := needEngine(t)
	img := idlerImage(t, cli)
	for _, tc := range []struct {
		name string
		m    machine
		act  func(ctx context.Context, id string) error
	}{
		{"killed", machine{}, func(ctx context.Context, id string) error { return cli.ContainerKill(ctx, id, "KILL") }},
		{"stopped", machine{}, func(ctx context.Context, id string) error {
			timeout := 1
			return cli.ContainerStop(ctx, id, container.StopOptions{Timeout: &timeout})
		}},
		{"removed-running", machine{}, func(ctx context.Context, id string) error {
			return cli.ContainerRemove(ctx, id, container.RemoveOptions{Force: true})
		}},
		{"removed-never-started", machine{noStart: true}, func(ctx context.Context, id string) error {
			return cli.ContainerRemove(ctx, id, container.RemoveOptions{Force: true})
		}},
		{"entrypoint-exits", machine{args: []string{"exit", "300"}}, nil},
		{"oom-killed", machine{args: []string{"oom"}, memory: 32 << 20}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cluster := uniqueCluster()
			b, fake := watcher(t, cluster, "")
			reports, stop := runWatch(t, b)
			waitSubscribed(t, fake)
			m := tc.m
			m.cluster, m.id = cluster, tc.name
			start := time.Now()
			id := startMachine(t, cli, img, m)
			if tc.act != nil {
				start = time.Now()
				ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
				defer cancel()
				if err := tc.act(ctx, id); err != nil {
					t.Fatalf("%s: %v", tc.name, err)
				}
			}
			expectReport(t, reports, tc.name)
			t.Logf("machine %s reported %v after the action began (its start, for those that stop themselves)", tc.name, time.Since(start).Round(time.Millisecond))
			if err := stop(); !errors.Is(err, context.Canceled) {
				t.Errorf("Watch returned %v, want %v", err, context.Canceled)
			}
		})
	}
}

// TestDockerWatchIgnoresOtherClustersAndPauses: a container of another
// cluster (whose name starts with this one's) that dies, and a container of
// this cluster that is paused and unpaused, are not reported; a container
// of this cluster killed after them is, and first.
func TestDockerWatchIgnoresOtherClustersAndPauses(t *testing.T) {
	cli := needEngine(t)
	img := idlerImage(t, cli)
	cluster := uniqueCluster()
	b, fake := watcher(t, cluster, "")
	paused := startMachine(t, cli, img, machine{cluster: cluster, id: "paused"})
	sentinel := startMachine(t, cli, img, machine{cluster: cluster, id: "sentinel"})
	other := startMachine(t, cli, img, machine{cluster: cluster + "-other", id: "other"})
	reports, stop := runWatch(t, b)
	waitSubscribed(t, fake)

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := cli.ContainerPause(ctx, paused); err != nil {
		t.Fatal(err)
	}
	if err := cli.ContainerUnpause(ctx, paused); err != nil {
		t.Fatal(err)
	}
	if err := cli.ContainerPause(ctx, paused); err != nil {
		t.Fatal(err)
	}
	if err := cli.ContainerKill(ctx, other, "KILL"); err != nil {
		t.Fatal(err)
	}
	waitC, errC := cli.ContainerWait(ctx, other, container.WaitConditionNotRunning)
	select {
	case <-waitC:
	case err := <-errC:
		t.Fatalf("wait for the other cluster's container: %v", err)
	}
	// The engine sends events in order: whatever it reported of the
	// others comes before the sentinel.
	if err := cli.ContainerKill(ctx, sentinel, "KILL"); err != nil {
		t.Fatal(err)
	}
	expectReport(t, reports, "sentinel")
	expectQuiet(t, reports, time.Second)
	if err := stop(); !errors.Is(err, context.Canceled) {
		t.Errorf("Watch returned %v, want %v", err, context.Canceled)
	}
}

// TestDockerWatchEndsWithItsContext: Watch returns ctx's error at once when
// ctx ends, whether it is opening the engine's stream or reading it, and
// leaves no reader of the stream behind.
func TestDockerWatchEndsWithItsContext(t *testing.T) {
	needEngine(t)
	before := eventReaders()
	for _, tc := range []struct {
		name     string
		openWait bool // cancel once the stream is open; else at once
	}{
		{"while opening", false},
		{"while reading", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, fake := watcher(t, uniqueCluster(), "")
			_, stop := runWatch(t, b)
			if tc.openWait {
				waitSubscribed(t, fake)
			}
			start := time.Now()
			err := stop()
			took := time.Since(start)
			if !errors.Is(err, context.Canceled) {
				t.Fatalf("Watch returned %v, want %v", err, context.Canceled)
			}
			if took > 2*time.Second {
				t.Errorf("Watch took %v to return after its context ended, want under 2s", took)
			}
			t.Logf("Watch returned %v after its context ended", took.Round(time.Microsecond))
			expectReaders(t, before)
		})
	}
}

// socketProxy forwards connections from a unix socket in a fresh folder to
// the engine's socket, until cut is called: then it closes its socket and
// every connection, as an engine that goes away does.
type socketProxy struct {
	path string
	ln   net.Listener

	mu    sync.Mutex // guards conns and cut
	conns []net.Conn
	cut   bool
}

func newSocketProxy(t *testing.T, cli *client.Client) *socketProxy {
	t.Helper()
	target := strings.TrimPrefix(cli.DaemonHost(), "unix://")
	if target == cli.DaemonHost() {
		t.Skipf("the engine is at %s, not on a unix socket: no proxy to cut", cli.DaemonHost())
	}
	// A unix socket's path is short: not under t.TempDir's long name.
	dir, err := os.MkdirTemp("", "rfw")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	p := &socketProxy{path: filepath.Join(dir, "docker.sock")}
	if p.ln, err = net.Listen("unix", p.path); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Cut)
	go func() {
		for {
			c, err := p.ln.Accept()
			if err != nil {
				return
			}
			up, err := net.DialTimeout("unix", target, 5*time.Second)
			if err != nil {
				_ = c.Close()
				continue
			}
			p.mu.Lock()
			if p.cut {
				p.mu.Unlock()
				_ = c.Close()
				_ = up.Close()
				return
			}
			p.conns = append(p.conns, c, up)
			p.mu.Unlock()
			go func() { _, _ = io.Copy(up, c); _ = up.Close() }()
			go func() { _, _ = io.Copy(c, up); _ = c.Close() }()
		}
	}()
	return p
}

// Cut closes the proxy's socket and every connection through it.
func (p *socketProxy) Cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = true
	_ = p.ln.Close()
	for _, c := range p.conns {
		_ = c.Close()
	}
}

// TestDockerWatchFailsWhenTheEngineGoesAway: when the engine's socket goes
// away under an open stream, Watch returns an error that names the cluster,
// at once and not ctx's, and leaves no reader of the stream behind; the
// caller tries again.
func TestDockerWatchFailsWhenTheEngineGoesAway(t *testing.T) {
	cli := needEngine(t)
	img := idlerImage(t, cli)
	proxy := newSocketProxy(t, cli)
	cluster := uniqueCluster()
	b, fake := watcher(t, cluster, proxy.path)
	before := eventReaders()
	id := startMachine(t, cli, img, machine{cluster: cluster, id: "through-proxy"})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	reports := make(chan string, 64)
	done := make(chan error, 1)
	go func() {
		done <- b.Watch(ctx, func(id string) {
			select {
			case reports <- id:
			case <-ctx.Done():
			}
		})
	}()
	waitSubscribed(t, fake)
	// The stream through the proxy works before it is cut.
	if err := cli.ContainerKill(ctx, id, "KILL"); err != nil {
		t.Fatal(err)
	}
	expectReport(t, reports, "through-proxy")

	proxy.Cut()
	start := time.Now()
	select {
	case err := <-done:
		if err == nil || errors.Is(err, context.Canceled) || !strings.Contains(err.Error(), "cluster "+cluster) {
			t.Fatalf("Watch returned %v, want an error naming cluster %s", err, cluster)
		}
		t.Logf("Watch returned %v after the engine went away: %v", time.Since(start).Round(time.Millisecond), err)
	case <-time.After(10 * time.Second):
		t.Fatal("Watch still runs 10s after the engine went away")
	}
	expectReaders(t, before)
}

// TestDockerWatchSaysWhenNoEngineAnswers: with no engine behind its socket,
// Watch returns at once an error that says so.
func TestDockerWatchSaysWhenNoEngineAnswers(t *testing.T) {
	b, _ := watcher(t, uniqueCluster(), filepath.Join(t.TempDir(), "no-engine.sock"))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := b.Watch(ctx, func(string) { t.Error("stopped called with no engine") })
	if err == nil || ctx.Err() != nil || !strings.Contains(err.Error(), "docker engine unreachable") {
		t.Fatalf("Watch returned %v, want an error saying the docker engine is unreachable", err)
	}
}

// TestDockerWatchCatchesUpAcrossResubscriptions: a container that dies
// between two subscriptions (after one ended, before the next opened) is
// reported by the next one, from the engine's log of recent events; an
// event the first one reported is not reported again; the first one's
// reader of the stream is gone.
func TestDockerWatchCatchesUpAcrossResubscriptions(t *testing.T) {
	cli := needEngine(t)
	img := idlerImage(t, cli)
	for _, tc := range []struct {
		name       string
		eventFirst bool // the first subscription reports an event
	}{
		{"before any event", false},
		{"after an event", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cluster := uniqueCluster()
			b, fake := watcher(t, cluster, "")
			var first string
			if tc.eventFirst {
				first = startMachine(t, cli, img, machine{cluster: cluster, id: "first"})
			}
			gap := startMachine(t, cli, img, machine{cluster: cluster, id: "in-gap"})
			before := eventReaders()
			var once sync.Once
			b.betweenSubscriptions = func() {
				once.Do(func() { killAndAwaitDie(t, cli, gap) })
			}
			reports, stop := runWatch(t, b)
			waitSubscribed(t, fake)
			if tc.eventFirst {
				ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
				defer cancel()
				if err := cli.ContainerKill(ctx, first, "KILL"); err != nil {
					t.Fatal(err)
				}
				expectReport(t, reports, "first")
			}
			fake.Advance(watchEvery)
			expectReport(t, reports, "in-gap")
			expectQuiet(t, reports, time.Second)
			// The first subscription's reader ended before the second
			// opened.
			expectReaders(t, before+1)
			if err := stop(); !errors.Is(err, context.Canceled) {
				t.Errorf("Watch returned %v, want %v", err, context.Canceled)
			}
		})
	}
}

// killAndAwaitDie kills a container and returns once the engine has logged
// its death, so that a subscription opened afterwards gets it only from
// the engine's log.
func killAndAwaitDie(t *testing.T, cli *client.Client, id string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	since := time.Now().Add(-time.Minute)
	if err := cli.ContainerKill(ctx, id, "KILL"); err != nil {
		t.Errorf("kill %s: %v", id, err)
		return
	}
	f := filters.NewArgs(filters.Arg("container", id), filters.Arg("event", string(events.ActionDie)))
	logged := func() bool {
		// With until in the past, the engine sends what it logged and
		// ends the stream.
		until := time.Now()
		ctx, cancel := context.WithCancel(ctx)
		msgs, errs := cli.Events(ctx, events.ListOptions{
			Since:   fmt.Sprintf("%d.%09d", since.Unix(), since.Nanosecond()),
			Until:   fmt.Sprintf("%d.%09d", until.Unix(), until.Nanosecond()),
			Filters: f,
		})
		defer func() {
			cancel()
			for range errs {
			}
		}()
		select {
		case <-msgs:
			return true
		case <-errs:
			return false
		}
	}
	for ctx.Err() == nil {
		if logged() {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Errorf("the engine logged no death of %s within a minute", id)
}

// TestScaleDockerListsEachContainersMaker: a container is labelled with
// the member that made it, as the node config says, and List (and the
// inspection behind Spawn) report it, so that members sharing an engine
// each list only their own; a container of no known maker (made before
// made_by) is listed with none, and every member lists it.
func TestScaleDockerListsEachContainersMaker(t *testing.T) {
	cli := needEngine(t)
	img := idlerImage(t, cli)
	cluster := uniqueCluster()
	b, _ := watcher(t, cluster, "")
	startMachine(t, cli, img, machine{cluster: cluster, id: "made", madeBy: "host-a"})
	startMachine(t, cli, img, machine{cluster: cluster, id: "unmade"})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	insts, err := b.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, in := range insts {
		got[in.MachineID] = in.MadeBy
	}
	if len(got) != 2 || got["made"] != "host-a" || got["unmade"] != "" {
		t.Errorf("List says the makers are %v, want made=host-a and unmade of none", got)
	}
	for id, want := range map[string]string{"made": "host-a", "unmade": ""} {
		in, err := b.inspect(ctx, cluster+"-"+id)
		if err != nil {
			t.Fatal(err)
		}
		if in.MadeBy != want {
			t.Errorf("inspect of %s says made by %q, want %q", id, in.MadeBy, want)
		}
	}
}
