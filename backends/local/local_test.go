package local

import (
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/raptiformica/raptiformica/backends"
	"github.com/raptiformica/raptiformica/internal/nodeconfig"
)

// standIn is a program in place of the agent: it starts a child (as the agent
// starts Consul) and sleeps. The backend, not the agent, is under test here.
const standIn = "#!/bin/sh\nsleep 300 &\nsleep 300\n"

func newBackend(t *testing.T) (*Backend, string) {
	t.Helper()
	dir := t.TempDir()
	bin := filepath.Join(dir, "agent.sh")
	if err := os.WriteFile(bin, []byte(standIn), 0o755); err != nil {
		t.Fatal(err)
	}
	b, err := New(backends.Config{Name: "local", Settings: map[string]string{"subnet": "127.99.1"}}, backends.Env{Cluster: "t", ClusterDir: dir, Binary: bin, ConsulBinary: bin})
	if err != nil {
		t.Fatal(err)
	}
	return b.(*Backend), dir
}

func TestSubnet(t *testing.T) {
	a, b := subnetOf("/tmp/one"), subnetOf("/tmp/two")
	if a == b {
		t.Errorf("two folders share subnet %s", a)
	}
	if subnetOf("/tmp/one") != a {
		t.Errorf("subnet is not stable")
	}
	if strings.HasPrefix(a, "127.0.") || !strings.HasPrefix(a, "127.") {
		t.Errorf("subnet %s outside 127.16-239.x", a)
	}
	for _, bad := range []map[string]string{
		{"subnet": "10.0.0"},
		{"addresses": "172.17.0.1, nonsense"},
		{"addresses": "172.17.0.1", "subnet": "127.1.2"},
		{"subnett": "127.1.2"},
	} {
		if _, err := New(backends.Config{Name: "local", Settings: bad}, backends.Env{ClusterDir: "/tmp/x"}); err == nil {
			t.Errorf("settings %v were accepted", bad)
		}
	}
}

func TestAddressesSetting(t *testing.T) {
	b, err := New(backends.Config{Name: "host", Settings: map[string]string{"addresses": "172.17.0.1, 10.1.2.3"}}, backends.Env{ClusterDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	a, err := b.(*Backend).freeAddress()
	if err != nil || a != "172.17.0.1" {
		t.Fatalf("first free address = %q, %v; want 172.17.0.1", a, err)
	}
}

func TestSpawnListDestroy(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	b, dir := newBackend(t)
	ctx := context.Background()
	t.Cleanup(func() { KillAll(context.Background(), dir) })
	var ids []string
	for _, id := range []string{"m-1", "m-2", "m-3"} {
		in, err := b.Spawn(ctx, backends.Spec{Node: nodeconfig.Config{MachineID: id, MachineType: "server"}})
		if err != nil {
			t.Fatalf("spawn %s: %v", id, err)
		}
		ids = append(ids, in.Address)
	}
	if got, want := strings.Join(ids, " "), "127.99.1.2 127.99.1.3 127.99.1.4"; got != want {
		t.Errorf("addresses: got %s want %s", got, want)
	}
	cfg, err := nodeconfig.Read(filepath.Join(dir, "machines", "m-1", "agent.json"))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.BindAddr != "127.99.1.2" || cfg.DataDir != filepath.Join(dir, "machines", "m-1", "data") || cfg.Backend != "local" {
		t.Errorf("node config written: %+v", cfg)
	}

	// Destroying the middle machine ends its whole process group and frees
	// its address, which the next spawn passes over while higher ones are
	// free.
	ms, _ := Machines(dir)
	var pid int
	for _, m := range ms {
		if m.Config.MachineID == "m-2" {
			pid = m.PID
		}
	}
	if err := b.Destroy(ctx, "m-2"); err != nil {
		t.Fatal(err)
	}
	if groupAlive(pid) {
		t.Errorf("process group %d of a destroyed machine is alive", pid)
	}
	in, err := b.Spawn(ctx, backends.Spec{Node: nodeconfig.Config{MachineID: "m-4", MachineType: "server", MadeBy: "host-a"}})
	if err != nil {
		t.Fatal(err)
	}
	if in.Address != "127.99.1.5" {
		t.Errorf("address after a destroy: got %s want 127.99.1.5: the freed 127.99.1.3 only once those above it are taken", in.Address)
	}
	list, err := b.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	for _, in := range list {
		got[in.MachineID] = in.Running
		// Who made a machine is listed, so that only its maker's
		// offer need list it.
		if want := map[string]string{"m-4": "host-a"}[in.MachineID]; in.MadeBy != want {
			t.Errorf("list: %s made by %q, want %q", in.MachineID, in.MadeBy, want)
		}
	}
	if len(got) != 3 || !got["m-1"] || !got["m-3"] || !got["m-4"] {
		t.Errorf("list: got %v want m-1, m-3, m-4 running", got)
	}

	// A machine whose processes die shows as not running.
	ms, _ = Machines(dir)
	for _, m := range ms {
		if m.Config.MachineID == "m-1" {
			killGroup(m.PID, 9)
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		list, _ := b.List(ctx)
		running := true
		for _, in := range list {
			if in.MachineID == "m-1" {
				running = in.Running
			}
		}
		if !running {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("killed machine still listed as running")
		}
		time.Sleep(50 * time.Millisecond)
	}

	n, err := KillAll(ctx, dir)
	if err != nil || n != 2 {
		t.Errorf("KillAll: killed %d err %v, want 2", n, err)
	}
	if ms, _ := Machines(dir); len(ms) != 0 {
		t.Errorf("machines left after KillAll: %v", ms)
	}
}

func TestDestroyRefusesPaths(t *testing.T) {
	b, _ := newBackend(t)
	for _, id := range []string{"", "../x", "a/b"} {
		if err := b.Destroy(context.Background(), id); err == nil {
			t.Errorf("Destroy(%q) accepted", id)
		}
	}
}

// TestAvailableOnlyWhereItsMachinesAreReachable: any member may be asked to
// run a spawn, so the backend says it runs only where its machines would
// be reachable: configured addresses must be this machine's own, and
// loopback machines are made only by a node that itself lives on loopback.
func TestAvailableOnlyWhereItsMachinesAreReachable(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "agent.sh")
	if err := os.WriteFile(bin, []byte(standIn), 0o755); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name     string
		settings map[string]string
		bindAddr string
		ok       bool
	}{
		{"loopback machines, made by a node on loopback", map[string]string{"subnet": "127.99.1"}, "127.99.1.2", true},
		{"loopback machines, made outside an agent (the CLI)", map[string]string{"subnet": "127.99.1"}, "", true},
		{"loopback machines, asked of a node on a real network", map[string]string{"subnet": "127.99.1"}, "10.20.30.40", false},
		{"loopback machines, asked of a container (bind auto)", map[string]string{"subnet": "127.99.1"}, nodeconfig.BindAuto, false},
		{"addresses of this machine", map[string]string{"addresses": "192.0.2.77, 127.0.0.1"}, "10.20.30.40", true},
		{"addresses of another machine", map[string]string{"addresses": "192.0.2.77"}, "127.99.1.2", false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			b, err := New(backends.Config{Name: "host", Settings: tc.settings}, backends.Env{ClusterDir: dir, Binary: bin, ConsulBinary: bin, BindAddr: tc.bindAddr})
			if err != nil {
				t.Fatal(err)
			}
			err = b.Available(context.Background())
			if (err == nil) != tc.ok {
				t.Errorf("available: %v, want ok=%v", err, tc.ok)
			}
		})
	}
}

// TestFreeMemoryReadsMemAvailable: the floor placement keeps is the
// kernel's MemAvailable, in bytes; a file without it is an error, not 0.
func TestFreeMemoryReadsMemAvailable(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "meminfo")
	if err := os.WriteFile(good, []byte("MemTotal:       16000000 kB\nMemFree:          100000 kB\nMemAvailable:    2048000 kB\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if got, err := memAvailable(good); err != nil || got != 2048000<<10 {
		t.Errorf("memAvailable = %d, %v; want %d", got, err, 2048000<<10)
	}
	bad := filepath.Join(dir, "old")
	if err := os.WriteFile(bad, []byte("MemTotal: 1 kB\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := memAvailable(bad); err == nil {
		t.Error("a meminfo without MemAvailable gave no error")
	}
	b, _ := newBackend(t)
	if free, err := b.FreeMemory(context.Background()); err != nil || free == 0 {
		t.Errorf("this machine's free memory: %d, %v", free, err)
	}
}

// TestElasticAddressesOfSeveralHosts: a list of addresses naming several
// hosts' gives each host its own: an address that is not this machine's
// is never handed out, whatever its place in the list.
func TestElasticAddressesOfSeveralHosts(t *testing.T) {
	b, err := New(backends.Config{Name: "room", Settings: map[string]string{"addresses": "192.0.2.77, 127.0.0.1, 192.0.2.78"}}, backends.Env{ClusterDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	got, err := b.(*Backend).freeAddress()
	if err != nil || got != "127.0.0.1" {
		t.Fatalf("free address %q, %v; want 127.0.0.1, this machine's own", got, err)
	}
}

// TestElasticMachinesOnOwnAddressesShareNoLoopback: machines on configured
// addresses (not loopback) each get a loopback address of their own for
// their plain-HTTP listeners, apart from the host's agent's 127.0.0.1 and
// from one another's, and the same one for the same address.
func TestElasticMachinesOnOwnAddressesShareNoLoopback(t *testing.T) {
	a, b := loopbackOf("/c", "10.0.0.11"), loopbackOf("/c", "10.0.0.12")
	for _, l := range []string{a, b} {
		ip, err := netip.ParseAddr(l)
		if err != nil || !ip.IsLoopback() || l == "127.0.0.1" || !strings.HasPrefix(l, "127.2") {
			t.Errorf("loopback %q, want one in 127.240.0.0 and up", l)
		}
	}
	if a == b || a != loopbackOf("/c", "10.0.0.11") {
		t.Errorf("loopbacks %s and %s: want two, and the same for one address", a, b)
	}
}
