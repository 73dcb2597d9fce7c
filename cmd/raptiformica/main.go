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

	"github.com/raptiformica/raptiformica/builtin"
	"github.com/raptiformica/raptiformica/daemon"
	"github.com/raptiformica/raptiformica/internal/nodeconfig"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	os.Exit(runWith(os.Args[1:], os.Stdout, os.Stderr))
}

// errUsage marks errors that are the user's invocation, answered with exit 2.
var errUsage = errors.New("usage")

// errReported is a failure the command already reported on stdout (as
// JSON): exit 1 without repeating it.
var errReported = errors.New("failure reported")

// runWith runs the command line args and returns the exit code: 0 on
// success, 1 on failure, 2 on a usage error.
func runWith(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage())
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if args[0] == "help" || args[0] == "-h" || args[0] == "--help" {
		fmt.Fprint(stdout, usage())
		return 0
	}
	c := findCommand(args[0])
	if c == nil || c.run == nil {
		fmt.Fprintf(stderr, "raptiformica: unknown command %q\n\n%s", args[0], usage())
		return 2
	}
	cmd := c.run
	if err := cmd(ctx, args[1:], stdout); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		if errors.Is(err, errReported) {
			return 1
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
	fs := newFlagSet("agent")
	cfgPath := fs.String("config", "/etc/raptiformica/agent.json", "node config file")
	logLevel := fs.String("log-level", "info", "trace, debug, info, warn or error")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	cfg, err := nodeconfig.Read(*cfgPath)
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
