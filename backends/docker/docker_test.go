package docker

import (
	"strings"
	"testing"

	"github.com/raptiformica/raptiformica/backends"
)

// TestSettingsAreChecked: a docker backend's settings are refused with the
// setting named, before any engine is asked.
func TestSettingsAreChecked(t *testing.T) {
	for _, tc := range []struct {
		settings map[string]string
		want     string
	}{
		{map[string]string{"sockett": "/run/docker.sock"}, `unknown setting "sockett"`},
		{map[string]string{"share_socket": "maybe"}, `setting share_socket: must be "true" or "false"`},
		{map[string]string{"socket": "run/docker.sock"}, "setting socket: must be an absolute path"},
	} {
		_, err := New(backends.Config{Name: "engine", Settings: tc.settings}, backends.Env{Cluster: "c"})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("settings %v: got %v, want %q", tc.settings, err, tc.want)
		}
	}
	be, err := New(backends.Config{Name: "engine", Settings: map[string]string{"socket": "/run/rf-a/docker.sock", "share_socket": "false"}}, backends.Env{Cluster: "c"})
	if err != nil {
		t.Fatal(err)
	}
	if b := be.(*Backend); b.share {
		t.Error(`share_socket = "false" still shares the socket`)
	}
}
