package exec

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/raptiformica/raptiformica/backends"
	"github.com/raptiformica/raptiformica/internal/arch"
)

// TestArchExecSetting: an exec backend's arch setting is what its offer
// says its machines are; in the agent contract its commands get the pair
// built for it (and it is not offered where that pair is missing); in the
// SSH contract the adoption is told which architecture to insist on. A
// name Go does not use is refused where the settings are read.
func TestArchExecSetting(t *testing.T) {
	other := "arm64"
	if arch.Native() == other {
		other = "amd64"
	}
	dist := t.TempDir()
	t.Setenv(arch.ArtifactsDirEnv, dist)
	cmds := fakeMachines()
	cmds[CmdStart] = sh(`echo "$RAPTIFORMICA_BINARY $RAPTIFORMICA_CONSUL_BINARY" > "$RAPTIFORMICA_SETTING_POOL/$RAPTIFORMICA_MACHINE_ID"`)
	b, pool := newBackend(t, cmds, map[string]string{SettingArch: other})
	if got := b.MachineArch(); got != other {
		t.Errorf("MachineArch: %q, want %q", got, other)
	}
	err := b.Available(context.Background())
	if err == nil || !strings.Contains(err.Error(), "no build for linux/"+other+" at hand") {
		t.Fatalf("Available without the %s pair: %v", other, err)
	}
	var want []string
	for _, name := range []string{"raptiformica", "consul"} {
		p := filepath.Join(dist, arch.Dir(other), name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, nil, 0o755); err != nil {
			t.Fatal(err)
		}
		want = append(want, p)
	}
	if err := b.Available(context.Background()); err != nil {
		t.Fatalf("Available with the %s pair: %v", other, err)
	}
	if _, err := b.Spawn(context.Background(), spec("worker-1")); err != nil {
		t.Fatal(err)
	}
	if got := strings.TrimSpace(readFile(t, filepath.Join(pool, "worker-1"))); got != strings.Join(want, " ") {
		t.Errorf("start_instance was given %q, want the %s pair %q", got, other, want)
	}

	a := &recordingAdopter{}
	sb, _ := sshBackend(t, a, fakeMachines(), map[string]string{SettingArch: other})
	if _, err := sb.Spawn(context.Background(), spec("worker-2")); err != nil {
		t.Fatal(err)
	}
	if len(a.got) != 1 || a.got[0].Arch != other || a.got[0].Binary != "/bin/rf" {
		t.Errorf("adopted %+v, want this node's binaries and arch %s to insist on", a.got, other)
	}

	_, err = New(backends.Config{Name: "x", Settings: map[string]string{SettingArch: "aarch64"}, Commands: fakeMachines()},
		backends.Env{Cluster: "t", ClusterDir: t.TempDir(), Binary: "/bin/true", ConsulBinary: "/bin/true"})
	if err == nil || !strings.Contains(err.Error(), `setting arch: want one of amd64, arm64, 386, arm (Go's names), got "aarch64"`) {
		t.Errorf("arch = aarch64: %v", err)
	}
}
