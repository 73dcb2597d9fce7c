package provision

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/raptiformica/raptiformica/internal/capped"
	"github.com/raptiformica/raptiformica/internal/clock"
	"github.com/raptiformica/raptiformica/internal/fsutil"
	"github.com/raptiformica/raptiformica/internal/procenv"
	"github.com/raptiformica/raptiformica/internal/source"
	"github.com/raptiformica/raptiformica/internal/state"
	"github.com/raptiformica/raptiformica/rules"
)

// Defaults of Self's fields.
const (
	// DefaultGitTimeout bounds one git command: a clone of a large
	// repository over a slow link, not a prompt waited on forever.
	DefaultGitTimeout = source.DefaultTimeout
	// selfOutputLimit is how much of a provisioner's output is kept in its
	// log file: the end, where a failure says what went wrong.
	selfOutputLimit = 64 << 10
	// selfOutputLines is how many last lines a record carries.
	selfOutputLines = 40
)

// defaultSelfBackoff is how long Converge waits after consecutive failures:
// a step failing on a transient cause (a mirror down) is retried soon, one
// failing for good does not run every few seconds.
var defaultSelfBackoff = clock.Backoff{Initial: 10 * time.Second, Max: 5 * time.Minute}

// Self runs a machine type's provisioners on the machine it runs on, as
// cloud-init runs per instance. For each provisioner, in order, it clones
// or updates the source into a folder of its own (Dir/<name>) with the git
// program, then runs the steps in that folder, each in a process group of
// its own that its timeout kills.
//
// What ran is recorded by checksum (the source, its resolved commit and
// the steps) in Dir/<name>.json, written atomically: a provisioner that
// succeeded is not run again while its checksum is unchanged, and one whose
// steps or source commit changed runs again (convergence). The end of each
// run's output is kept in Dir/<name>.log.
//
// A Self runs one pass at a time; it is not safe for concurrent use.
type Self struct {
	// Dir is the provisioners' folder, such as <state dir>/provisioners.
	Dir string
	// Git is the git program; empty finds "git" on PATH.
	Git string
	// GitTimeout bounds each git command; zero is DefaultGitTimeout.
	GitTimeout time.Duration
	// Env is added to the environment of every step, after the agent's
	// own.
	Env []string
	// Backoff spaces Converge's retries; the zero value is
	// DefaultSelfBackoff.
	Backoff clock.Backoff
	// Clock times records and retries; nil is the wall clock.
	Clock clock.Clock
}

// selfState is a provisioner's state file.
type selfState struct {
	Checksum string    `json:"checksum"`
	Commit   string    `json:"commit,omitempty"`
	Result   string    `json:"result"`
	Time     time.Time `json:"time"`
}

// Converge runs the provisioners of mt until they have all succeeded,
// retrying a failed pass after a backoff. It blocks until they succeed
// (and returns nil) or ctx ends (and returns ctx's error): a caller whose
// description changed cancels ctx and converges on the new one. report is
// called with every state the machine's provisioning reaches (running,
// failed, ok), from Converge's goroutine.
func (s *Self) Converge(ctx context.Context, machine string, mt rules.MachineType, report func(state.Provisioned)) error {
	bo := s.Backoff
	if bo.Initial <= 0 {
		bo = defaultSelfBackoff
	}
	for failures := 0; ; {
		rec := s.run(ctx, machine, mt, failures, report)
		if err := ctx.Err(); err != nil {
			return err
		}
		report(rec)
		if rec.State == state.ProvisionOK {
			return nil
		}
		failures = rec.Failures
		if err := clock.Sleep(ctx, clock.Or(s.Clock), bo.Delay(failures)); err != nil {
			return err
		}
	}
}

// Run makes one pass over the provisioners of mt and returns its outcome,
// ok or failed; report is given the running states on the way. It blocks
// until the pass ends; when ctx ends, the step running is killed and the
// pass fails.
func (s *Self) Run(ctx context.Context, machine string, mt rules.MachineType, report func(state.Provisioned)) state.Provisioned {
	return s.run(ctx, machine, mt, 0, report)
}

func (s *Self) run(ctx context.Context, machine string, mt rules.MachineType, failures int, report func(state.Provisioned)) state.Provisioned {
	clk := clock.Or(s.Clock)
	rec := state.Provisioned{Machine: machine, MachineType: mt.Name, Checksum: mt.ProvisionChecksum(), Failures: failures}
	for _, p := range mt.Provisioners {
		res, out, err := s.one(ctx, p, func() {
			running := rec
			running.State, running.Provisioner, running.Time = state.ProvisionRunning, p.Name, clk.Now().UTC()
			report(running)
		})
		rec.Provisioners = append(rec.Provisioners, res)
		if err != nil {
			rec.State, rec.Provisioner, rec.Error, rec.Output = state.ProvisionFailed, p.Name, err.Error(), out
			rec.Failures++
			rec.Time = clk.Now().UTC()
			return rec
		}
	}
	rec.State, rec.Failures, rec.Time = state.ProvisionOK, 0, clk.Now().UTC()
	return rec
}

// one brings one provisioner up to date: its source, then its steps unless
// they already succeeded for this checksum. starting is called before the
// steps run. It returns the output's last lines with any error.
func (s *Self) one(ctx context.Context, p rules.Provisioner, starting func()) (state.ProvisionerResult, string, error) {
	res := state.ProvisionerResult{Name: p.Name}
	// The name makes paths: checked here too, whoever built the type.
	if !nameRule(p.Name) {
		return res, "", fmt.Errorf("provisioner %q: not a name (lower-case letters, digits and hyphens)", p.Name)
	}
	if p.Source != "" {
		if err := source.Check(p.Source); err != nil {
			return res, "", fmt.Errorf("provisioner %q source: %w", p.Name, err)
		}
	}
	if err := os.MkdirAll(s.Dir, 0o700); err != nil {
		return res, "", fmt.Errorf("provisioner %q: %w", p.Name, err)
	}
	out := capped.NewTail(selfOutputLimit)
	dir := filepath.Join(s.Dir, p.Name)
	commit, warning, err := s.source(ctx, p, dir, out)
	res.Commit, res.Warning = commit, warning
	if err != nil {
		err = fmt.Errorf("provisioner %q: get %s: %w", p.Name, p.Source, err)
		s.keepLog(p.Name, out, err)
		return res, lastLines(out), err
	}
	sum := runChecksum(p, commit)
	statePath := filepath.Join(s.Dir, p.Name+".json")
	if st, ok := readSelfState(statePath); ok && st.Result == state.ProvisionOK && st.Checksum == sum {
		return res, "", nil
	}
	res.Ran = true
	starting()
	// Running, recorded before the first step: a pass cut short (the agent
	// stopped, the description changed) never leaves an older "ok" behind
	// for steps that half ran.
	if err := s.writeState(statePath, selfState{Checksum: sum, Commit: commit, Result: state.ProvisionRunning}); err != nil {
		return res, "", fmt.Errorf("provisioner %q: %w", p.Name, err)
	}
	timeout := p.Timeout
	if timeout <= 0 {
		timeout = rules.DefaultStepTimeout
	}
	env := append(procenv.Child(), "RAPTIFORMICA_PROVISIONER="+p.Name, "RAPTIFORMICA_PROVISIONER_DIR="+dir)
	env = append(env, s.Env...)
	for i, argv := range p.Steps {
		fmt.Fprintf(out, "$ %s\n", quoteArgv(argv))
		if err := s.step(ctx, dir, argv, env, timeout, out); err != nil {
			err = fmt.Errorf("provisioner %q step %d (%s): %w", p.Name, i+1, argv[0], err)
			s.keepLog(p.Name, out, err)
			if werr := s.writeState(statePath, selfState{Checksum: sum, Commit: commit, Result: state.ProvisionFailed}); werr != nil {
				err = fmt.Errorf("%w (and %v)", err, werr)
			}
			return res, lastLines(out), err
		}
	}
	s.keepLog(p.Name, out, nil)
	if err := s.writeState(statePath, selfState{Checksum: sum, Commit: commit, Result: state.ProvisionOK}); err != nil {
		return res, lastLines(out), fmt.Errorf("provisioner %q: %w", p.Name, err)
	}
	return res, "", nil
}

// step runs one argv in dir and waits for it. Its process group is killed
// when timeout passes or ctx ends, so that what it started in the
// background dies with it.
func (s *Self) step(ctx context.Context, dir string, argv, env []string, timeout time.Duration, out *capped.Tail) error {
	sctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	err := groupCommand(sctx, dir, argv, env, out).Run()
	if err != nil && ctx.Err() == nil && errors.Is(sctx.Err(), context.DeadlineExceeded) {
		return fmt.Errorf("timed out after %s", timeout)
	}
	return err
}

// source clones or updates p's source into dir and returns the commit
// checked out, by the rule for code that is cloned and run (package
// internal/source): the source is checked again, git speaks only its
// allowlist, and a pinned commit is verified after every fetch. A
// repository already there is updated to p's ref; when that fails (the
// remote unreachable for a while) and the source is not pinned, the
// checkout there is used and a warning says so, so that a machine already
// provisioned does not fail for a network blip. A pinned source never runs
// another commit than its pin. Without a source, dir is an empty folder of
// the provisioner's own.
func (s *Self) source(ctx context.Context, p rules.Provisioner, dir string, out *capped.Tail) (commit, warning string, err error) {
	if p.Source == "" {
		return "", "", os.MkdirAll(dir, 0o755)
	}
	g := source.Git{Program: s.Git, Timeout: s.GitTimeout, Out: out}
	if g.Origin(ctx, dir) == p.Source {
		commit, err := g.Update(ctx, dir, p.Ref)
		if err == nil {
			return commit, "", nil
		}
		if !source.IsCommit(p.Ref) {
			if head, herr := g.Head(ctx, dir); herr == nil {
				return head, fmt.Sprintf("could not update the source (%v); its last checkout, commit %.12s, was used", err, head), nil
			}
		}
		// No usable checkout: cloned again below.
	}
	// Cloned beside the folder and moved into place, so that a clone cut
	// short is never taken for the source.
	tmp := dir + ".clone"
	if err := os.RemoveAll(tmp); err != nil {
		return "", "", err
	}
	commit, err = g.Clone(ctx, p.Source, p.Ref, tmp)
	if err != nil {
		os.RemoveAll(tmp)
		return "", "", err
	}
	if err := os.RemoveAll(dir); err != nil {
		return "", "", err
	}
	if err := os.Rename(tmp, dir); err != nil {
		return "", "", err
	}
	return commit, "", nil
}

// groupCommand is argv run in dir in a process group of its own, killed
// whole when ctx ends, its output (both streams, in order) into out.
func groupCommand(ctx context.Context, dir string, argv, env []string, out *capped.Tail) *exec.Cmd {
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Dir, cmd.Env = dir, env
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	// A grandchild that escaped the group and holds the pipe is let go.
	cmd.WaitDelay = 2 * time.Second
	cmd.Stdout, cmd.Stderr = out, out
	return cmd
}

func (s *Self) writeState(path string, st selfState) error {
	st.Time = clock.Or(s.Clock).Now().UTC()
	b, _ := json.Marshal(st)
	return fsutil.WriteFileAtomic(path, b, 0o600)
}

// keepLog writes the output's end to Dir/<name>.log, for an operator on
// the machine. It is a courtesy: a failure to write it fails nothing.
func (s *Self) keepLog(name string, out *capped.Tail, err error) {
	b := out.Bytes()
	if d := out.Dropped(); d > 0 {
		b = append([]byte(fmt.Sprintf("[%d bytes before this not kept]\n", d)), b...)
	}
	if err != nil {
		b = append(b, "error: "+err.Error()+"\n"...)
	}
	_ = fsutil.WriteFileAtomic(filepath.Join(s.Dir, name+".log"), b, 0o600)
}

func readSelfState(path string) (selfState, bool) {
	b, err := os.ReadFile(path)
	if err != nil {
		return selfState{}, false
	}
	var st selfState
	if json.Unmarshal(b, &st) != nil {
		return selfState{}, false
	}
	return st, true
}

// runChecksum identifies one run of a provisioner: its source, the commit
// resolved from it and its steps.
func runChecksum(p rules.Provisioner, commit string) string {
	b, _ := json.Marshal(struct {
		Source string     `json:"source"`
		Commit string     `json:"commit"`
		Steps  [][]string `json:"steps"`
	}{p.Source, commit, p.Steps})
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// lastLines is what a record carries of an output: its last lines, at
// most state.MaxProvisionedOutput bytes of them.
func lastLines(out *capped.Tail) string {
	s := out.LastLines(selfOutputLines)
	for len(s) > state.MaxProvisionedOutput {
		i := strings.IndexByte(s, '\n')
		if i < 0 {
			return s[len(s)-state.MaxProvisionedOutput:]
		}
		s = s[i+1:]
	}
	return s
}

// quoteArgv spells an argv for a log, each word quoted when it needs it.
func quoteArgv(argv []string) string {
	words := make([]string, len(argv))
	for i, a := range argv {
		if a == "" || strings.ContainsAny(a, " \t\n\"'\\$`;&|<>()*?[]#~") {
			a = strconv.Quote(a)
		}
		words[i] = a
	}
	return strings.Join(words, " ")
}

// nameRule is rules' name rule: a DNS label.
func nameRule(s string) bool {
	if len(s) == 0 || len(s) > 63 || s[0] == '-' || s[len(s)-1] == '-' {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-') {
			return false
		}
	}
	return true
}
