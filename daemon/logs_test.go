package daemon

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/raptiformica/raptiformica/internal/nodeconfig"
)

// logsOnDisk is the total size of name and its rotated files.
func logsOnDisk(t *testing.T, name string) (int64, []string) {
	t.Helper()
	var total int64
	var files []string
	matches, _ := filepath.Glob(name + "*")
	for _, m := range matches {
		if fi, err := os.Stat(m); err == nil {
			total += fi.Size()
			files = append(files, filepath.Base(m))
		}
	}
	return total, files
}

// Consul printing without end (a flapping join logs at every retry, for
// days) fills consul.log to its cap, rotates it, and no further.
func TestHostileConsulLogIsCapped(t *testing.T) {
	dir := t.TempDir()
	fake := filepath.Join(dir, "consul")
	script := "#!/bin/sh\nhead -c 3000000 /dev/zero | tr '\\0' c\necho\necho the end >&2\nexit 1\n"
	if err := os.WriteFile(fake, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	cfg := nodeconfig.Config{MachineID: "m", MachineType: "w", DataDir: filepath.Join(dir, "data"), BindAddr: "127.0.0.1", ConsulBinary: fake}.WithDefaults()
	p := &ConsulProcess{Config: cfg, Log: hclog.NewNullLogger(), LogMaxBytes: 100 << 10}
	p.init()
	if err := p.runOnce(context.Background()); err == nil {
		t.Fatal("a Consul that exits 1 ran without error")
	}
	name := filepath.Join(cfg.DataDir, "consul.log")
	total, files := logsOnDisk(t, name)
	// The cap, one rotated file, and at most one pipe read over.
	if total > 2*(100<<10)+(64<<10) {
		t.Errorf("%d bytes on disk in %v after Consul printed 3 MB with a 100 KiB cap", total, files)
	}
	if cur, _ := os.ReadFile(name); !bytes.HasSuffix(cur, []byte("the end\n")) {
		t.Errorf("consul.log does not end with what Consul printed last")
	}
}

// The agent's own log: when its standard error is a file (agent.log, as
// the local backend and adoption start it), the agent rotates that file
// and its logger follows. Run in a child process whose stderr is the file,
// as a real agent's is.
func TestHostileAgentLogIsCapped(t *testing.T) {
	if os.Getenv("DAEMON_LOG_HELPER") == "1" {
		a := &Agent{Log: hclog.New(&hclog.LoggerOptions{Name: "raptiformica", Output: os.Stderr}), LogMaxBytes: 20000}
		ctx, cancel := context.WithCancel(context.Background())
		stop := a.rotateOwnLog(ctx, 5*time.Millisecond)
		for i := range 2000 {
			a.Log.Info("a line the agent logs", "i", i, "pad", strings.Repeat("p", 40))
			if i%20 == 0 {
				time.Sleep(10 * time.Millisecond)
			}
		}
		cancel()
		stop()
		a.Log.Info("the end")
		os.Exit(0)
	}
	name := filepath.Join(t.TempDir(), "agent.log")
	f, err := os.OpenFile(name, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestHostileAgentLogIsCapped$")
	cmd.Env = append(os.Environ(), "DAEMON_LOG_HELPER=1")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, f
	err = cmd.Run()
	f.Close()
	if err != nil {
		t.Fatalf("helper: %v\n%s", err, out.String())
	}
	total, files := logsOnDisk(t, name)
	if total > 3*20000 {
		t.Errorf("%d bytes on disk in %v after about 250 kB logged with a 20 kB cap", total, files)
	}
	cur, _ := os.ReadFile(name)
	if !bytes.Contains(cur, []byte("the end")) {
		t.Errorf("agent.log does not hold the last line: the logger did not follow the rotation")
	}
}
