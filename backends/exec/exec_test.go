package exec

import (
	"bytes"
	"context"
	"os"
	osexec "os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/raptiformica/raptiformica/backends"
	"github.com/raptiformica/raptiformica/internal/nodeconfig"
)

// sh is a command run by the shell, the way the original modules were.
func sh(script string) []string { return []string{"/bin/sh", "-c", script} }

// fakeMachines are commands whose "machine" is a file in a shared folder,
// $RAPTIFORMICA_SETTING_POOL/<machine id>: enough to see what the backend
// runs, with which data, and in what order.
func fakeMachines() map[string][]string {
	return map[string][]string{
		CmdStart:    sh(`cp "$RAPTIFORMICA_AGENT_CONFIG" "$RAPTIFORMICA_SETTING_POOL/$RAPTIFORMICA_MACHINE_ID"`),
		CmdHostname: sh(`echo "starting..."; echo 10.9.8.7`),
		CmdPort:     sh(`echo 22`),
		CmdRunning:  sh(`test -f "$RAPTIFORMICA_SETTING_POOL/$RAPTIFORMICA_MACHINE_ID"`),
		CmdCleanUp:  sh(`rm -f "$RAPTIFORMICA_SETTING_POOL/$RAPTIFORMICA_MACHINE_ID"; echo "$RAPTIFORMICA_MACHINE_ID" >> "$RAPTIFORMICA_SETTING_POOL/cleaned"`),
	}
}

func newBackend(t *testing.T, cmds map[string][]string, settings map[string]string) (*Backend, string) {
	t.Helper()
	pool := t.TempDir()
	all := map[string]string{"pool": pool, "timeout": "2s", "query_timeout": "2s"}
	for k, v := range settings {
		all[k] = v
	}
	b, err := New(backends.Config{Name: "fake/headless", Settings: all, Commands: cmds},
		backends.Env{Cluster: "t", ClusterDir: t.TempDir(), Binary: "/bin/true", ConsulBinary: "/bin/true"})
	if err != nil {
		t.Fatal(err)
	}
	return b.(*Backend), pool
}

func spec(id string) backends.Spec {
	return backends.Spec{Node: nodeconfig.Config{MachineID: id, MachineType: "worker", Cluster: "t"}}
}

func TestSpawnListDestroy(t *testing.T) {
	b, pool := newBackend(t, fakeMachines(), map[string]string{"lead": "false"})
	ctx := context.Background()
	in, err := b.Spawn(ctx, spec("worker-1"))
	if err != nil {
		t.Fatal(err)
	}
	if in.Address != "10.9.8.7" || !in.Running || in.MachineType != "worker" {
		t.Errorf("spawned %+v, want worker at 10.9.8.7 (the last line get_hostname printed)", in)
	}
	// start_instance got the agent config through the environment.
	cfg, err := nodeconfig.Read(filepath.Join(pool, "worker-1"))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.MachineID != "worker-1" || cfg.Backend != "fake/headless" || !cfg.NeverLead || cfg.BindAddr != nodeconfig.BindAuto || cfg.DataDir != defaultDataDir {
		t.Errorf("agent config %+v", cfg)
	}

	insts, err := b.List(ctx)
	if err != nil || len(insts) != 1 || !insts[0].Running || insts[0].Address != "10.9.8.7" {
		t.Fatalf("list = %+v, %v; want worker-1 running", insts, err)
	}
	// The machine dies: detect_stale_instance says so.
	os.Remove(filepath.Join(pool, "worker-1"))
	insts, err = b.List(ctx)
	if err != nil || len(insts) != 1 || insts[0].Running {
		t.Fatalf("list = %+v, %v; want worker-1 stopped", insts, err)
	}

	if err := b.Destroy(ctx, "worker-1"); err != nil {
		t.Fatal(err)
	}
	if insts, _ := b.List(ctx); len(insts) != 0 {
		t.Errorf("after destroy list = %+v", insts)
	}
	if got := readFile(t, filepath.Join(pool, "cleaned")); got != "worker-1\n" {
		t.Errorf("clean_up ran for %q", got)
	}
}

func TestDataIsNeverInterpolated(t *testing.T) {
	cmds := fakeMachines()
	cmds[CmdStart] = sh(`printf %s "$RAPTIFORMICA_SETTING_IMAGE" > "$RAPTIFORMICA_SETTING_POOL/image"`)
	evil := `x"; touch "$RAPTIFORMICA_SETTING_POOL/pwned`
	b, pool := newBackend(t, cmds, map[string]string{"image": evil})
	if _, err := b.Spawn(context.Background(), spec("worker-1")); err != nil {
		t.Fatal(err)
	}
	if got := readFile(t, filepath.Join(pool, "image")); got != evil {
		t.Errorf("the command saw %q, want the setting as written", got)
	}
	if _, err := os.Stat(filepath.Join(pool, "pwned")); err == nil {
		t.Error("a setting's value ran as a command")
	}
}

// Every way a command can go wrong fails the spawn with an error that names
// the command, and cleans up so that no machine is left running.
func TestSpawnFailures(t *testing.T) {
	for _, tc := range []struct {
		name, cmd, script, want string
	}{
		{"exits non-zero", CmdStart, `echo "no space left on device" >&2; exit 3`, "start_instance: exit status 3: no space left on device"},
		{"hangs", CmdStart, `sleep 60 & echo $! > "$RAPTIFORMICA_SETTING_POOL/child"; wait`, "start_instance timed out after 1s and was killed"},
		{"prints garbage", CmdHostname, `echo "Error: No such container"`, `get_hostname: printed "Error: No such container", not an address or host name`},
		{"prints no port", CmdPort, `echo twenty-two`, `get_port: printed "twenty-two", not a port number`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cmds := fakeMachines()
			cmds[tc.cmd] = sh(tc.script)
			// Only the hanging command may reach its timeout: at 300 ms
			// for all, a loaded machine timed out the others too.
			timeout := "30s"
			if tc.name == "hangs" {
				timeout = "1s"
			}
			b, pool := newBackend(t, cmds, map[string]string{"timeout": timeout})
			_, err := b.Spawn(context.Background(), spec("worker-1"))
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "worker-1") {
				t.Fatalf("err = %v, want it to name worker-1 and say %q", err, tc.want)
			}
			if got := readFile(t, filepath.Join(pool, "cleaned")); got != "worker-1\n" {
				t.Errorf("clean_up ran for %q, want worker-1", got)
			}
			if insts, _ := b.List(context.Background()); len(insts) != 0 {
				t.Errorf("left behind %+v", insts)
			}
			if data, err := os.ReadFile(filepath.Join(pool, "child")); err == nil {
				pid, _ := strconv.Atoi(strings.TrimSpace(string(data)))
				if alive(pid) {
					t.Errorf("the hung command's child %d still runs", pid)
				}
			}
		})
	}
}

func TestFailedCleanupKeepsTheMachineForRetry(t *testing.T) {
	cmds := fakeMachines()
	cmds[CmdHostname] = sh(`exit 1`)
	cmds[CmdCleanUp] = sh(`test -f "$RAPTIFORMICA_SETTING_POOL/fixed"`)
	b, pool := newBackend(t, cmds, nil)
	_, err := b.Spawn(context.Background(), spec("worker-1"))
	if err == nil || !strings.Contains(err.Error(), "cleaning up failed too") {
		t.Fatalf("err = %v", err)
	}
	insts, err := b.List(context.Background())
	if err != nil || len(insts) != 1 || insts[0].MachineID != "worker-1" {
		t.Fatalf("list = %+v, %v; want the half-made worker-1 still listed", insts, err)
	}
	os.WriteFile(filepath.Join(pool, "fixed"), nil, 0o644)
	if err := b.Destroy(context.Background(), "worker-1"); err != nil {
		t.Fatal(err)
	}
	if insts, _ := b.List(context.Background()); len(insts) != 0 {
		t.Errorf("after destroy list = %+v", insts)
	}
}

func TestListInstances(t *testing.T) {
	cmds := fakeMachines()
	out := "worker-1 running 10.0.0.5\nworker-2 exited\n\n"
	cmds[CmdList] = sh(`printf "$RAPTIFORMICA_SETTING_OUT"`)
	b, _ := newBackend(t, cmds, map[string]string{"out": out})
	if b.ListsOnlyLocal() {
		t.Error("a backend with list_instances says it lists only its own")
	}
	insts, err := b.List(context.Background())
	if err != nil || len(insts) != 2 {
		t.Fatalf("list = %+v, %v", insts, err)
	}
	if in := insts[0]; in.MachineID != "worker-1" || !in.Running || in.Address != "10.0.0.5" {
		t.Errorf("first = %+v", in)
	}
	if in := insts[1]; in.MachineID != "worker-2" || in.Running {
		t.Errorf("second = %+v", in)
	}

	for _, garbage := range []string{"Cannot connect to the Docker daemon at unix:///var/run/docker.sock.", "worker-1", "../etc running", "worker-1 running not/an/address"} {
		b, _ := newBackend(t, cmds, map[string]string{"out": "worker-0 running\n" + garbage})
		if _, err := b.List(context.Background()); err == nil || !strings.Contains(err.Error(), "list_instances: line 2") {
			t.Errorf("list of %q: err = %v, want it to name line 2", garbage, err)
		}
	}
}

func TestAvailable(t *testing.T) {
	cmds := fakeMachines()
	cmds[CmdAvailable] = sh(`echo "vagrant: command not found" >&2; exit 127`)
	b, _ := newBackend(t, cmds, nil)
	if err := b.Available(context.Background()); err == nil || !strings.Contains(err.Error(), "available: exit status 127: vagrant: command not found") {
		t.Errorf("err = %v", err)
	}
	cmds = fakeMachines()
	cmds[CmdStart] = []string{"no-such-program-here", "up"}
	b, _ = newBackend(t, cmds, nil)
	if err := b.Available(context.Background()); err == nil || !strings.Contains(err.Error(), `start_instance: program "no-such-program-here" not found on this node`) {
		t.Errorf("err = %v", err)
	}
}

func TestSourceIsClonedIntoTheWorkdir(t *testing.T) {
	if _, err := osexec.LookPath("git"); err != nil {
		t.Skip("git is not installed: cannot test source")
	}
	repo := t.TempDir()
	for _, args := range [][]string{
		{"init", "-q"}, {"config", "user.email", "t@example.invalid"}, {"config", "user.name", "t"},
	} {
		gitRun(t, repo, args...)
	}
	os.MkdirAll(filepath.Join(repo, "headless"), 0o755)
	os.WriteFile(filepath.Join(repo, "headless", "Vagrantfile"), []byte("# box\n"), 0o644)
	gitRun(t, repo, "add", ".")
	gitRun(t, repo, "commit", "-q", "-m", "box")

	cmds := fakeMachines()
	cmds[CmdStart] = sh(`cd headless && cp Vagrantfile "$RAPTIFORMICA_SETTING_POOL/$RAPTIFORMICA_MACHINE_ID"`)
	b, pool := newBackend(t, cmds, map[string]string{"source": "file://" + repo})
	if _, err := b.Spawn(context.Background(), spec("worker-1")); err != nil {
		t.Fatal(err)
	}
	if got := readFile(t, filepath.Join(pool, "worker-1")); got != "# box\n" {
		t.Errorf("start_instance saw %q, want the source's file", got)
	}
}

func TestBadSettings(t *testing.T) {
	for _, bad := range []map[string]string{
		{"timeout": "soon"}, {"query_timeout": "-1s"}, {"lead": "perhaps"}, {"Image-Name": "x"},
	} {
		_, err := New(backends.Config{Name: "x", Settings: bad, Commands: fakeMachines()}, backends.Env{ClusterDir: t.TempDir()})
		if err == nil {
			t.Errorf("settings %v accepted", bad)
		}
	}
	cmds := fakeMachines()
	delete(cmds, CmdCleanUp)
	if _, err := New(backends.Config{Name: "x", Commands: cmds}, backends.Env{ClusterDir: t.TempDir()}); err == nil {
		t.Error("a backend without clean_up_instance_command was accepted")
	}
}

func gitRun(t *testing.T, dir string, args ...string) {
	t.Helper()
	c := osexec.Command("git", args...)
	c.Dir = dir
	if out, err := c.CombinedOutput(); err != nil {
		t.Fatalf("git %v: %v: %s", args, err, out)
	}
}

func readFile(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func alive(pid int) bool {
	// Give the kill a moment to land; the group was signalled before Run
	// returned, but the child may not be reaped yet.
	deadline := time.Now().Add(2 * time.Second)
	for time.Now().Before(deadline) {
		if err := syscall.Kill(pid, 0); err != nil {
			return false
		}
		// Killed, but not yet reaped by init (slow on a loaded machine):
		// a zombie runs nothing.
		if stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat"); err == nil {
			if f := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+1:])); len(f) > 0 && f[0] == "Z" {
				return false
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	return true
}

// An overflowing list_instances is an error, never a shorter list (a
// short list makes machines look gone), and it is stopped as soon as it
// overflows rather than left printing until its timeout. The cap itself
// (through io.Copy, which once took 50 MB) is internal/capped's test.
func TestHostileOutputCap(t *testing.T) {
	cmds := fakeMachines()
	cmds[CmdList] = sh(`while :; do echo "worker-1 running 10.0.0.1"; done`)
	b, _ := newBackend(t, cmds, map[string]string{"query_timeout": "20s"})
	start := time.Now()
	insts, err := b.List(context.Background())
	took := time.Since(start)
	if err == nil || !strings.Contains(err.Error(), "list_instances printed more than 64 KiB") {
		t.Errorf("list: got %d machines, error %v; want an error saying list_instances printed more than 64 KiB", len(insts), err)
	}
	if took > 10*time.Second {
		t.Errorf("an overflowing list_instances ran for %s: it was left printing until its timeout", took)
	}
}

// What a machine's commands print goes to its commands.log capped, with a
// note of what was cut.
func TestHostileCommandsLogCap(t *testing.T) {
	cmds := fakeMachines()
	cmds[CmdStart] = sh(`head -c 4000000 /dev/zero | tr '\0' o; head -c 4000000 /dev/zero | tr '\0' e >&2; cp "$RAPTIFORMICA_AGENT_CONFIG" "$RAPTIFORMICA_SETTING_POOL/$RAPTIFORMICA_MACHINE_ID"`)
	b, _ := newBackend(t, cmds, map[string]string{"timeout": "20s"})
	if _, err := b.Spawn(context.Background(), spec("worker-1")); err != nil {
		t.Fatal(err)
	}
	log := readFile(t, filepath.Join(b.dir, "worker-1", "commands.log"))
	if len(log) > 2*outputLimit+4096 {
		t.Errorf("commands.log holds %d bytes after one command, want at most the two %d-byte caps and headers", len(log), outputLimit)
	}
	if n := strings.Count(log, "output cut at 64 KiB"); n != 2 {
		t.Errorf("commands.log notes %d cut outputs, want 2 (stdout and stderr):\n%s", n, log[len(log)-min(len(log), 400):])
	}
}

// TestScaleStaleChecksRunAtOnce: without list_instances, List asks each
// machine's detect_stale_instance; a few run at once, never more than the
// bound, and every machine's answer lands on its own line.
func TestScaleStaleChecksRunAtOnce(t *testing.T) {
	cmds := fakeMachines()
	// Each check marks itself running, counts who else is, and leaves
	// after a moment; a machine whose ID ends in 7 is gone.
	cmds[CmdRunning] = sh(`p="$RAPTIFORMICA_SETTING_POOL"; touch "$p/active-$RAPTIFORMICA_MACHINE_ID"
ls "$p" | grep -c '^active-' >> "$p/seen"; sleep 0.3; rm "$p/active-$RAPTIFORMICA_MACHINE_ID"
case "$RAPTIFORMICA_MACHINE_ID" in *7) exit 1;; esac`)
	b, pool := newBackend(t, cmds, nil)
	const n = 20
	for i := 0; i < n; i++ {
		if _, err := b.Spawn(context.Background(), spec("worker-"+strconv.Itoa(10+i))); err != nil {
			t.Fatal(err)
		}
	}
	insts, err := b.List(context.Background())
	if err != nil || len(insts) != n {
		t.Fatalf("list = %d machines, %v", len(insts), err)
	}
	for i, in := range insts {
		wantID := "worker-" + strconv.Itoa(10+i)
		if in.MachineID != wantID || in.Running == strings.HasSuffix(wantID, "7") {
			t.Errorf("machine %d: %+v, want %s running=%v", i, in, wantID, !strings.HasSuffix(wantID, "7"))
		}
	}
	seen, err := os.ReadFile(filepath.Join(pool, "seen"))
	if err != nil {
		t.Fatal(err)
	}
	most := 0
	for _, f := range strings.Fields(string(seen)) {
		k, _ := strconv.Atoi(f)
		most = max(most, k)
	}
	if most < 2 || most > staleChecks {
		t.Errorf("at most %d checks ran at once, want 2 to %d", most, staleChecks)
	}
}
