package arch

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// ArtifactsDirEnv names a folder searched first for the other
// architectures' binaries (see Artifacts), as dist/ after `make package`.
const ArtifactsDirEnv = "RAPTIFORMICA_ARTIFACTS"

// PackagedArtifacts is where a package's user puts the binaries of other
// architectures, beside the packaged Consul: /usr/lib/raptiformica/linux-arm64/.
const PackagedArtifacts = "/usr/lib/raptiformica"

// Artifacts finds the agent and Consul binaries to install on a machine of
// a given architecture: this machine's own for its own architecture;
// another's are looked for, each binary by its own name, in
// linux-<arch>/ under, in order: $RAPTIFORMICA_ARTIFACTS, the folder of
// this machine's binary of the same kind, and PackagedArtifacts. That
// finds a build tree's bin/linux-arm64/raptiformica, the cache's
// consul-v1.22.0/linux-arm64/consul and a package's
// /usr/lib/raptiformica/linux-arm64/ without a setting.
type Artifacts struct {
	// Binary and Consul are this machine's own, built for Arch.
	Binary, Consul string
	// Arch is their architecture; empty is this process's (runtime.GOARCH).
	Arch string
	// Dirs, when set, replaces the folders searched for the other
	// architectures' binaries (tests).
	Dirs []string
}

// NativeArtifacts is this process's own binary and the Consul given, for
// this machine's architecture, searching the usual folders for the others.
func NativeArtifacts(consul string) (Artifacts, error) {
	self, err := os.Executable()
	if err != nil {
		return Artifacts{}, fmt.Errorf("find this program's binary: %w", err)
	}
	return Artifacts{Binary: self, Consul: consul}, nil
}

// ErrNoBuild means no binary at hand is built for a machine's architecture.
var ErrNoBuild = errors.New("no build")

// arch is the architecture of a's own binaries.
func (a Artifacts) arch() string {
	if a.Arch != "" {
		return a.Arch
	}
	return Native()
}

// For returns the agent and Consul built for arch (Go's name), or an error
// wrapping ErrNoBuild that says what is missing and where it was looked
// for.
func (a Artifacts) For(goarch string) (binary, consul string, err error) {
	if goarch == a.arch() {
		return a.Binary, a.Consul, nil
	}
	if !Valid(goarch) {
		return "", "", fmt.Errorf("%w for linux/%s: raptiformica is built for %s", ErrNoBuild, goarch, strings.Join(Known, ", "))
	}
	var missing []string
	find := func(own, name string) string {
		var looked []string
		for _, dir := range a.searched(own) {
			p := filepath.Join(dir, Dir(goarch), name)
			if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() {
				return p
			}
			looked = append(looked, p)
		}
		missing = append(missing, fmt.Sprintf("%s (looked for %s)", name, strings.Join(looked, ", ")))
		return ""
	}
	binary, consul = find(a.Binary, "raptiformica"), find(a.Consul, "consul")
	if len(missing) > 0 {
		return "", "", fmt.Errorf("%w for linux/%s at hand: no %s; `make package ARCHS=%s` builds them", ErrNoBuild, goarch, strings.Join(missing, " and no "), goarch)
	}
	return binary, consul, nil
}

// searched is the folders in which linux-<arch>/ is looked for, for the
// binary of the kind of own.
func (a Artifacts) searched(own string) []string {
	if a.Dirs != nil {
		return a.Dirs
	}
	var dirs []string
	if d := os.Getenv(ArtifactsDirEnv); d != "" {
		dirs = append(dirs, d)
	}
	if own != "" {
		dirs = append(dirs, filepath.Dir(own))
	}
	if !slices.Contains(dirs, PackagedArtifacts) {
		dirs = append(dirs, PackagedArtifacts)
	}
	return dirs
}
