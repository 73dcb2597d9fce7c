package cluster

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// `module add URL` and `module validate URL` clone what they are given:
// http:// and git://, which nothing authenticates, and git's remote
// helpers are refused before git runs (and before the cluster is asked
// anything), and so is a module file whose own sources are such.
func TestTrustSourceModuleAddRefusesHTTP(t *testing.T) {
	ctx := context.Background()
	for _, src := range []string{"http://127.0.0.1:1/m.git", "git://127.0.0.1:1/m.git", "ext::sh -c true"} {
		want := "not authenticated"
		if strings.HasPrefix(src, "ext") {
			want = "a space or a control character"
		}
		if _, err := FetchModule(ctx, src, ""); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("module validate %s: got %v, want an error containing %q", src, err, want)
		}
		if _, _, err := AddModule(ctx, nil, execOptions(t), src, ""); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("module add %s: got %v, want an error containing %q", src, err, want)
		}
	}
	dir := writeModule(t, "web", `{"raptiformica_api_version": "0.1",
 "server": {"headless": {"web": {"source": "http://example.org/web.git", "bootstrap": "./install.sh"}}}}`)
	want := filepath.Join(dir, moduleFile) + `:2,44: server.headless.web.source: "http://example.org/web.git": http:// is not authenticated`
	if _, err := FetchModule(ctx, dir, ""); err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("a module with an http:// source: got %v, want %q", err, want)
	}
}

// `module add URL --ref COMMIT` reads the module at that commit, whatever
// the branch says since, and fails when the repository lacks it.
func TestTrustSourceModuleAddPinned(t *testing.T) {
	if _, err := exec.LookPath("git"); err != nil {
		t.Skip("git is not installed")
	}
	repo := writeModule(t, "pinned-module", strings.Replace(webModule, `"box"`, `"old"`, 1))
	git := func(args ...string) string {
		t.Helper()
		out, err := exec.Command("git", append([]string{"-C", repo}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("git %v: %v: %s", args, err, out)
		}
		return strings.TrimSpace(string(out))
	}
	commit := func() string {
		t.Helper()
		git("add", ".")
		git("-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "m")
		return git("rev-parse", "HEAD")
	}
	git("init", "-q")
	first := commit()
	if err := os.WriteFile(filepath.Join(repo, moduleFile), []byte(webModule), 0o644); err != nil {
		t.Fatal(err)
	}
	commit()

	ctx := context.Background()
	m, err := FetchModule(ctx, "file://"+repo, first)
	if err != nil || !strings.Contains(m.Summary(), "compute old/server") {
		t.Fatalf("pinned to the first commit: got %v, %v; want compute old/server", m, err)
	}
	if m, err := FetchModule(ctx, "file://"+repo, ""); err != nil || !strings.Contains(m.Summary(), "compute box/server") {
		t.Errorf("unpinned: got %v, %v; want the newest commit's compute box/server", m, err)
	}
	missing := strings.Repeat("ab", 20)
	if _, err := FetchModule(ctx, "file://"+repo, missing); err == nil || !strings.Contains(err.Error(), "pinned commit "+missing+" is not in the repository") {
		t.Errorf("pinned to a commit the repository lacks: got %v", err)
	}
	if _, err := FetchModule(ctx, "file://"+repo, first[:12]); err == nil || !strings.Contains(err.Error(), "abbreviated commit") {
		t.Errorf("pinned to an abbreviated commit: got %v", err)
	}
}
