package procenv

import (
	"slices"
	"testing"
)

// TestChildEnvHasNoSystemdVariables: what systemd gave the agent does not
// reach the programs it starts; the rest does.
func TestChildEnvHasNoSystemdVariables(t *testing.T) {
	in := []string{"PATH=/usr/bin", "NOTIFY_SOCKET=/run/systemd/notify", "WATCHDOG_USEC=60000000", "WATCHDOG_PID=1", "LISTEN_FDS=1", "HOME=/root", "NOTIFY_SOCKETX=kept"}
	if got, want := Without(in), []string{"PATH=/usr/bin", "HOME=/root", "NOTIFY_SOCKETX=kept"}; !slices.Equal(got, want) {
		t.Fatalf("got %q, want %q", got, want)
	}
}
