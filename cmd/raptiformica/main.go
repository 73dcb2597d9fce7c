// Command raptiformica is the agent and the operator's CLI of raptiformica:
// decentralized server orchestration over Consul. This package only parses
// flags, wires the packages together and prints; the logic lives in daemon,
// reconcile, rules, backends and provision.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/hashicorp/go-hclog"

	"github.com/raptiformica/raptiformica/backends/builtin"
	"github.com/raptiformica/raptiformica/daemon"
	"github.com/raptiformica/raptiformica/provision"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

const usage = `raptiformica: decentralized server orchestration over Consul

Usage:
  raptiformica up [--dir DIR] [--platform FILE]   boot a local virtual data center and wait for it
  raptiformica down [--dir DIR]                   stop every local machine of DIR
  raptiformica members [--dir DIR] [--json]       list the cluster's members
  raptiformica status [--dir DIR] [--json]        show the leader's last reconcile pass
  raptiformica plan [--dir DIR] [--json]          show what the leader would do now, changing nothing
  raptiformica platform validate FILE             check a platform description
  raptiformica platform apply FILE [--dir DIR]    validate and store a platform description
  raptiformica platform get [--dir DIR]           print the stored platform description
  raptiformica spawn --type T [--backend B]       spawn one machine on top of the description
  raptiformica destroy MACHINE_ID                 remove one machine (replaced if below min)
  raptiformica recover [--dir DIR] [--machine ID] [--yes]
                                                  after lost quorum: re-create the cluster from a survivor
  raptiformica agent --config FILE                run the node agent (what systemd starts)
  raptiformica version

Without --dir, commands talk to $CONSUL_HTTP_ADDR when it is set, and else to
the local cluster in the default folder (` + "`$XDG_DATA_HOME/raptiformica`" + `).
`

func main() {
	os.Exit(runWith(os.Args[1:], os.Stdout, os.Stderr))
}

// errUsage marks errors that are the user's invocation, answered with exit 2.
var errUsage = errors.New("usage")

// runWith runs the command line args and returns the exit code: 0 on
// success, 1 on failure, 2 on a usage error.
func runWith(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	cmds := map[string]func(context.Context, []string, io.Writer) error{
		"agent":    cmdAgent,
		"up":       cmdUp,
		"down":     cmdDown,
		"members":  cmdMembers,
		"status":   cmdStatus,
		"plan":     cmdPlan,
		"platform": cmdPlatform,
		"spawn":    cmdSpawn,
		"destroy":  cmdDestroy,
		"recover":  cmdRecover,
		"version": func(_ context.Context, _ []string, stdout io.Writer) error {
			fmt.Fprintf(stdout, "raptiformica %s (consul %s)\n", version, provision.ConsulVersion)
			return nil
		},
	}
	if args[0] == "help" || args[0] == "-h" || args[0] == "--help" {
		fmt.Fprint(stdout, usage)
		return 0
	}
	cmd, ok := cmds[args[0]]
	if !ok {
		fmt.Fprintf(stderr, "raptiformica: unknown command %q\n\n%s", args[0], usage)
		return 2
	}
	if err := cmd(ctx, args[1:], stdout); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintf(stderr, "raptiformica %s: %v\n", args[0], err)
		if errors.Is(err, errUsage) {
			return 2
		}
		return 1
	}
	return 0
}

func cmdAgent(ctx context.Context, args []string, _ io.Writer) error {
	fs := flag.NewFlagSet("agent", flag.ContinueOnError)
	cfgPath := fs.String("config", "/etc/raptiformica/agent.json", "node config file")
	logLevel := fs.String("log-level", "info", "trace, debug, info, warn or error")
	if err := fs.Parse(args); err != nil {
		return err
	}
	cfg, err := provision.ReadConfig(*cfgPath)
	if err != nil {
		return err
	}
	bin, err := os.Executable()
	if err != nil {
		return err
	}
	bin, _ = filepath.EvalSymlinks(bin)
	log := hclog.New(&hclog.LoggerOptions{Name: "raptiformica", Level: hclog.LevelFromString(*logLevel), Output: os.Stderr})
	a := &daemon.Agent{Config: cfg, Registry: builtin.Registry(), Binary: bin, Log: log}
	return a.Run(ctx)
}
