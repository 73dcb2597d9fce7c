package provision

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/raptiformica/raptiformica/internal/state"
	"github.com/raptiformica/raptiformica/rules"
)

// head is the commit checked out in the repository at dir.
func head(t *testing.T, dir string) string {
	t.Helper()
	b, err := exec.Command("git", "-C", dir, "rev-parse", "HEAD").Output()
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

// A provisioner pinned to a commit runs that commit's steps, whatever the
// branch says since; a new pin runs again; a pin already fetched needs no
// remote; and a pin that cannot be fetched fails the pass rather than run
// the checkout there, as an unpinned source would.
func TestTrustSourceSelfPinnedCommit(t *testing.T) {
	url, repo := gitRepo(t, map[string]string{"which": "one\n"})
	first := head(t, repo)
	commitFiles(t, repo, map[string]string{"which": "two\n"})
	second := head(t, repo)

	s := &Self{Dir: t.TempDir()}
	got := filepath.Join(t.TempDir(), "which")
	run := func(ref string) state.Provisioned {
		t.Helper()
		p := rules.Provisioner{Name: "w", Source: url, Ref: ref, Steps: [][]string{{"cp", "which", got}}}
		return s.Run(context.Background(), "m1", machineType(p), func(state.Provisioned) {})
	}
	if rec := run(first); rec.State != state.ProvisionOK || rec.Provisioners[0].Commit != first || readFile(t, got) != "one\n" {
		t.Fatalf("pinned to the first commit: %+v, installed %q", rec, readFile(t, got))
	}
	if rec := run(first); rec.State != state.ProvisionOK || rec.Provisioners[0].Ran {
		t.Errorf("the same pin again ran again: %+v", rec)
	}
	if rec := run(second); rec.State != state.ProvisionOK || !rec.Provisioners[0].Ran || readFile(t, got) != "two\n" {
		t.Errorf("a new pin: %+v, installed %q", rec, readFile(t, got))
	}

	if err := os.RemoveAll(repo); err != nil {
		t.Fatal(err)
	}
	if rec := run(first); rec.State != state.ProvisionOK || rec.Provisioners[0].Commit != first || rec.Provisioners[0].Warning != "" || readFile(t, got) != "one\n" {
		t.Errorf("a pin already fetched, the remote gone: %+v, installed %q", rec, readFile(t, got))
	}
	missing := strings.Repeat("ab", 20)
	rec := run(missing)
	if rec.State != state.ProvisionFailed || !strings.Contains(rec.Error, "get "+url) || readFile(t, got) != "one\n" {
		t.Errorf("a pin that cannot be fetched: %+v, installed %q", rec, readFile(t, got))
	}
}
