package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

const unitFile = "../../deploy/systemd/raptiformica.service"

// TestSystemdUnit checks the shipped unit with systemd's own parser. Any
// output counts as a failure: systemd-analyze warns of a misspelt value and
// ignores it, exiting 0.
func TestSystemdUnit(t *testing.T) {
	if testing.Short() {
		t.Skip("needs the built binary (run without -short)")
	}
	analyze := needTool(t, "systemd-analyze", "Debian's systemd package; scripts/testdeps.sh installs it")
	unit, err := os.ReadFile(unitFile)
	if err != nil {
		t.Fatal(err)
	}
	verify := func(src string) string {
		t.Helper()
		f := filepath.Join(t.TempDir(), "raptiformica.service")
		// ExecStart must name an executable that exists here.
		if err := os.WriteFile(f, []byte(strings.ReplaceAll(src, "/usr/bin/raptiformica", binary)), 0o644); err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command(analyze, "verify", f).CombinedOutput()
		if err != nil {
			return string(out) + err.Error()
		}
		return string(out)
	}
	if out := verify(string(unit)); out != "" {
		t.Errorf("systemd-analyze verify %s:\n%s", unitFile, out)
	}
	// The check would catch a typo.
	if out := verify(strings.Replace(string(unit), "Restart=on-failure", "Restart=on-falure", 1)); !strings.Contains(out, "on-falure") {
		t.Errorf("systemd-analyze verify took a misspelt Restart= without a word: %q", out)
	}
	for _, want := range []string{"Type=notify", "WatchdogSec=", "EnvironmentFile=-", "StartLimitBurst=", "Restart=on-failure", "KillSignal=SIGTERM", "StateDirectory=raptiformica", "DeviceAllow=/dev/net/tun rw"} {
		if !strings.Contains(string(unit), want) {
			t.Errorf("%s lacks %s", unitFile, want)
		}
	}
}
