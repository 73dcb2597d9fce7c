package localdc

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/raptiformica/raptiformica/builtin"
	"github.com/raptiformica/raptiformica/internal/nodeconfig"
)

// machine makes a local machine in dir whose "agent" is a sleeping shell
// that names the machine's config, as the local backend's agents do.
func machine(t *testing.T, dir, id string, server bool) {
	t.Helper()
	mdir := filepath.Join(dir, "machines", id)
	if err := os.MkdirAll(mdir, 0o755); err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(mdir, "agent.json")
	b, _ := json.Marshal(nodeconfig.Config{MachineID: id, MachineType: "server", ConsulServer: server, BindAddr: "127.0.0.1", DataDir: mdir})
	if err := os.WriteFile(cfg, b, 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("/bin/sh", "-c", "sleep 60", cfg)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = cmd.Wait() }()
	t.Cleanup(func() { _ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) })
	if err := os.WriteFile(filepath.Join(mdir, "pid"), []byte(strconv.Itoa(cmd.Process.Pid)), 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestSurvivorAndDown(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes (run without -short)")
	}
	dir := t.TempDir()
	l := Open(dir, builtin.Registry())
	if _, err := l.Survivor(""); err == nil || !strings.Contains(err.Error(), "no running server machine in "+dir) {
		t.Errorf("an empty folder: got %v, want no server named with the folder", err)
	}
	machine(t, dir, "server-a", true)
	machine(t, dir, "server-b", true)
	machine(t, dir, "worker-c", false)
	if _, err := l.Survivor(""); !errors.Is(err, ErrSeveralServers) || !strings.Contains(err.Error(), "server-a, server-b") {
		t.Errorf("two servers: got %v, want ErrSeveralServers naming both", err)
	}
	if m, err := l.Survivor("server-b"); err != nil || m.Config.MachineID != "server-b" {
		t.Errorf("a named server: got %v, %v", m.Config.MachineID, err)
	}
	if _, err := l.Survivor("worker-c"); err == nil {
		t.Error("a worker was taken for a server to recover on")
	}
	n, err := l.Down(context.Background())
	if err != nil || n != 3 {
		t.Fatalf("down: got %d, %v; want 3 machines stopped", n, err)
	}
	if addrs, err := l.running(context.Background()); err != nil || len(addrs) != 0 {
		t.Errorf("after down: got %v, %v; want no machine answering", addrs, err)
	}
}
