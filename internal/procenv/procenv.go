// Package procenv is the environment the agent gives the programs it
// starts: its own, less what systemd gave the agent alone.
package procenv

import (
	"os"
	"strings"
)

// systemdOnly are the variables systemd sets for the service's main
// process. A child that finds them speaks for the agent: Consul and a
// local machine's agent send their own READY=1 and watchdog pings to the
// agent's $NOTIFY_SOCKET (refused and logged under NotifyAccess=main,
// taken for the agent's under NotifyAccess=all), and a child given
// LISTEN_FDS would take the agent's sockets for its own.
var systemdOnly = map[string]bool{
	"NOTIFY_SOCKET": true, "WATCHDOG_USEC": true, "WATCHDOG_PID": true,
	"LISTEN_FDS": true, "LISTEN_PID": true, "LISTEN_FDNAMES": true,
}

// Child is os.Environ() less systemd's variables for the agent alone.
func Child() []string { return Without(os.Environ()) }

// Without is env less systemd's variables for the agent alone.
func Without(env []string) []string {
	out := make([]string, 0, len(env))
	for _, kv := range env {
		name, _, _ := strings.Cut(kv, "=")
		if !systemdOnly[name] {
			out = append(out, kv)
		}
	}
	return out
}
