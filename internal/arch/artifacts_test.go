package arch

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestArchArtifactsFound: a machine's own architecture gets this machine's
// binaries; another's are found each by its own name under linux-<arch>/,
// the first folder that has it winning; a missing pair is ErrNoBuild,
// naming each binary missing and where it was looked for.
func TestArchArtifactsFound(t *testing.T) {
	env, tree, pkg := t.TempDir(), t.TempDir(), t.TempDir()
	put := func(dir, a, name string) string {
		p := filepath.Join(dir, Dir(a), name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(a), 0o755); err != nil {
			t.Fatal(err)
		}
		return p
	}
	armAgent := put(tree, "arm64", "raptiformica")
	put(pkg, "arm64", "raptiformica") // shadowed by the tree's
	armConsul := put(pkg, "arm64", "consul")
	put(env, "386", "consul")
	a := Artifacts{Binary: "/self/raptiformica", Consul: "/self/consul", Arch: "amd64", Dirs: []string{env, tree, pkg}}

	if b, c, err := a.For("amd64"); err != nil || b != a.Binary || c != a.Consul {
		t.Errorf("own architecture: %s %s %v", b, c, err)
	}
	if b, c, err := a.For("arm64"); err != nil || b != armAgent || c != armConsul {
		t.Errorf("arm64: %s %s %v, want %s %s", b, c, err, armAgent, armConsul)
	}
	_, _, err := a.For("386")
	if !errors.Is(err, ErrNoBuild) || !strings.Contains(err.Error(), "no build for linux/386 at hand: no raptiformica (looked for "+filepath.Join(env, "linux-386", "raptiformica")) ||
		strings.Contains(err.Error(), "no consul") || !strings.Contains(err.Error(), "ARCHS=386") {
		t.Errorf("386 with only its Consul: %v", err)
	}
	if _, _, err := a.For("riscv64"); !errors.Is(err, ErrNoBuild) || !strings.Contains(err.Error(), "raptiformica is built for amd64, arm64, 386, arm") {
		t.Errorf("an architecture never built: %v", err)
	}
	// A folder where a binary should be is not a binary.
	if err := os.MkdirAll(filepath.Join(env, Dir("arm"), "consul"), 0o755); err != nil {
		t.Fatal(err)
	}
	put(env, "arm", "raptiformica")
	if _, _, err := a.For("arm"); !errors.Is(err, ErrNoBuild) || !strings.Contains(err.Error(), "no consul") {
		t.Errorf("arm with a folder for its Consul: %v", err)
	}
}

// TestArchArtifactsSearchBesideOwn: without Dirs, the other architectures'
// binaries are looked for beside this machine's own of the same kind (a
// build tree's bin/, the cache's consul-v…/), after $RAPTIFORMICA_ARTIFACTS.
func TestArchArtifactsSearchBesideOwn(t *testing.T) {
	env, bin, cache := t.TempDir(), t.TempDir(), t.TempDir()
	t.Setenv(ArtifactsDirEnv, env)
	a := Artifacts{Binary: filepath.Join(bin, "raptiformica"), Consul: filepath.Join(cache, "consul"), Arch: "amd64"}
	if got, want := a.searched(a.Binary), []string{env, bin, PackagedArtifacts}; strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("agent searched in %v, want %v", got, want)
	}
	if got, want := a.searched(a.Consul), []string{env, cache, PackagedArtifacts}; strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("consul searched in %v, want %v", got, want)
	}
}
