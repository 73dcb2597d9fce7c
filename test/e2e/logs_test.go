package e2e

// What a failed test prints of the machines it made: every container's
// state and output, every machine's agent and Consul logs, each cut to its
// end, so that a failure under load says why a machine stopped without
// burying the test's own message.

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// logCap is how much of each log a failed test prints: its end, where a
// failure shows.
const logCap = 12 << 10

// machineLogs are the logs a node keeps in its data folder (the agent's
// own output goes there too when no supervisor takes it).
var machineLogs = []string{"agent.log", "consul.log", "commands.log"}

// nodeDataDir is where every container node keeps its data: the docker
// backend's and adoption's folder.
const nodeDataDir = "/var/lib/raptiformica"

// tailOf returns the end of b, at most logCap bytes from a line start,
// saying how much was left out.
func tailOf(b []byte) string {
	if len(b) <= logCap {
		return string(b)
	}
	cut := len(b) - logCap
	if i := bytes.IndexByte(b[cut:], '\n'); i >= 0 && i < logCap/4 {
		cut += i + 1
	}
	return fmt.Sprintf("[... %d bytes before ...]\n%s", cut, b[cut:])
}

// tailFile returns the end of a file without reading the rest of it.
func tailFile(name string) (string, error) {
	f, err := os.Open(name)
	if err != nil {
		return "", err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return "", err
	}
	// Read a line's worth more, so that the cut falls on a line start.
	off := max(0, fi.Size()-logCap-512)
	b, err := io.ReadAll(io.NewSectionReader(f, off, fi.Size()-off))
	if err != nil {
		return "", err
	}
	s := tailOf(b)
	if off > 0 && !strings.HasPrefix(s, "[...") {
		s = fmt.Sprintf("[... %d bytes before ...]\n%s", off, s)
	}
	return s, nil
}

// dumpMachineDir prints the logs a machine keeps in its folders: the
// local backend's machine folder and the node's data folder.
func dumpMachineDir(t testing.TB, name string, dirs ...string) {
	t.Helper()
	for _, dir := range dirs {
		for _, f := range machineLogs {
			s, err := tailFile(filepath.Join(dir, f))
			if errors.Is(err, os.ErrNotExist) {
				continue
			}
			if err != nil {
				s = err.Error()
			}
			t.Logf("--- %s: %s:\n%s", name, filepath.Join(dir, f), s)
		}
	}
}

// dumpContainers prints, for each container a `docker ps` filter selects
// (running or exited), its state (an exit code, OOM kill or start error
// says why a machine stopped), the end of its output and the logs in its
// data folder.
func dumpContainers(t testing.TB, filter string) {
	t.Helper()
	out, err := dockerOut("ps", "-aq", "--no-trunc", "--filter", filter)
	if err != nil {
		t.Logf("--- containers %s: %v", filter, err)
		return
	}
	for _, id := range strings.Fields(out) {
		dumpContainer(t, id)
	}
}

// dumpContainer prints what dumpContainers prints of one container.
func dumpContainer(t testing.TB, id string) {
	t.Helper()
	state, err := dockerOut("inspect", "-f", "{{.Name}} status={{.State.Status}} exit={{.State.ExitCode}} oom_killed={{.State.OOMKilled}} "+
		"error={{printf \"%q\" .State.Error}} started={{.State.StartedAt}} finished={{.State.FinishedAt}} restarts={{.RestartCount}}", id)
	if err != nil {
		t.Logf("--- container %s: %v", id, err)
		return
	}
	logs, _ := dockerOut("logs", "--tail", "400", id)
	t.Logf("--- container %s %s; its output:\n%s", shortID(id), strings.TrimSpace(state), tailOf([]byte(logs)))
	for _, f := range machineLogs {
		if b, err := copyOut(id, nodeDataDir+"/"+f); err == nil {
			t.Logf("--- container %s: %s/%s:\n%s", shortID(id), nodeDataDir, f, tailOf(b))
		}
	}
}

func shortID(id string) string { return id[:min(12, len(id))] }

// dockerOut runs the docker command with a deadline: a dump must not hang
// a test's clean-up on a stuck engine.
func dockerOut(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "docker", args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("docker %s: %w: %s", args[0], err, bytes.TrimSpace(out))
	}
	return string(out), nil
}

// copyOut reads a file out of a container, running or not (the node
// images have no shell to cat with): `docker cp` writes it as a tar.
func copyOut(id, name string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "docker", "cp", id+":"+name, "-").Output()
	if err != nil {
		return nil, err
	}
	tr := tar.NewReader(bytes.NewReader(out))
	if _, err := tr.Next(); err != nil {
		return nil, err
	}
	return io.ReadAll(tr)
}
