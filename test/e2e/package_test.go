package e2e

import (
	"debug/elf"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/raptiformica/raptiformica/internal/arch"
)

// debianImage is a fresh Debian (minbase, made by scripts/rootfs.sh with
// debootstrap) imported as a Docker image, shared by the tests that need a
// clean machine to install into. It is removed with the node images when
// the tests end.
const debianImage = "raptiformica-test/debian:bookworm"

var (
	debianOnce sync.Once
	debianErr  error
)

func needDebianImage(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("end-to-end test (run without -short)")
	}
	docker := needDocker(t)
	debianOnce.Do(func() {
		var out []byte
		out, debianErr = exec.Command("../../scripts/rootfs.sh").Output()
		if debianErr != nil {
			if ee, ok := debianErr.(*exec.ExitError); ok {
				debianErr = &scriptError{"scripts/rootfs.sh", string(ee.Stderr)}
			}
			return
		}
		tarball := strings.TrimSpace(string(out))
		if b, err := exec.Command(docker, "import", "--change", "LABEL raptiformica.node-image=1", tarball, debianImage).CombinedOutput(); err != nil {
			debianErr = &scriptError{"docker import " + tarball, string(b)}
		}
	})
	if debianErr != nil {
		t.Fatal(debianErr)
	}
}

type scriptError struct{ what, out string }

func (e *scriptError) Error() string { return e.what + " failed:\n" + e.out }

// TestDebPackage builds the packages as a user does (`make package`) and
// installs the .deb with dpkg into a fresh Debian: the agent and its Consul
// run there, the unit and the state folder are in place, and removing the
// package keeps the operator's defaults file.
func TestDebPackage(t *testing.T) {
	// Not parallel: packing 135 MB of Consul twice takes both cores for a
	// while, which the chaos tests running in parallel should not share.
	needDebianImage(t)
	root, _ := filepath.Abs("../../")
	mk := exec.Command("make", "package", "PKG_VERSION=0.1.0+test")
	mk.Dir = root
	if out, err := mk.CombinedOutput(); err != nil {
		t.Fatalf("make package: %v\n%s", err, out)
	}
	deb := filepath.Join(root, "dist", "raptiformica_0.1.0+test_amd64.deb")
	rpm := filepath.Join(root, "dist", "raptiformica-0.1.0+test-1.x86_64.rpm")
	armDeb := filepath.Join(root, "dist", "raptiformica_0.1.0+test_arm64.deb")
	armRPM := filepath.Join(root, "dist", "raptiformica-0.1.0+test-1.aarch64.rpm")
	for _, f := range []string{deb, rpm, armDeb, armRPM} {
		if st, err := os.Stat(f); err != nil || st.Size() < 1<<20 {
			t.Fatalf("package %s: %v (a package without its binaries is a few KiB)", f, err)
		}
	}
	// Each architecture's binaries are built for it, and laid out where
	// an agent run with RAPTIFORMICA_ARTIFACTS=dist finds them.
	for a, machine := range map[string]elf.Machine{"amd64": elf.EM_X86_64, "arm64": elf.EM_AARCH64} {
		for _, name := range []string{"raptiformica", "consul"} {
			p := filepath.Join(root, "dist", arch.Dir(a), name)
			f, err := elf.Open(p)
			if err != nil {
				t.Fatalf("%s: %v", p, err)
			}
			if f.Machine != machine || f.Class != elf.ELFCLASS64 {
				t.Errorf("%s is built for %v %v, want %v", p, f.Machine, f.Class, machine)
			}
			f.Close()
		}
	}
	script := `set -e
dpkg -i /dist/` + filepath.Base(deb) + `
raptiformica version
/usr/lib/raptiformica/consul version | head -1
test -f /usr/lib/systemd/system/raptiformica.service && echo unit ok
test "$(stat -c %a /var/lib/raptiformica)" = 700 && echo state ok
grep -q RAPTIFORMICA_FLAGS /etc/default/raptiformica && echo defaults ok
dpkg -r raptiformica >/dev/null
echo "arm64 package: $(dpkg-deb -f /dist/` + filepath.Base(armDeb) + ` Architecture)"
test ! -e /usr/bin/raptiformica && echo removed
test -f /etc/default/raptiformica && echo defaults kept
`
	out, err := exec.Command("docker", "run", "--rm", "-v", filepath.Join(root, "dist")+":/dist:ro", debianImage, "/bin/sh", "-c", script).CombinedOutput()
	if err != nil {
		t.Fatalf("install into a fresh Debian: %v\n%s", err, out)
	}
	for _, want := range []string{"raptiformica ", "Consul v1.22", "unit ok", "state ok", "defaults ok", "removed", "defaults kept", "arm64 package: arm64"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("install output lacks %q:\n%s", want, out)
		}
	}
}
