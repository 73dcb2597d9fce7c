package provision

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/raptiformica/raptiformica/internal/clock"
	"github.com/raptiformica/raptiformica/internal/state"
	"github.com/raptiformica/raptiformica/rules"
)

// gitRepo makes a real repository in a temporary folder, with files
// committed, and returns its file:// URL and folder.
func gitRepo(t *testing.T, files map[string]string) (string, string) {
	t.Helper()
	if _, err := exec.LookPath("git"); err != nil {
		t.Skip("git is not installed")
	}
	dir := t.TempDir()
	runGit(t, dir, "init", "--quiet", "--initial-branch=main")
	commitFiles(t, dir, files)
	return "file://" + dir, dir
}

func commitFiles(t *testing.T, dir string, files map[string]string) {
	t.Helper()
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	runGit(t, dir, "add", "-A")
	runGit(t, dir, "-c", "user.name=test", "-c", "user.email=test@example.org", "commit", "--quiet", "-m", "change")
}

func runGit(t *testing.T, dir string, args ...string) {
	t.Helper()
	cmd := exec.Command("git", args...)
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("git %v: %v\n%s", args, err, out)
	}
}

func machineType(provs ...rules.Provisioner) rules.MachineType {
	return rules.MachineType{Name: "web", Min: 1, Max: 1, Provisioners: provs}
}

// collect gathers the records a pass reports.
type collect struct{ got []state.Provisioned }

func (c *collect) report(p state.Provisioned) { c.got = append(c.got, p) }

func (c *collect) states() string {
	s := make([]string, len(c.got))
	for i, p := range c.got {
		s[i] = p.State
	}
	return strings.Join(s, ",")
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// A provisioner clones its source and runs its steps in it; unchanged, it
// does not run again; a new commit or a changed step runs it again.
func TestSelfConvergesByChecksum(t *testing.T) {
	url, repo := gitRepo(t, map[string]string{"motd": "hello\n"})
	out := t.TempDir()
	s := &Self{Dir: filepath.Join(t.TempDir(), "provisioners")}
	target := filepath.Join(out, "motd")
	count := filepath.Join(out, "runs")
	p := rules.Provisioner{Name: "motd", Source: url, Steps: [][]string{
		{"cp", "motd", target},
		{"sh", "-c", `echo run >> "$1"`, "sh", count},
	}}
	mt := machineType(p)

	var c collect
	rec := s.Run(context.Background(), "m1", mt, c.report)
	if rec.State != state.ProvisionOK || rec.Checksum != mt.ProvisionChecksum() || rec.Machine != "m1" || rec.MachineType != "web" {
		t.Fatalf("first pass: %+v", rec)
	}
	if len(rec.Provisioners) != 1 || !rec.Provisioners[0].Ran || len(rec.Provisioners[0].Commit) != 40 {
		t.Errorf("first pass results: %+v", rec.Provisioners)
	}
	if got := c.states(); got != "running" {
		t.Errorf("reported %q, want running", got)
	}
	if got := readFile(t, target); got != "hello\n" {
		t.Errorf("installed %q", got)
	}

	// Unchanged: nothing runs, nothing is reported running.
	c = collect{}
	rec = s.Run(context.Background(), "m1", mt, c.report)
	if rec.State != state.ProvisionOK || rec.Provisioners[0].Ran || len(c.got) != 0 {
		t.Errorf("second pass ran again: %+v, reports %q", rec, c.states())
	}
	if got := readFile(t, count); got != "run\n" {
		t.Errorf("runs: %q, want one", got)
	}

	// A new commit in the source: fetched, and the steps run in it.
	commitFiles(t, repo, map[string]string{"motd": "hello again\n"})
	rec = s.Run(context.Background(), "m1", mt, c.report)
	if rec.State != state.ProvisionOK || !rec.Provisioners[0].Ran {
		t.Fatalf("after a commit: %+v", rec)
	}
	if got := readFile(t, target); got != "hello again\n" {
		t.Errorf("after a commit, installed %q", got)
	}

	// A changed step: run again, and the description's checksum changes.
	p.Steps = append(p.Steps, []string{"true"})
	mt2 := machineType(p)
	rec = s.Run(context.Background(), "m1", mt2, c.report)
	if rec.State != state.ProvisionOK || !rec.Provisioners[0].Ran || rec.Checksum == mt.ProvisionChecksum() {
		t.Fatalf("after a changed step: %+v", rec)
	}
	if got := readFile(t, count); got != "run\nrun\nrun\n" {
		t.Errorf("runs: %q, want three", got)
	}

	// The log keeps what the steps printed, by command.
	if log := readFile(t, filepath.Join(s.Dir, "motd.log")); !strings.Contains(log, "$ cp motd "+target) {
		t.Errorf("log: %q", log)
	}
}

// A failing step fails the pass with the last lines it printed, and the
// next pass runs it again; the provisioners after it do not run.
func TestSelfFailureKeepsLastLines(t *testing.T) {
	s := &Self{Dir: t.TempDir()}
	marker := filepath.Join(t.TempDir(), "second-ran")
	mt := machineType(
		rules.Provisioner{Name: "noisy", Steps: [][]string{
			{"true"},
			{"sh", "-c", `i=0; while [ $i -lt 500 ]; do echo "line $i"; i=$((i+1)); done; echo "boom: disk full" >&2; exit 3`},
		}},
		rules.Provisioner{Name: "second", Steps: [][]string{{"touch", marker}}},
	)
	var c collect
	rec := s.Run(context.Background(), "m1", mt, c.report)
	if rec.State != state.ProvisionFailed || rec.Provisioner != "noisy" || rec.Failures != 1 {
		t.Fatalf("got %+v, want noisy failed", rec)
	}
	if !strings.Contains(rec.Error, `provisioner "noisy" step 2 (sh): exit status 3`) {
		t.Errorf("error %q", rec.Error)
	}
	if got := rec.LastLine(); got != "boom: disk full" {
		t.Errorf("last line %q", got)
	}
	if n := strings.Count(rec.Output, "\n") + 1; n != selfOutputLines || !strings.HasPrefix(rec.Output, "line 461\n") {
		t.Errorf("output has %d lines starting %q, want the last %d", n, rec.Output[:20], selfOutputLines)
	}
	if _, err := os.Stat(marker); err == nil {
		t.Error("the provisioner after a failed one ran")
	}
	log := readFile(t, filepath.Join(s.Dir, "noisy.log"))
	if !strings.Contains(log, "line 499\nboom: disk full\nerror: ") {
		t.Errorf("log does not end with the failure: %q", log[max(0, len(log)-200):])
	}
	// Not recorded as done: the next pass runs it again.
	c = collect{}
	s.Run(context.Background(), "m1", mt, c.report)
	if got := c.states(); got != "running" {
		t.Errorf("second pass reported %q, want it to run again", got)
	}
}

// A step over its timeout is killed with what it started in the
// background.
func TestSelfStepTimeoutKillsGroup(t *testing.T) {
	s := &Self{Dir: t.TempDir()}
	pidFile := filepath.Join(t.TempDir(), "pid")
	mt := machineType(rules.Provisioner{Name: "slow", Timeout: 300 * time.Millisecond, Steps: [][]string{
		{"sh", "-c", `sleep 60 & echo $! > "$1"; wait`, "sh", pidFile},
	}})
	start := time.Now()
	rec := s.Run(context.Background(), "m1", mt, func(state.Provisioned) {})
	if rec.State != state.ProvisionFailed || !strings.Contains(rec.Error, "timed out after 300ms") {
		t.Fatalf("got %+v, want a timeout", rec)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("took %s", d)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(readFile(t, pidFile)))
	if err != nil {
		t.Fatal(err)
	}
	// The kill is sent before Run returns; the zombie is reaped by init.
	if err := clock.Poll(context.Background(), clock.Real{}, 10*time.Millisecond, func() (bool, error) {
		return syscall.Kill(pid, 0) != nil || isZombie(pid), nil
	}); err != nil {
		t.Fatal(err)
	}
}

func isZombie(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return true
	}
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	return len(f) > 0 && f[0] == "Z"
}

// A source that cannot be updated any more: its last checkout is used,
// with a warning, so that a provisioned machine does not fail for it; a
// source that was never cloned fails the pass.
func TestSelfSourceUnreachable(t *testing.T) {
	url, repo := gitRepo(t, map[string]string{"a": "1"})
	s := &Self{Dir: t.TempDir()}
	p := rules.Provisioner{Name: "a", Source: url, Steps: [][]string{{"test", "-f", "a"}}}
	if rec := s.Run(context.Background(), "m1", machineType(p), func(state.Provisioned) {}); rec.State != state.ProvisionOK {
		t.Fatalf("first pass: %+v", rec)
	}
	if err := os.RemoveAll(repo); err != nil {
		t.Fatal(err)
	}
	rec := s.Run(context.Background(), "m1", machineType(p), func(state.Provisioned) {})
	if rec.State != state.ProvisionOK || rec.Provisioners[0].Ran || !strings.Contains(rec.Provisioners[0].Warning, "could not update the source") {
		t.Errorf("unreachable source with a checkout: %+v", rec)
	}
	p.Name = "b"
	rec = s.Run(context.Background(), "m1", machineType(p), func(state.Provisioned) {})
	if rec.State != state.ProvisionFailed || !strings.Contains(rec.Error, "get "+url+": git clone") || !strings.Contains(rec.Output, "does not appear to be a git repository") {
		t.Errorf("unreachable source without a checkout: %+v", rec)
	}
	if _, err := os.Stat(filepath.Join(s.Dir, "b.clone")); err == nil {
		t.Error("a failed clone was left behind")
	}
}

// A provisioner whose source changes to another repository is cloned
// afresh from the new one.
func TestSelfSourceChanged(t *testing.T) {
	url1, _ := gitRepo(t, map[string]string{"which": "one\n"})
	url2, _ := gitRepo(t, map[string]string{"which": "two\n"})
	s := &Self{Dir: t.TempDir()}
	got := filepath.Join(t.TempDir(), "which")
	for _, tc := range []struct{ url, want string }{{url1, "one\n"}, {url2, "two\n"}} {
		p := rules.Provisioner{Name: "w", Source: tc.url, Steps: [][]string{{"cp", "which", got}}}
		if rec := s.Run(context.Background(), "m1", machineType(p), func(state.Provisioned) {}); rec.State != state.ProvisionOK {
			t.Fatalf("%s: %+v", tc.url, rec)
		}
		if b := readFile(t, got); b != tc.want {
			t.Errorf("%s: installed %q want %q", tc.url, b, tc.want)
		}
	}
}

// Converge retries a failed pass after its backoff until it succeeds, and
// reports each state on the way.
func TestSelfConvergeRetries(t *testing.T) {
	s := &Self{Dir: t.TempDir(), Backoff: clock.Backoff{Initial: time.Millisecond, Max: time.Millisecond}}
	flag := filepath.Join(t.TempDir(), "ready")
	mt := machineType(rules.Provisioner{Name: "wait", Steps: [][]string{{"test", "-f", flag}}})
	var c collect
	err := s.Converge(context.Background(), "m1", mt, func(p state.Provisioned) {
		c.report(p)
		if p.State == state.ProvisionFailed && p.Failures == 2 {
			os.WriteFile(flag, nil, 0o644)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := c.states(), "running,failed,running,failed,running,ok"; got != want {
		t.Errorf("states %q want %q", got, want)
	}
	if last := c.got[len(c.got)-1]; last.Failures != 0 || !last.ReadyFor(mt.ProvisionChecksum()) {
		t.Errorf("last record %+v", last)
	}
	if c.got[2].Failures != 1 {
		t.Errorf("a retry's running record says %d failures, want 1", c.got[2].Failures)
	}
}

// A pass cut short (ctx ended: the agent stops, the description changes)
// leaves nothing recorded as done: the next pass runs the steps again.
func TestSelfCancelledPassRunsAgain(t *testing.T) {
	s := &Self{Dir: t.TempDir()}
	tmp := t.TempDir()
	count, fast := filepath.Join(tmp, "count"), filepath.Join(tmp, "fast")
	mt := machineType(rules.Provisioner{Name: "c", Steps: [][]string{
		{"sh", "-c", `echo x >> "$1"; [ -f "$2" ] || sleep 60`, "sh", count, fast},
	}})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	err := s.Converge(ctx, "m1", mt, func(p state.Provisioned) {
		if p.State == state.ProvisionRunning {
			time.AfterFunc(100*time.Millisecond, cancel)
		}
	})
	if err != context.Canceled {
		t.Fatalf("got %v, want context.Canceled", err)
	}
	if err := os.WriteFile(fast, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	var c collect
	rec := s.Run(context.Background(), "m1", mt, c.report)
	if rec.State != state.ProvisionOK || c.states() != "running" {
		t.Errorf("after a cut pass: %+v, reports %q; want it run again", rec, c.states())
	}
	if got := readFile(t, count); got != "x\nx\n" {
		t.Errorf("ran %q, want twice", got)
	}
}
