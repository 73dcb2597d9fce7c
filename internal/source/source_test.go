package source

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func TestTrustSourceRefusesHTTP(t *testing.T) {
	for _, tc := range []struct {
		src  string
		want string // empty: accepted
	}{
		{"file:///srv/git/web.git", ""},
		{"https://github.com/vdloo/puppetfiles", ""},
		{"ssh://git@example.org:2222/repo.git", ""},
		{"git@github.com:vdloo/puppetfiles.git", ""},
		{"http://example.org/r.git", "not authenticated"},
		{"git://example.org/r.git", "not authenticated"},
		{"HTTPS://example.org/r.git", "lower case"},
		{"ext::sh -c touch% /tmp/x", "space or a control character"},
		{"ext::sh", "is not taken"},
		{"fd::3", "is not taken"},
		{"ftp://example.org/r.git", "is not taken"},
		{"", "empty"},
		{"https://", "names a host and a repository"},
		{"ssh://-oProxyCommand=x/r.git", "could be read as an option"},
		{"-u@host:r.git", `starts with "-"`},
		{"/srv/git/web.git", "is not a git URL"},
		{"example.org:r.git", "is not taken"},
		{"file://host/srv/r.git", "absolute path"},
		{"file:///a b", "space or a control character"},
	} {
		err := Check(tc.src)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%q: got %v, want accepted", tc.src, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%q: got %v, want an error containing %q", tc.src, err, tc.want)
		}
	}
}

func TestTrustSourceRef(t *testing.T) {
	for _, tc := range []struct {
		ref    string
		pinned bool
		want   string // empty: accepted
	}{
		{"", false, ""},
		{"main", false, ""},
		{"v1.2", false, ""},
		{"release/2024", false, ""},
		{strings.Repeat("ab", 20), true, ""},
		{strings.Repeat("AB", 20), true, ""},
		{strings.Repeat("0f", 32), true, ""},
		{"0123abc", false, "abbreviated commit"},
		{"-b", false, "neither a full commit"},
		{"a..b", false, "neither a full commit"},
		{"main lock", false, "neither a full commit"},
		{"x.lock", false, "neither a full commit"},
		{"HEAD@{1}", false, "neither a full commit"},
	} {
		err := CheckRef(tc.ref)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%q: got %v, want accepted", tc.ref, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%q: got %v, want an error containing %q", tc.ref, err, tc.want)
		}
		if got := IsCommit(tc.ref); got != tc.pinned {
			t.Errorf("IsCommit(%q) = %v, want %v", tc.ref, got, tc.pinned)
		}
	}
}

// repo makes a repository in a temporary folder with one commit per
// content given, and returns its file:// URL, its folder and the commits.
func repo(t *testing.T, contents ...string) (string, string, []string) {
	t.Helper()
	if _, err := exec.LookPath("git"); err != nil {
		t.Skip("git is not installed")
	}
	dir := t.TempDir()
	git(t, dir, "init", "--quiet", "--initial-branch=main")
	var commits []string
	for _, c := range contents {
		commits = append(commits, commit(t, dir, c))
	}
	return "file://" + dir, dir, commits
}

func commit(t *testing.T, dir, content string) string {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, "which"), []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	git(t, dir, "add", "-A")
	git(t, dir, "-c", "user.name=t", "-c", "user.email=t@example.org", "commit", "--quiet", "-m", content)
	return git(t, dir, "rev-parse", "HEAD")
}

func git(t *testing.T, dir string, args ...string) string {
	t.Helper()
	cmd := exec.Command("git", args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("git %v: %v\n%s", args, err, out)
	}
	return strings.TrimSpace(string(out))
}

func which(t *testing.T, dir string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "which"))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// A pinned commit is what is checked out, on a clone and on every update,
// even when the branch moved on or the commit is no longer on a branch; a
// pin the repository lacks, or a checkout that is not the pin, fails.
func TestTrustSourcePinnedCommitVerified(t *testing.T) {
	url, src, commits := repo(t, "one", "two")
	ctx, g := context.Background(), Git{}

	dir := filepath.Join(t.TempDir(), "clone")
	got, err := g.Clone(ctx, url, commits[0], dir)
	if err != nil || got != commits[0] || which(t, dir) != "one" {
		t.Fatalf("clone pinned to the first commit: got %s, %v, content %q", got, err, which(t, dir))
	}
	// Unchanged pin: kept, without reaching the origin.
	if err := os.Rename(src, src+".gone"); err != nil {
		t.Fatal(err)
	}
	if got, err := g.Update(ctx, dir, commits[0]); err != nil || got != commits[0] {
		t.Errorf("update to the same pin with the origin gone: got %s, %v", got, err)
	}
	if err := os.Rename(src+".gone", src); err != nil {
		t.Fatal(err)
	}
	// A new pin, on no branch any more: fetched and checked out.
	third := commit(t, src, "three")
	git(t, src, "reset", "--quiet", "--hard", commits[1])
	if got, err := g.Update(ctx, dir, strings.ToUpper(third)); err != nil || got != third || which(t, dir) != "three" {
		t.Errorf("update to a new pin: got %s, %v, content %q", got, err, which(t, dir))
	}
	// Unpinned: the remote's HEAD.
	if got, err := g.Update(ctx, dir, ""); err != nil || got != commits[1] || which(t, dir) != "two" {
		t.Errorf("update without a pin: got %s, %v", got, err)
	}
	missing := strings.Repeat("ab", 20)
	if _, err := g.Update(ctx, dir, missing); err == nil || !strings.Contains(err.Error(), "pinned commit "+missing+" is not in the repository") {
		t.Errorf("update to a commit the repository lacks: got %v", err)
	}
	if _, err := g.Clone(ctx, url, missing, filepath.Join(t.TempDir(), "c")); err == nil || !strings.Contains(err.Error(), "not in the repository") {
		t.Errorf("clone of a commit the repository lacks: got %v", err)
	}
	// A checkout that moved off the pin behind its back is caught.
	git(t, dir, "checkout", "--quiet", "--detach", commits[0])
	if _, err := g.Verify(ctx, dir, third); err == nil || !strings.Contains(err.Error(), "checked out commit "+commits[0]+", but the source is pinned to "+third) {
		t.Errorf("verify a checkout off its pin: got %v", err)
	}
	// A branch selects what is cloned and fetched, and pins nothing.
	git(t, src, "branch", "old", commits[0])
	dir = filepath.Join(t.TempDir(), "branch")
	if got, err := g.Clone(ctx, url, "old", dir); err != nil || got != commits[0] {
		t.Errorf("clone of a branch: got %s, %v", got, err)
	}
	git(t, src, "branch", "--force", "old", commits[1])
	if got, err := g.Update(ctx, dir, "old"); err != nil || got != commits[1] {
		t.Errorf("update of a branch: got %s, %v", got, err)
	}
}

// A source the rule refuses is never fetched, and git itself is held to
// the allowlist: a rewrite in the host's git config to http:// is refused
// by git, whatever the caller's environment says.
func TestTrustSourceGitAllowlist(t *testing.T) {
	url, _, _ := repo(t, "one")
	ctx := context.Background()
	if _, err := (Git{}).Clone(ctx, "http://127.0.0.1:1/r.git", "", filepath.Join(t.TempDir(), "c")); err == nil || !strings.Contains(err.Error(), "not authenticated") {
		t.Errorf("clone of http://: got %v", err)
	}
	g := Git{Env: append(os.Environ(),
		"GIT_ALLOW_PROTOCOL=file:http:https:ssh:ext",
		"GIT_CONFIG_COUNT=1",
		"GIT_CONFIG_KEY_0=url.http://127.0.0.1:1/.insteadOf",
		"GIT_CONFIG_VALUE_0="+url,
	)}
	_, err := g.Clone(ctx, url, "", filepath.Join(t.TempDir(), "c"))
	if err == nil || !strings.Contains(err.Error(), "transport 'http' not allowed") {
		t.Errorf("clone rewritten to http://: got %v, want git to refuse the transport", err)
	}
}
