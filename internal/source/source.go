// Package source is the one rule for code that is cloned and run: a
// provisioner's source, an exec backend's, a module's compute and server
// sources and `raptiformica module add URL`. What is cloned there runs as
// root (steps, backend commands), so every such source is held to the same
// rule, checked where a description is read and again before git runs:
//
//   - the URL is file://, https:// or ssh://, or git's scp-like
//     user@host:path, which git speaks over SSH (and which its protocol
//     allowlist counts as ssh). Plain http:// and git://, which nothing
//     authenticates, and git's remote helpers (ext::, fd::) are refused.
//   - every git command runs with GIT_ALLOW_PROTOCOL=file:https:ssh in its
//     environment, so that neither a redirect, a url.insteadOf rewrite in
//     the host's config nor a submodule reaches another transport; it
//     never prompts and never looks for a repository above its folder.
//     Submodules are not fetched.
//   - an optional ref pins what is run: a branch or tag name selects it,
//     and a full commit ID (40 hex digits; 64 for SHA-256 repositories)
//     pins it. A pinned source is checked out at that commit and the
//     checkout's HEAD is verified to be it after every fetch; an
//     abbreviated commit is refused, since it pins nothing.
package source

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"time"
)

// AllowProtocol is git's protocol allowlist for sources, the value of
// GIT_ALLOW_PROTOCOL in every git command this package runs.
const AllowProtocol = "file:https:ssh"

// DefaultTimeout bounds one git command when Git.Timeout is zero: a clone
// of a large repository over a slow link, not a prompt waited on forever.
const DefaultTimeout = 5 * time.Minute

// scpLike is git's "user@host:path" form of an SSH URL: git reads a colon
// before any slash as this form. User and host start with a letter or
// digit, so that neither can be read by ssh as an option.
var scpLike = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9._-]*@[A-Za-z0-9][A-Za-z0-9.-]*:[^:]+$`)

// Check reports why u may not be a source, nil when it may: see the
// package documentation. An empty u is refused; a caller for which a
// source is optional checks only the ones given.
func Check(u string) error {
	if u == "" {
		return errors.New("empty: a source is a git URL such as https://host/repo.git")
	}
	if strings.HasPrefix(u, "-") {
		return fmt.Errorf("%q starts with \"-\"; a git URL never does", u)
	}
	for _, r := range u {
		if r <= ' ' || r == 0x7f {
			return fmt.Errorf("%q has a space or a control character; a git URL has none", u)
		}
	}
	if scpLike.MatchString(u) {
		return nil
	}
	p, err := url.Parse(u)
	if err != nil || p.Scheme == "" {
		return fmt.Errorf("%q is not a git URL such as file:///srv/git/web.git, https://host/repo.git, ssh://host/repo.git or git@host:repo.git", u)
	}
	// Git matches schemes as written; url.Parse lower-cases them.
	if !strings.HasPrefix(u, p.Scheme+":") {
		return fmt.Errorf("%q: write the scheme in lower case, as %s://", u, p.Scheme)
	}
	switch p.Scheme {
	case "file":
		if p.Host != "" || !strings.HasPrefix(p.Path, "/") {
			return fmt.Errorf("%q: a file URL names an absolute path, as file:///srv/git/web.git", u)
		}
	case "https", "ssh":
		if p.Host == "" || p.Path == "" || p.Path == "/" {
			return fmt.Errorf("%q: a %s URL names a host and a repository, as %s://host/repo.git", u, p.Scheme, p.Scheme)
		}
		if strings.HasPrefix(p.Host, "-") || strings.HasPrefix(p.User.Username(), "-") {
			return fmt.Errorf("%q: a host or user starting with \"-\" could be read as an option", u)
		}
	case "http", "git":
		return fmt.Errorf("%q: %s:// is not authenticated and what is cloned runs as root; use https:// or ssh://", u, p.Scheme)
	default:
		return fmt.Errorf("%q: scheme %q is not taken (file://, https://, ssh:// or user@host:path)", u, p.Scheme)
	}
	return nil
}

var (
	fullCommit  = regexp.MustCompile(`^([0-9a-fA-F]{40}|[0-9a-fA-F]{64})$`)
	shortCommit = regexp.MustCompile(`^[0-9a-fA-F]{7,63}$`)
)

// IsCommit reports whether ref is a full commit ID, which pins a source.
func IsCommit(ref string) bool { return fullCommit.MatchString(ref) }

// CheckRef reports why ref may not be a source's ref, nil when it may: a
// full commit ID, a branch or tag name, or empty (the remote's HEAD).
func CheckRef(ref string) error {
	switch {
	case ref == "" || IsCommit(ref):
		return nil
	case shortCommit.MatchString(ref):
		return fmt.Errorf("%q looks like an abbreviated commit, which pins nothing: write all 40 hex digits", ref)
	case len(ref) > 255:
		return fmt.Errorf("ref of %d bytes: a branch or tag name is shorter", len(ref))
	case strings.HasPrefix(ref, "-"), strings.HasPrefix(ref, "/"), strings.HasSuffix(ref, "/"),
		strings.HasSuffix(ref, "."), strings.HasSuffix(ref, ".lock"), strings.Contains(ref, ".."),
		strings.Contains(ref, "//"), strings.Contains(ref, "@{"), ref == "@",
		strings.ContainsFunc(ref, func(r rune) bool { return r <= ' ' || r == 0x7f || strings.ContainsRune(`~^:?*[\`, r) }):
		return fmt.Errorf("%q is neither a full commit (40 hex digits) nor a branch or tag name such as main or v1.2", ref)
	}
	return nil
}

// Env is base with what every git command for a source needs: git's
// protocol allowlist, no prompt on a terminal or through a helper, no
// repository looked for above dir, and ssh in batch mode unless base sets
// its own ssh command. Later entries win (os/exec keeps the last of a
// name), so base cannot undo the allowlist.
func Env(base []string, dir string) []string {
	env := append([]string(nil), base...)
	env = append(env,
		"GIT_ALLOW_PROTOCOL="+AllowProtocol,
		"GIT_TERMINAL_PROMPT=0",
		"GIT_ASKPASS=/bin/false",
		"SSH_ASKPASS=/bin/false",
		"GIT_CEILING_DIRECTORIES="+filepath.Dir(filepath.Clean(dir)),
	)
	if !hasVar(base, "GIT_SSH_COMMAND") {
		env = append(env, "GIT_SSH_COMMAND=ssh -o BatchMode=yes")
	}
	return env
}

func hasVar(env []string, name string) bool {
	for _, kv := range env {
		if k, v, _ := strings.Cut(kv, "="); k == name && v != "" {
			return true
		}
	}
	return false
}

// Git runs the git program for sources, each command in the folder of the
// clone it is about, with Env's environment, in a process group of its
// own that is killed whole when the command's deadline passes or ctx
// ends. The zero value is ready to use. Its methods block until git
// exits.
type Git struct {
	// Program is the git program; empty finds "git" on PATH.
	Program string
	// Timeout bounds each command; zero is DefaultTimeout.
	Timeout time.Duration
	// Env is the environment Env adds to; nil is this process's.
	Env []string
	// Out receives what git prints on both streams; nil drops it.
	Out io.Writer
	// Shallow makes Clone fetch only the commit it checks out when that
	// is not a pinned commit: for a clone read once and removed.
	Shallow bool
}

// Clone clones the source u into dir (made when missing; it must be empty)
// and checks out ref: the remote's HEAD when ref is empty, a branch or
// tag, or a pinned commit, which is then verified. It returns the commit
// checked out. u and ref are checked first: nothing is fetched from a
// source the rule refuses.
func (g Git) Clone(ctx context.Context, u, ref, dir string) (string, error) {
	if err := Check(u); err != nil {
		return "", err
	}
	if err := CheckRef(ref); err != nil {
		return "", err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	args := []string{"clone", "--quiet"}
	if g.Shallow && !IsCommit(ref) {
		args = append(args, "--depth", "1")
	}
	switch {
	case IsCommit(ref):
		args = append(args, "--no-checkout")
	case ref != "":
		args = append(args, "--branch", ref)
	}
	if err := g.run(ctx, dir, nil, append(args, "--", u, ".")...); err != nil {
		return "", err
	}
	if IsCommit(ref) {
		if err := g.checkout(ctx, dir, ref); err != nil {
			return "", err
		}
	}
	return g.Verify(ctx, dir, ref)
}

// Update brings the clone in dir up to date with ref from its origin and
// returns the commit checked out: a branch, tag or the remote's HEAD is
// fetched and the clone reset hard to it; a pinned commit already checked
// out is kept without reaching the origin, another is fetched, checked out
// and verified. The caller checks that the clone's origin (Origin) is the
// source it wants.
func (g Git) Update(ctx context.Context, dir, ref string) (string, error) {
	if err := CheckRef(ref); err != nil {
		return "", err
	}
	if IsCommit(ref) {
		if head, err := g.Head(ctx, dir); err == nil && strings.EqualFold(head, ref) {
			return head, nil
		}
		if err := g.checkout(ctx, dir, ref); err != nil {
			return "", err
		}
		return g.Verify(ctx, dir, ref)
	}
	want := ref
	if want == "" {
		want = "HEAD"
	}
	if err := g.run(ctx, dir, nil, "fetch", "--quiet", "origin", "--", want); err != nil {
		return "", err
	}
	if err := g.run(ctx, dir, nil, "reset", "--quiet", "--hard", "FETCH_HEAD"); err != nil {
		return "", err
	}
	return g.Verify(ctx, dir, ref)
}

// checkout checks out commit in dir, fetching origin's branches and tags
// first when the clone lacks it, and then the commit by its ID (which
// servers that allow it send for a commit no branch or tag leads to).
func (g Git) checkout(ctx context.Context, dir, commit string) error {
	obj := commit + "^{commit}"
	have := func() bool { return g.run(ctx, dir, new(bytes.Buffer), "rev-parse", "--verify", "--quiet", obj) == nil }
	if !have() {
		if err := g.run(ctx, dir, nil, "fetch", "--quiet", "--tags", "origin"); err != nil {
			return err
		}
	}
	if !have() {
		if err := g.run(ctx, dir, nil, "fetch", "--quiet", "origin", "--", commit); err != nil {
			return fmt.Errorf("pinned commit %s is not in the repository: %w", commit, err)
		}
	}
	return g.run(ctx, dir, nil, "-c", "advice.detachedHead=false", "checkout", "--quiet", "--force", "--detach", obj)
}

// Verify returns the commit checked out in dir, and an error when ref pins
// a commit and that is not it.
func (g Git) Verify(ctx context.Context, dir, ref string) (string, error) {
	head, err := g.Head(ctx, dir)
	if err != nil {
		return "", err
	}
	if IsCommit(ref) && !strings.EqualFold(head, ref) {
		return head, fmt.Errorf("checked out commit %s, but the source is pinned to %s", head, strings.ToLower(ref))
	}
	return head, nil
}

// Head returns the commit checked out in dir.
func (g Git) Head(ctx context.Context, dir string) (string, error) {
	var out bytes.Buffer
	if err := g.run(ctx, dir, &out, "rev-parse", "--verify", "--quiet", "HEAD^{commit}"); err != nil {
		return "", fmt.Errorf("no commit checked out: %w", err)
	}
	return strings.TrimSpace(out.String()), nil
}

// Origin returns the URL of the origin of the clone in dir, "" when dir
// holds no clone.
func (g Git) Origin(ctx context.Context, dir string) string {
	if _, err := os.Stat(filepath.Join(dir, ".git")); err != nil {
		return ""
	}
	var out bytes.Buffer
	if g.run(ctx, dir, &out, "config", "--get", "remote.origin.url") != nil {
		return ""
	}
	return strings.TrimSpace(out.String())
}

// run runs git with args in dir. Standard output goes to stdout when
// given, else with standard error to g.Out; the error carries the last
// line git printed on standard error.
func (g Git) run(ctx context.Context, dir string, stdout *bytes.Buffer, args ...string) error {
	timeout := g.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	gctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	prog := g.Program
	if prog == "" {
		prog = "git"
	}
	base := g.Env
	if base == nil {
		base = os.Environ()
	}
	cmd := exec.CommandContext(gctx, prog, args...)
	cmd.Dir, cmd.Env = dir, Env(base, dir)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	// A grandchild that escaped the group and holds the pipe is let go.
	cmd.WaitDelay = 2 * time.Second
	out := g.Out
	if out == nil {
		out = io.Discard
	}
	var last lastLine
	cmd.Stderr = io.MultiWriter(out, &last)
	cmd.Stdout = out
	if stdout != nil {
		cmd.Stdout = stdout
	}
	err := cmd.Run()
	switch {
	case err == nil:
		return nil
	case ctx.Err() == nil && errors.Is(gctx.Err(), context.DeadlineExceeded):
		return fmt.Errorf("git %s timed out after %s", args[0], timeout)
	case last.String() != "":
		return fmt.Errorf("git %s: %w: %s", args[0], err, last.String())
	}
	return fmt.Errorf("git %s: %w", args[0], err)
}

// lastLine keeps the last non-empty line written to it, at most 200
// bytes of it, for an error message.
type lastLine struct {
	cur, last []byte
}

func (l *lastLine) Write(p []byte) (int, error) {
	for _, c := range p {
		if c == '\n' || c == '\r' {
			if len(bytes.TrimSpace(l.cur)) > 0 {
				l.last = append(l.last[:0], l.cur...)
			}
			l.cur = l.cur[:0]
			continue
		}
		if len(l.cur) < 200 {
			l.cur = append(l.cur, c)
		}
	}
	return len(p), nil
}

func (l *lastLine) String() string {
	if s := bytes.TrimSpace(l.cur); len(s) > 0 {
		return string(s)
	}
	return string(bytes.TrimSpace(l.last))
}
