// Command raptiformica is the agent and the operator's CLI of raptiformica:
// decentralized server orchestration over Consul. This package only parses
// flags, wires the packages together and prints; the logic lives in
// cluster, daemon, reconcile, rules, backends and provision. Commands, help,
// flag parsing and shell completion come from cobra.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/hashicorp/go-hclog"
	"github.com/spf13/cobra"

	"github.com/raptiformica/raptiformica/builtin"
	"github.com/raptiformica/raptiformica/cluster"
	"github.com/raptiformica/raptiformica/daemon"
	"github.com/raptiformica/raptiformica/internal/nodeconfig"
	"github.com/raptiformica/raptiformica/internal/resolve"
	"github.com/raptiformica/raptiformica/internal/telemetry"
	"github.com/raptiformica/raptiformica/internal/termsafe"
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
// success, 1 on failure, 2 on a usage error. Each call builds its own
// command tree, so tests run commands side by side.
func runWith(args []string, stdout, stderr io.Writer) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	// A host without resolv.conf (Android's Linux environments) resolves
	// through its system's properties; elsewhere this changes nothing.
	resolve.Setup(nil)
	root := newRoot()
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.SetArgs(singleDash(root, args))
	c, err := root.ExecuteContextC(ctx)
	code := 1
	switch {
	case err == nil:
		return 0
	case errors.Is(err, errReported):
		return 1
	case errors.Is(err, errUsage), errors.Is(err, cluster.ErrUsage):
		code = 2
	}
	// A script that asked for JSON reads the failure from stdout too; a
	// person still gets the usage on stderr.
	if f := c.Flags().Lookup("json"); f != nil && f.Value.String() == "true" {
		_ = writeJSON(stdout, map[string]any{"error": err.Error(), "command": c.CommandPath(), "exit_code": code})
		if code == 1 {
			return 1
		}
	}
	// Errors quote members and backends: what they wrote is escaped.
	if fmt.Fprintf(stderr, "%s: %s\n", c.CommandPath(), termsafe.Text(err.Error())); code == 2 {
		fmt.Fprintf(stderr, "\n%s", c.UsageString())
	}
	return code
}

// newRoot is the CLI: every command, grouped for the help.
func newRoot() *cobra.Command {
	root := &cobra.Command{
		Use:   "raptiformica",
		Short: "decentralized server orchestration over Consul",
		Long: `raptiformica: decentralized server orchestration over Consul.

Without --dir, commands talk to $CONSUL_HTTP_ADDR when it is set, and else to
the local cluster in the default folder ($XDG_DATA_HOME/raptiformica).

Exit codes: 0 success, 1 failure (the message says why), 2 usage error.`,
		Version:           version,
		Args:              noSubcommand,
		SilenceErrors:     true,
		SilenceUsage:      true,
		CompletionOptions: cobra.CompletionOptions{DisableDefaultCmd: true},
		RunE: func(*cobra.Command, []string) error {
			return fmt.Errorf("%w: missing command", errUsage)
		},
	}
	root.SuggestionsMinimumDistance = 2 // else cobra suggests only commands the word begins
	root.SetVersionTemplate("raptiformica {{.Version}} (consul " + nodeconfig.ConsulVersion + ")\n")
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error {
		return fmt.Errorf("%w: %v", errUsage, err)
	})
	root.AddGroup(&cobra.Group{ID: "cluster", Title: "Cluster:"}, &cobra.Group{ID: "machines", Title: "Machines:"}, &cobra.Group{ID: "overlay", Title: "Overlay:"})
	for group, cmds := range map[string][]*cobra.Command{
		"cluster":  {upCmd(), downCmd(), membersCmd(), statusCmd(), planCmd(), platformCmd(), moduleCmd(), recoverCmd(), tokenCmd(), rotateCmd()},
		"machines": {spawnCmd(), destroyCmd(), adoptCmd(), packageCmd()},
		"overlay":  {joinCmd(), meshCmd(), probeCmd()},
		"":         {agentCmd(), completionCmd(), versionCmd()},
	} {
		for _, c := range cmds {
			c.GroupID = group
			root.AddCommand(c)
		}
	}
	return root
}

// newCommand starts a command: how it is called, what it does, which
// positional arguments it takes, and examples for --help. Its arguments
// complete to nothing, not to file names, unless the command says otherwise.
func newCommand(use, short string, args cobra.PositionalArgs, examples ...string) *cobra.Command {
	return &cobra.Command{Use: use, Short: short, Args: args, ValidArgsFunction: cobra.NoFileCompletions,
		Example: "  " + strings.Join(examples, "\n  ")}
}

// nArgs takes from lo to hi positional arguments; any other count is a
// usage error.
func nArgs(lo, hi int) cobra.PositionalArgs {
	return func(_ *cobra.Command, args []string) error {
		switch {
		case len(args) < lo:
			return fmt.Errorf("%w: missing argument", errUsage)
		case len(args) > hi:
			return fmt.Errorf("%w: unexpected argument %q", errUsage, args[hi])
		}
		return nil
	}
}

// noSubcommand is the arguments of a command that only groups others:
// cobra gets here with a word that names none of them.
func noSubcommand(c *cobra.Command, args []string) error {
	if len(args) == 0 {
		return nil
	}
	msg := fmt.Sprintf("unknown command %q", args[0])
	if s := c.SuggestionsFor(args[0]); len(s) > 0 {
		msg += " (did you mean " + strings.Join(s, " or ") + "?)"
	}
	return fmt.Errorf("%w: %s", errUsage, msg)
}

// singleDash rewrites -name to --name for the long flags of the command
// args call. Go's flag package, which the CLI used before, reads both; the
// systemd unit, the local and docker backends and adoption start
// `agent -config FILE`, and machines upgraded in place keep their units.
// The copy it returns is never nil: given nil, cobra would read os.Args.
func singleDash(root *cobra.Command, args []string) []string {
	out := append([]string{}, args...)
	c, _, err := root.Find(args)
	if err != nil {
		return out
	}
	for i, a := range out {
		if a == "--" {
			break
		}
		name, _, _ := strings.Cut(strings.TrimPrefix(a, "-"), "=")
		if len(name) > 1 && a[0] == '-' && a[1] != '-' && (c.Flags().Lookup(name) != nil || name == "help") {
			out[i] = "-" + a
		}
	}
	return out
}

func agentCmd() *cobra.Command {
	c := newCommand("agent", "run the node agent (what systemd starts)", nArgs(0, 0),
		"raptiformica agent --config /etc/raptiformica/agent.json")
	cfgPath := c.Flags().String("config", nodeConfigPath, "node config file")
	logLevel := c.Flags().String("log-level", "info", "trace, debug, info, warn or error")
	c.RunE = func(c *cobra.Command, _ []string) error {
		cfg, err := nodeconfig.Read(*cfgPath)
		if err != nil {
			return err
		}
		log := hclog.New(&hclog.LoggerOptions{Name: "raptiformica", Level: hclog.LevelFromString(*logLevel), Output: os.Stderr})
		if servers := resolve.Setup(cfg.Resolvers); servers != nil {
			log.Info("this host's resolv.conf names no DNS server: asking these", telemetry.KeyResolvers, servers)
		}
		bin, err := os.Executable()
		if err != nil {
			return err
		}
		bin, _ = filepath.EvalSymlinks(bin)
		a := &daemon.Agent{Config: cfg, Registry: builtin.Registry(), Binary: bin, Version: version, Log: log}
		return a.Run(c.Context())
	}
	return c
}

func versionCmd() *cobra.Command {
	c := newCommand("version", "print the version and the pinned Consul's", nArgs(0, 0),
		"raptiformica version", "raptiformica version --json")
	asJSON := jsonFlag(c)
	c.RunE = func(c *cobra.Command, _ []string) error {
		if *asJSON {
			return writeJSON(c.OutOrStdout(), map[string]string{"version": version, "consul": nodeconfig.ConsulVersion})
		}
		fmt.Fprintf(c.OutOrStdout(), "raptiformica %s (consul %s)\n", version, nodeconfig.ConsulVersion)
		return nil
	}
	return c
}

// jsonFlag is --json, which every command that prints something a script
// reads takes.
func jsonFlag(c *cobra.Command) *bool { return c.Flags().Bool("json", false, "print JSON") }
