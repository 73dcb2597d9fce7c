package daemon

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"golang.org/x/sys/unix"

	"github.com/raptiformica/raptiformica/builtin"
	"github.com/raptiformica/raptiformica/daemon/agentapi"
	"github.com/raptiformica/raptiformica/internal/clock"
	"github.com/raptiformica/raptiformica/internal/kvschema"
	"github.com/raptiformica/raptiformica/internal/nodeconfig"
	"github.com/raptiformica/raptiformica/internal/testconsul"
	"github.com/raptiformica/raptiformica/reconcile"
)

const onePlatform = `cluster = "daemon-test"
policy {
  resync_interval = "1s"
}
machine "server" {
  min           = 1
  consul_server = true
}
`

// startAgent runs a real agent, with its own real Consul, in this process.
func startAgent(t *testing.T) (*Agent, func()) {
	t.Helper()
	return startAgentWith(t, onePlatform)
}

// startAgentWith runs a real agent whose description is platform.
func startAgentWith(t *testing.T, platform string) (*Agent, func()) {
	t.Helper()
	if testing.Short() {
		t.Skip("integration test: runs a real agent and Consul (run without -short)")
	}
	consulBin, err := testconsul.Binary()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	pf := filepath.Join(dir, "platform.hcl")
	if err := os.WriteFile(pf, []byte(platform), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := nodeconfig.Config{
		MachineID: "server-daemon", MachineType: "server", Cluster: "daemon-test", Backend: "local",
		ClusterDir: dir, DataDir: filepath.Join(dir, "data"), BindAddr: testconsul.FreeIP(),
		ConsulBinary: consulBin, ConsulServer: true, Bootstrap: true,
		FastGossip: true, PlatformFile: pf,
	}.WithDefaults()
	a := &Agent{Config: cfg, Registry: builtin.Registry(), Binary: "/nonexistent", Log: hclog.New(&hclog.LoggerOptions{Level: hclog.Warn, Output: os.Stderr})}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	var once sync.Once
	stop := func() { once.Do(func() { stopAgent(t, cancel, done) }) }
	t.Cleanup(stop)
	waitFor(t, time.Minute, "agent leads", func() bool {
		st, err := httpStatus(cfg)
		return err == nil && st.IsLeader && st.Reconcile != nil && st.Reconcile.Types["server"].Live == 1
	})
	return a, stop
}

func stopAgent(t *testing.T, cancel func(), done <-chan error) {
	{
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Errorf("agent did not stop within 30s of cancel")
		}
	}
}

func httpStatus(cfg nodeconfig.Config) (agentapi.AgentStatus, error) {
	var st agentapi.AgentStatus
	resp, err := http.Get(fmt.Sprintf("http://%s:%d/v1/status", cfg.BindAddr, cfg.HTTPPort))
	if err != nil {
		return st, err
	}
	defer resp.Body.Close()
	return st, json.NewDecoder(resp.Body).Decode(&st)
}

func waitFor(t testing.TB, timeout time.Duration, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting until %s", timeout, what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func TestAgentKeepsLastGoodDescriptionAndReseeds(t *testing.T) {
	a, stop := startAgent(t)
	kv := a.consul.KV()
	good := a.Platform().Source

	// The agent's own record, the gossip key and the description are in KV.
	if rec, found, err := a.inventory.Get(context.Background(), "server-daemon"); err != nil || !found || rec.State != reconcile.StateJoined || !rec.Seed {
		t.Errorf("own record: got %+v found=%v err=%v", rec, found, err)
	}
	if pair, _, err := kv.Get(kvschema.GossipKey, nil); err != nil || pair == nil || string(pair.Value) != a.Config.Encrypt {
		t.Errorf("gossip key in KV: got %v err=%v", pair, err)
	}

	// A bad description written straight to KV is rejected, with its line.
	if _, err := kv.Put(&api.KVPair{Key: kvschema.Platform, Value: []byte("machine \"server\" {\n  min = -1\n}\n")}, nil); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the bad description is rejected", func() bool {
		st, err := httpStatus(a.Config)
		return err == nil && strings.Contains(st.PlatformError, kvschema.PlatformSource+":2,9: machine \"server\" min: must be at least 0")
	})
	if got := string(a.Platform().Source); got != string(good) {
		t.Errorf("the bad description replaced the good one:\n%s", got)
	}
	if got := testutil.ToFloat64(a.metrics.PlatformValid); got != 0 {
		t.Errorf("platform_valid: got %v want 0", got)
	}
	if got := testutil.ToFloat64(a.metrics.PlatformRejected); got != 1 {
		t.Errorf("platform_rejected_total: got %v want 1", got)
	}
	mirror, err := os.ReadFile(filepath.Join(a.mirror.dir, "platform"))
	if err != nil || string(mirror) != string(good) {
		t.Errorf("mirror after a rejected description: got %q err=%v", mirror, err)
	}

	// A new cluster's inventory is mirrored at epoch 0.
	waitFor(t, 10*time.Second, "the inventory is mirrored", func() bool {
		v := a.mirror.inventoryVersion()
		return v.Epoch == 0 && v.Index > 0 && a.mirror.records()["server-daemon"].ID != ""
	})

	// An empty KV (the cluster's state lost) is re-seeded from the mirror.
	if _, err := kv.DeleteTree(kvschema.Prefix, nil); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "KV is re-seeded", func() bool {
		pair, _, err := kv.Get(kvschema.Platform, nil)
		if err != nil || pair == nil || string(pair.Value) != string(good) {
			return false
		}
		_, found, err := a.inventory.Get(context.Background(), "server-daemon")
		return err == nil && found
	})
	waitFor(t, 10*time.Second, "the re-seeded inventory is mirrored at epoch 1", func() bool {
		return a.mirror.inventoryVersion().Epoch == 1
	})

	// A new valid description is taken up and mirrored.
	next := strings.Replace(string(good), `resync_interval = "1s"`, `resync_interval = "2s"`, 1)
	if _, err := kv.Put(&api.KVPair{Key: kvschema.Platform, Value: []byte(next)}, nil); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the new description is loaded and mirrored", func() bool {
		b, _ := os.ReadFile(filepath.Join(a.mirror.dir, "platform"))
		return a.Platform().Policy.ResyncInterval == 2*time.Second && string(b) == next
	})
	if got := testutil.ToFloat64(a.metrics.PlatformValid); got != 1 {
		t.Errorf("platform_valid after a good description: got %v want 1", got)
	}

	// Versions: two applies make version 2, mirrored with it; an older
	// version written back (a KV re-seeded from a stale copy) is run but
	// never replaces the newer mirror.
	v3 := strings.Replace(next, `resync_interval = "2s"`, `resync_interval = "3s"`, 1)
	v4 := strings.Replace(next, `resync_interval = "2s"`, `resync_interval = "4s"`, 1)
	for _, src := range []string{v3, v4} {
		if _, err := kvschema.New(a.consul).PutPlatform(context.Background(), []byte(src)); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 10*time.Second, "version 2 is mirrored", func() bool {
		b, _ := os.ReadFile(filepath.Join(a.mirror.dir, "platform"))
		return string(b) == v4 && a.mirror.platformVersion() == 2
	})
	if _, err := kv.Put(&api.KVPair{Key: kvschema.Platform, Value: []byte(v3), Flags: 1}, nil); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the older version is loaded", func() bool { return a.Platform().Policy.ResyncInterval == 3*time.Second })
	if b, _ := os.ReadFile(filepath.Join(a.mirror.dir, "platform")); string(b) != v4 || a.mirror.platformVersion() != 2 {
		t.Errorf("an older version replaced the mirror: version %d\n%s", a.mirror.platformVersion(), b)
	}
	if got := testutil.ToFloat64(a.metrics.MirrorKeptNewer.WithLabelValues("platform")); got != 1 {
		t.Errorf("mirror_kept_newer_total{what=platform}: got %v want 1", got)
	}

	// The inventory likewise: a change in a KV of an older epoch is not
	// mirrored; the next change in the current epoch is.
	touch := func(reason string) {
		t.Helper()
		rec, _, err := a.inventory.Get(context.Background(), "server-daemon")
		if err != nil {
			t.Fatal(err)
		}
		rec.Reason = reason
		if _, err := a.inventory.Put(context.Background(), rec); err != nil {
			t.Fatal(err)
		}
	}
	setEpoch := func(e string) {
		t.Helper()
		if _, err := kv.Put(&api.KVPair{Key: kvschema.Epoch, Value: []byte(e)}, nil); err != nil {
			t.Fatal(err)
		}
	}
	setEpoch("0")
	touch("from an older history")
	waitFor(t, 10*time.Second, "the older inventory is refused", func() bool {
		return testutil.ToFloat64(a.metrics.MirrorKeptNewer.WithLabelValues("inventory")) == 1
	})
	if got := a.mirror.records()["server-daemon"].Reason; got != "" || a.mirror.inventoryVersion().Epoch != 1 {
		t.Errorf("an older inventory replaced the mirror: reason %q, version %v", got, a.mirror.inventoryVersion())
	}
	setEpoch("1")
	touch("current")
	waitFor(t, 10*time.Second, "the current inventory is mirrored", func() bool {
		return a.mirror.records()["server-daemon"].Reason == "current"
	})

	// SIGTERM's path: the agent stops, and its Consul with it.
	stop()
	if conn, err := net.DialTimeout("tcp", fmt.Sprintf("%s:%d", a.Config.BindAddr, a.Config.ConsulHTTPPort), time.Second); err == nil {
		conn.Close()
		t.Errorf("consul still listens after the agent stopped")
	}
}

func TestAgentMetrics(t *testing.T) {
	a, _ := startAgent(t)
	want := `
# HELP raptiformica_is_leader 1 while this node holds the leader lock.
# TYPE raptiformica_is_leader gauge
raptiformica_is_leader 1
# HELP raptiformica_machines_desired Machines the description asks for (min), by machine type.
# TYPE raptiformica_machines_desired gauge
raptiformica_machines_desired{machine_type="server"} 1
# HELP raptiformica_machines_live Joined, alive machines, by machine type.
# TYPE raptiformica_machines_live gauge
raptiformica_machines_live{machine_type="server"} 1
# HELP raptiformica_machines_in_flight Machines being spawned or joining, by machine type.
# TYPE raptiformica_machines_in_flight gauge
raptiformica_machines_in_flight{machine_type="server"} 0
# HELP raptiformica_reconcile_halted 1 when replacements are suspended because too many members are failed.
# TYPE raptiformica_reconcile_halted gauge
raptiformica_reconcile_halted 0
`
	if err := testutil.GatherAndCompare(a.metrics.Registry, strings.NewReader(want),
		"raptiformica_is_leader", "raptiformica_machines_desired", "raptiformica_machines_live",
		"raptiformica_machines_in_flight", "raptiformica_reconcile_halted"); err != nil {
		t.Error(err)
	}
	if got := testutil.ToFloat64(a.metrics.ReconcileTotal.WithLabelValues("success")); got < 1 {
		t.Errorf("reconcile_total{result=success}: got %v want >= 1", got)
	}
	// The exposition over HTTP is what Prometheus scrapes.
	resp, err := http.Get(fmt.Sprintf("http://%s:%d/metrics", a.Config.BindAddr, a.Config.HTTPPort))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Errorf("/metrics: status %d", resp.StatusCode)
	}
	h, err := http.Get(fmt.Sprintf("http://%s:%d/healthz", a.Config.BindAddr, a.Config.HTTPPort))
	if err != nil {
		t.Fatal(err)
	}
	h.Body.Close()
	if h.StatusCode != 200 {
		t.Errorf("/healthz: status %d", h.StatusCode)
	}
}

// consulPID finds the agent's Consul process, or returns 0.
func consulPID(cfg nodeconfig.Config) int {
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		cmdline, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		if strings.Contains(string(cmdline), filepath.Join(cfg.DataDir, "consul.json")) {
			var pid int
			fmt.Sscanf(e.Name(), "%d", &pid)
			return pid
		}
	}
	return 0
}

func TestAgentRestartsConsul(t *testing.T) {
	a, _ := startAgent(t)
	first := consulPID(a.Config)
	if first == 0 {
		t.Fatal("no consul process")
	}
	if err := syscall.Kill(first, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitFor(t, time.Minute, "consul is restarted and answers", func() bool {
		pid := consulPID(a.Config)
		leader, err := a.consul.Status().Leader()
		return pid != 0 && pid != first && err == nil && leader != ""
	})
	if got := testutil.ToFloat64(a.metrics.ConsulRestarts); got != 1 {
		t.Errorf("consul_restarts_total: got %v want 1", got)
	}
	waitFor(t, time.Minute, "the agent leads again", func() bool {
		st, err := httpStatus(a.Config)
		return err == nil && st.IsLeader && st.Leader == a.Config.MachineID
	})
	// The restarted Consul kept its data: the description is still there.
	pair, _, err := a.consul.KV().Get(kvschema.Platform, nil)
	if err != nil || pair == nil {
		t.Errorf("description after the restart: %v %v", pair, err)
	}
}

func TestAgentNotifiesSystemd(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test: runs a real agent and Consul (run without -short)")
	}
	conn := listenNotify(t)
	_, stop := startAgent(t)
	// READY once, and watchdog pings while the node runs; the two may
	// interleave, so count them over the next pings.
	var ready, pings int
	for ready == 0 || pings < 3 {
		switch got := readNotify(t, conn); got {
		case "READY=1":
			ready++
		case "WATCHDOG=1":
			pings++
		default:
			t.Fatalf("unexpected notification %q", got)
		}
	}
	if ready != 1 {
		t.Errorf("READY=1 sent %d times, want once", ready)
	}
	stop()
	for {
		got := readNotify(t, conn)
		if got == "STOPPING=1" {
			break
		}
		if got != "WATCHDOG=1" {
			t.Fatalf("notification at stop: got %q want STOPPING=1", got)
		}
	}
}

// TestAgentWatchdogPingsWhileServersAreCutOff: a Consul client whose
// servers are all unreachable still answers from its own state, and the
// watchdog keeps pinging systemd. It asked for the leader once, which a
// cut-off client cannot answer: systemd restarted every client of a
// partition, its Consul and its mesh with it, once a minute.
func TestAgentWatchdogPingsWhileServersAreCutOff(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test: runs a real Consul server and client (run without -short)")
	}
	server, err := testconsul.StartWith()
	if err != nil {
		t.Fatal(err)
	}
	defer server.Stop()
	client, err := testconsul.StartClient(testconsul.FreeIP(), "cut-off", server.IP)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Stop()
	server.Stop()
	if _, err := client.Client.Status().Leader(); err == nil {
		t.Fatal("the client still reaches a server: nothing is cut off")
	}

	conn := listenNotify(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		_ = (&watchdog{consul: client.Client, clock: clock.Real{}, log: hclog.NewNullLogger()}).Run(ctx)
		close(done)
	}()
	defer func() { cancel(); <-done }()
	// A ping every 200 ms: three in two seconds, not one missed.
	buf := make([]byte, 64)
	_ = conn.SetReadDeadline(time.Now().Add(2 * time.Second))
	for i := range 3 {
		n, err := conn.Read(buf)
		if err != nil {
			t.Fatalf("ping %d of 3 never came with the servers cut off: %v", i+1, err)
		}
		if got := string(buf[:n]); got != "WATCHDOG=1" {
			t.Fatalf("notification %q, want WATCHDOG=1", got)
		}
	}
}

// listenNotify plays systemd for the test: the socket the agent notifies,
// and a watchdog of 400 ms for this process (a ping every 200 ms). It is
// closed when the test ends.
func listenNotify(t *testing.T) *net.UnixConn {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	// The sender's credentials come with each datagram, as systemd has
	// them: a notification from any process but this one is refused
	// there (NotifyAccess=main).
	rc, err := conn.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var serr error
	if err := rc.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PASSCRED, 1) }); err != nil || serr != nil {
		t.Fatal(err, serr)
	}
	t.Setenv("NOTIFY_SOCKET", sock)
	t.Setenv("WATCHDOG_USEC", "400000")
	t.Setenv("WATCHDOG_PID", strconv.Itoa(os.Getpid()))
	return conn
}

// readNotify returns the next notification, and fails the test if it came
// from another process than the agent's (this one): Consul, the agent's
// child, once found $NOTIFY_SOCKET in its environment and sent its own.
func readNotify(t *testing.T, conn *net.UnixConn) string {
	t.Helper()
	buf := make([]byte, 256)
	oob := make([]byte, unix.CmsgSpace(unix.SizeofUcred))
	_ = conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	n, oobn, _, _, err := conn.ReadMsgUnix(buf, oob)
	if err != nil {
		t.Fatalf("no notification: %v", err)
	}
	msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err != nil || len(msgs) != 1 {
		t.Fatalf("notification %q without its sender's credentials: %v", buf[:n], err)
	}
	cred, err := unix.ParseUnixCredentials(&msgs[0])
	if err != nil {
		t.Fatal(err)
	}
	if int(cred.Pid) != os.Getpid() {
		cmd, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", cred.Pid))
		t.Fatalf("notification %q from pid %d (%q), not the agent's process %d", buf[:n], cred.Pid, bytes.ReplaceAll(cmd, []byte{0}, []byte{' '}), os.Getpid())
	}
	return string(buf[:n])
}

func TestAgentRefusesBusyHTTPPort(t *testing.T) {
	addr := testconsul.FreeIP()
	ln, err := net.Listen("tcp", addr+":0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	port := ln.Addr().(*net.TCPAddr).Port
	dir := t.TempDir()
	cfg := nodeconfig.Config{
		MachineID: "busy", MachineType: "server", Cluster: "daemon-test", Backend: "local",
		ClusterDir: dir, DataDir: filepath.Join(dir, "data"), BindAddr: addr, HTTPPort: port,
		ConsulBinary: "/nonexistent/consul", ConsulServer: true, Bootstrap: true, Platform: onePlatform,
	}.WithDefaults()
	a := &Agent{Config: cfg, Registry: builtin.Registry(), Binary: "/nonexistent", Log: hclog.NewNullLogger()}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err = a.Run(ctx)
	want := fmt.Sprintf("node config http_port %d on bind_addr %s: ", port, addr)
	if err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "address already in use") {
		t.Fatalf("Run with a busy http_port: got %v, want an error naming %q", err, want)
	}
	// Nothing was started: no Consul folder was made.
	if _, err := os.Stat(filepath.Join(cfg.DataDir, "consul")); !os.IsNotExist(err) {
		t.Errorf("consul data folder exists after a refused start (err=%v)", err)
	}
}
