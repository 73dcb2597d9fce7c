package exec

import (
	"context"
	"os"
	osexec "os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/raptiformica/raptiformica/backends"
)

// An exec backend's source is cloned and its commands run as root on the
// host that runs the order: http:// and git://, which nothing
// authenticates, are refused when the description is read and when the
// backend is built, and so is an abbreviated commit, which pins nothing.
func TestTrustSourceExecRefusesHTTP(t *testing.T) {
	for _, tc := range []struct {
		name     string
		settings map[string]string
		field    string
		want     string
	}{
		{"http", map[string]string{"source": "http://example.org/vms.git"}, "settings source", "not authenticated"},
		{"git", map[string]string{"source": "git://example.org/vms.git"}, "settings source", "not authenticated"},
		{"ext", map[string]string{"source": "ext::sh"}, "settings source", "is not taken"},
		{"bare path", map[string]string{"source": "/srv/git/vms.git"}, "settings source", "is not a git URL"},
		{"short commit", map[string]string{"source": "https://example.org/vms.git", "ref": "0123abcd"}, "settings ref", "abbreviated commit"},
		{"ref alone", map[string]string{"ref": strings.Repeat("ab", 20)}, "settings ref", "needs a source"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := backends.Config{Name: "vm", Type: Type, Settings: tc.settings, Commands: fakeMachines()}
			probs := Check(cfg)
			if len(probs) != 1 || probs[0].Field != tc.field || !strings.Contains(probs[0].Message, tc.want) {
				t.Errorf("Check: got %+v, want one problem at %q containing %q", probs, tc.field, tc.want)
			}
			if _, err := New(cfg, backends.Env{ClusterDir: t.TempDir()}); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("New: got %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

// A source pinned to a commit is cloned at that commit for every spawn,
// whatever its branch says since; a pin the repository lacks fails the
// spawn, which is cleaned up.
func TestTrustSourceExecPinnedCommit(t *testing.T) {
	if _, err := osexec.LookPath("git"); err != nil {
		t.Skip("git is not installed: cannot test source")
	}
	repo := t.TempDir()
	gitRun(t, repo, "init", "-q")
	commit := func(content string) string {
		t.Helper()
		if err := os.WriteFile(filepath.Join(repo, "box"), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		gitRun(t, repo, "add", ".")
		gitRun(t, repo, "-c", "user.email=t@example.invalid", "-c", "user.name=t", "commit", "-q", "-m", content)
		out, err := osexec.Command("git", "-C", repo, "rev-parse", "HEAD").Output()
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(string(out))
	}
	pinned := commit("pinned\n")
	commit("moved on\n")

	cmds := fakeMachines()
	cmds[CmdStart] = sh(`cp box "$RAPTIFORMICA_SETTING_POOL/$RAPTIFORMICA_MACHINE_ID"`)
	b, pool := newBackend(t, cmds, map[string]string{"source": "file://" + repo, "ref": pinned})
	if _, err := b.Spawn(context.Background(), spec("worker-1")); err != nil {
		t.Fatal(err)
	}
	if got := readFile(t, filepath.Join(pool, "worker-1")); got != "pinned\n" {
		t.Errorf("start_instance saw %q, want the pinned commit's file", got)
	}
	if log := readFile(t, filepath.Join(b.dir, "worker-1", "commands.log")); !strings.Contains(log, "commit "+pinned) {
		t.Errorf("commands.log does not name the commit cloned:\n%s", log)
	}

	missing := strings.Repeat("ab", 20)
	b, pool = newBackend(t, cmds, map[string]string{"source": "file://" + repo, "ref": missing})
	_, err := b.Spawn(context.Background(), spec("worker-2"))
	if err == nil || !strings.Contains(err.Error(), "pinned commit "+missing+" is not in the repository") {
		t.Errorf("spawn pinned to a commit the repository lacks: got %v", err)
	}
	if got := readFile(t, filepath.Join(pool, "cleaned")); got != "worker-2\n" {
		t.Errorf("the failed spawn was not cleaned up: %q", got)
	}
}
