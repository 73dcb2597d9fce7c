package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"sort"
	"strings"

	"github.com/raptiformica/raptiformica/internal/nodeconfig"
)

// command is one entry of the CLI: how it is called, what it does, examples
// for --help, and what runs it. "platform validate" and its siblings are
// entries of their own for help and completion; they run through "platform".
type command struct {
	name     string
	args     string
	summary  string
	examples []string
	run      func(context.Context, []string, io.Writer) error
}

// commands is the CLI, in the order usage lists it. It is filled in init:
// the commands' own help refers back to it.
var commands []command

func init() {
	commands = []command{
		{name: "up", args: "[--dir DIR] [--platform FILE] [--timeout D]", summary: "boot a local virtual data center and wait for it",
			examples: []string{"raptiformica up", "raptiformica up --platform deploy/examples/docker.hcl --dir /tmp/dc2"}, run: cmdUp},
		{name: "down", args: "[--dir DIR]", summary: "stop every local machine of DIR (the description stays for the next up)",
			examples: []string{"raptiformica down", "raptiformica down --dir /tmp/dc2"}, run: cmdDown},
		{name: "members", args: "[--dir DIR] [--json]", summary: "list the cluster's members with type, state, role and the leader",
			examples: []string{"raptiformica members", "raptiformica members --json | jq -r '.[] | select(.status != \"alive\") | .name'"}, run: cmdMembers},
		{name: "status", args: "[--dir DIR] [--json]", summary: "show the leader's last reconcile pass and what blocks it (exit 1 while quorum is lost)",
			examples: []string{"raptiformica status", "raptiformica status --json | jq .reconcile.types"}, run: cmdStatus},
		{name: "plan", args: "[--dir DIR] [--json]", summary: "show what the leader would do now, changing nothing",
			examples: []string{"raptiformica plan", "raptiformica plan --json | jq '.actions | length'"}, run: cmdPlan},
		{name: "platform", args: "validate|apply|get ...", summary: "check, store or print the platform description", run: cmdPlatform},
		{name: "platform validate", args: "FILE [--json]", summary: "check a platform description: every problem with file, line and field",
			examples: []string{"raptiformica platform validate platform.hcl", "raptiformica platform validate --json platform.hcl"}},
		{name: "platform apply", args: "FILE [--dir DIR] [--json]", summary: "validate, then store a description as the next version; the leader acts at once",
			examples: []string{"raptiformica platform apply platform.hcl", "raptiformica platform apply --json platform.hcl | jq .version"}},
		{name: "platform get", args: "[--dir DIR]", summary: "print the stored platform description",
			examples: []string{"raptiformica platform get > platform.hcl"}},
		{name: "spawn", args: "--type T [--backend B] [--dir DIR] [--json]", summary: "spawn one machine on top of the description (never scaled down)",
			examples: []string{"raptiformica spawn --type worker", "raptiformica spawn --type worker --backend docker --json | jq -r .machine_id"}, run: cmdSpawn},
		{name: "destroy", args: "MACHINE_ID [--dir DIR]", summary: "remove one machine gracefully (replaced if that takes its type below min)",
			examples: []string{"raptiformica destroy worker-3f2a9c1d"}, run: cmdDestroy},
		{name: "recover", args: "[--dir DIR] [--machine ID] [--yes] [--timeout D]", summary: "after lost quorum: re-create the cluster from a surviving server",
			examples: []string{"raptiformica recover", "raptiformica recover --machine server-0a1b2c3d --yes"}, run: cmdRecover},
		{name: "adopt", args: "[user@]host[:port] --type T [--identity FILE] [--known-hosts FILE] [--fingerprint SHA256:...] [--jump HOST]",
			summary: "make a machine reachable over SSH a node: upload, configure, start, wait until it joins (the original's slave)",
			examples: []string{"raptiformica adopt root@192.0.2.20 --type worker", "raptiformica adopt deploy@nas.home:2222 --type storage --identity ~/.ssh/id_ed25519",
				"raptiformica adopt root@10.0.0.5 --type worker --jump root@bastion.example.org"}, run: cmdAdopt},
		{name: "join", args: "HOST[:PORT] [--agent ADDR] [--timeout D]",
			summary:  "link this machine's overlay to a member (default port 9651); with --agent, have that member dial a machine instead (the original's inject)",
			examples: []string{"raptiformica join vps1.example.org", "raptiformica join 192.0.2.20:9651 --agent 10.0.0.5:9550"}, run: cmdJoin},
		{name: "mesh", args: "[--agent ADDR] [--json] [--secret]", summary: "show this machine's overlay: address, links, and why it has none",
			examples: []string{"raptiformica mesh", "raptiformica mesh --json | jq '.peers[] | select(.up | not)'", "raptiformica mesh --secret"}, run: cmdMesh},
		{name: "probe", args: "HOST[:PORT] [--rounds N] [--for D] | --serve [--listen ADDR]",
			summary:  "measure round-trip time and throughput to a machine running probe --serve (default port 9700), over the mesh or not",
			examples: []string{"raptiformica probe --serve", "raptiformica probe '[200:1234::1]'", "raptiformica probe 10.0.0.5:9700 --for 10s"}, run: cmdProbe},
		{name: "agent", args: "[--config FILE] [--log-level L]", summary: "run the node agent (what systemd starts)",
			examples: []string{"raptiformica agent --config /etc/raptiformica/agent.json"}, run: cmdAgent},
		{name: "completion", args: "bash|zsh|fish", summary: "print a shell completion script",
			examples: []string{"source <(raptiformica completion bash)", "raptiformica completion zsh > \"${fpath[1]}/_raptiformica\"", "raptiformica completion fish > ~/.config/fish/completions/raptiformica.fish"}, run: cmdCompletion},
		{name: "version", args: "[--json]", summary: "print the version and the pinned Consul's",
			examples: []string{"raptiformica version"}, run: cmdVersion},
	}
}

func findCommand(name string) *command {
	for i := range commands {
		if commands[i].name == name {
			return &commands[i]
		}
	}
	return nil
}

// usage is the top-level help.
func usage() string {
	var b strings.Builder
	b.WriteString("raptiformica: decentralized server orchestration over Consul\n\nUsage:\n")
	for _, c := range commands {
		if c.name == "platform" {
			continue // its subcommands are listed instead
		}
		fmt.Fprintf(&b, "  raptiformica %-18s %s\n", c.name, c.summary)
	}
	b.WriteString(`
'raptiformica COMMAND --help' shows a command's flags and examples.

Without --dir, commands talk to $CONSUL_HTTP_ADDR when it is set, and else to
the local cluster in the default folder ($XDG_DATA_HOME/raptiformica).

Exit codes: 0 success, 1 failure (the message says why), 2 usage error.
`)
	return b.String()
}

// flagCapture, when set, is given every command's flag set, complete, in
// place of parsing it; the completion scripts are written from them.
var flagCapture func(name string, fs *flag.FlagSet)

// newFlagSet makes a command's flag set, whose --help prints the command's
// usage, flags and examples.
func newFlagSet(name string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.Usage = func() {
		w := fs.Output()
		if c := findCommand(name); c != nil {
			fmt.Fprintf(w, "Usage: raptiformica %s %s\n\n%s.\n", c.name, c.args, strings.ToUpper(c.summary[:1])+c.summary[1:])
			if hasFlags(fs) {
				fmt.Fprintln(w, "\nFlags:")
				fs.PrintDefaults()
			}
			if len(c.examples) > 0 {
				fmt.Fprintln(w, "\nExamples:")
				for _, e := range c.examples {
					fmt.Fprintf(w, "  %s\n", e)
				}
			}
			return
		}
		fmt.Fprintf(w, "Usage of raptiformica %s:\n", name)
		fs.PrintDefaults()
	}
	return fs
}

// parseFlags parses a command's flags; a bad flag is a usage error (exit 2).
func parseFlags(fs *flag.FlagSet, args []string) error {
	if flagCapture != nil {
		// Completion only wants the flags: stop the command here.
		flagCapture(fs.Name(), fs)
		return flag.ErrHelp
	}
	err := fs.Parse(flagsFirst(fs, args))
	if err != nil && !errors.Is(err, flag.ErrHelp) {
		return fmt.Errorf("%w: %v", errUsage, err)
	}
	return err
}

// flagsFirst moves flags ahead of positional arguments, so that
// `adopt root@host --type worker` reads as it is written; Go's flag package
// stops at the first positional one. "--" ends the flags as usual.
func flagsFirst(fs *flag.FlagSet, args []string) []string {
	var flags, pos []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			pos = append(pos, args[i+1:]...)
			break
		}
		if len(a) < 2 || a[0] != '-' {
			pos = append(pos, a)
			continue
		}
		flags = append(flags, a)
		name := strings.TrimLeft(a, "-")
		if strings.Contains(name, "=") {
			continue
		}
		f := fs.Lookup(name)
		if f == nil {
			continue // Parse reports it
		}
		if b, ok := f.Value.(interface{ IsBoolFlag() bool }); ok && b.IsBoolFlag() {
			continue
		}
		if i+1 < len(args) {
			flags = append(flags, args[i+1])
			i++
		}
	}
	if len(pos) == 0 {
		return flags
	}
	return append(append(flags, "--"), pos...)
}

func hasFlags(fs *flag.FlagSet) bool {
	n := 0
	fs.VisitAll(func(*flag.Flag) { n++ })
	return n > 0
}

func cmdVersion(_ context.Context, args []string, out io.Writer) error {
	fs := newFlagSet("version")
	asJSON := fs.Bool("json", false, "print JSON")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *asJSON {
		return writeJSON(out, map[string]string{"version": version, "consul": nodeconfig.ConsulVersion})
	}
	fmt.Fprintf(out, "raptiformica %s (consul %s)\n", version, nodeconfig.ConsulVersion)
	return nil
}

// completionFlag is one flag of a command, for the completion scripts.
type completionFlag struct{ name, usage string }

// cliFlags runs every command up to its flag parsing, which flagCapture
// turns into a return, and collects each command's flags.
func cliFlags() map[string][]completionFlag {
	out := map[string][]completionFlag{}
	flagCapture = func(name string, fs *flag.FlagSet) {
		fs.VisitAll(func(f *flag.Flag) {
			out[name] = append(out[name], completionFlag{f.Name, strings.SplitN(f.Usage, "\n", 2)[0]})
		})
	}
	defer func() { flagCapture = nil }()
	for _, c := range commands {
		args := []string{"--help"}
		run := c.run
		if strings.HasPrefix(c.name, "platform ") {
			args, run = []string{strings.TrimPrefix(c.name, "platform "), "--help"}, cmdPlatform
		} else if c.name == "platform" {
			continue
		}
		_ = run(context.Background(), args, io.Discard)
	}
	return out
}

func cmdCompletion(_ context.Context, args []string, out io.Writer) error {
	fs := newFlagSet("completion")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return fmt.Errorf("%w: completion bash|zsh|fish", errUsage)
	}
	flags := cliFlags()
	var top []string
	for _, c := range commands {
		if !strings.Contains(c.name, " ") {
			top = append(top, c.name)
		}
	}
	names := make([]string, 0, len(flags))
	for n := range flags {
		names = append(names, n)
	}
	sort.Strings(names)
	switch fs.Arg(0) {
	case "bash":
		return writeBash(out, top, names, flags)
	case "zsh":
		return writeZsh(out, top, names, flags)
	case "fish":
		return writeFish(out, top, names, flags)
	}
	return fmt.Errorf("%w: completion bash|zsh|fish (got %q)", errUsage, fs.Arg(0))
}

func flagWords(fl []completionFlag) string {
	var w []string
	for _, f := range fl {
		w = append(w, "--"+f.name)
	}
	return strings.Join(w, " ")
}

func writeBash(out io.Writer, top, names []string, flags map[string][]completionFlag) error {
	var b strings.Builder
	b.WriteString("# bash completion for raptiformica: source <(raptiformica completion bash)\n")
	b.WriteString("_raptiformica() {\n\tlocal cur=${COMP_WORDS[COMP_CWORD]} cmd=${COMP_WORDS[1]} words=\n")
	b.WriteString("\tif [ \"$COMP_CWORD\" -eq 1 ]; then\n")
	fmt.Fprintf(&b, "\t\tCOMPREPLY=($(compgen -W %q -- \"$cur\"))\n\t\treturn\n\tfi\n", strings.Join(top, " "))
	b.WriteString("\tif [ \"$cmd\" = platform ]; then\n\t\tif [ \"$COMP_CWORD\" -eq 2 ]; then\n")
	b.WriteString("\t\t\tCOMPREPLY=($(compgen -W \"validate apply get\" -- \"$cur\"))\n\t\t\treturn\n\t\tfi\n")
	b.WriteString("\t\tcmd=\"platform ${COMP_WORDS[2]}\"\n\tfi\n")
	b.WriteString("\tcase \"$cmd\" in\n")
	for _, n := range names {
		fmt.Fprintf(&b, "\t%q) words=%q ;;\n", n, flagWords(flags[n]))
	}
	b.WriteString("\tcompletion) words=\"bash zsh fish\" ;;\n\tesac\n")
	b.WriteString("\tif [[ $cur == -* || $cmd == completion ]]; then\n\t\tCOMPREPLY=($(compgen -W \"$words\" -- \"$cur\"))\n")
	b.WriteString("\telse\n\t\tCOMPREPLY=($(compgen -f -- \"$cur\"))\n\tfi\n}\n")
	b.WriteString("complete -F _raptiformica raptiformica\n")
	_, err := io.WriteString(out, b.String())
	return err
}

func writeZsh(out io.Writer, top, names []string, flags map[string][]completionFlag) error {
	var b strings.Builder
	b.WriteString("#compdef raptiformica\n# zsh completion for raptiformica: raptiformica completion zsh > \"${fpath[1]}/_raptiformica\"\n")
	b.WriteString("_raptiformica() {\n\tlocal cmd=${words[2]}\n\tif (( CURRENT == 2 )); then\n\t\tlocal -a cmds\n\t\tcmds=(\n")
	for _, n := range top {
		fmt.Fprintf(&b, "\t\t\t%s\n", zshQuote(n+":"+findCommand(n).summary))
	}
	b.WriteString("\t\t)\n\t\t_describe command cmds\n\t\treturn\n\tfi\n")
	b.WriteString("\tif [[ $cmd == platform ]]; then\n\t\tif (( CURRENT == 3 )); then\n\t\t\tcompadd validate apply get\n\t\t\treturn\n\t\tfi\n\t\tcmd=\"platform ${words[3]}\"\n\tfi\n")
	b.WriteString("\tcase $cmd in\n")
	for _, n := range names {
		fmt.Fprintf(&b, "\t%s)\n\t\t_arguments -s", zshQuote(n))
		for _, f := range flags[n] {
			fmt.Fprintf(&b, " %s", zshQuote("--"+f.name+"["+zshBracket(f.usage)+"]"))
		}
		b.WriteString(" '*:file:_files' ;;\n")
	}
	b.WriteString("\tcompletion) compadd bash zsh fish ;;\n\tesac\n}\n")
	b.WriteString("if [[ $zsh_eval_context[-1] == loadautoload ]]; then\n\t_raptiformica \"$@\"\nelse\n\tcompdef _raptiformica raptiformica\nfi\n")
	_, err := io.WriteString(out, b.String())
	return err
}

func zshQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// zshBracket keeps a description from closing _arguments' [...] early.
func zshBracket(s string) string {
	return strings.NewReplacer("[", "(", "]", ")", ":", " -").Replace(s)
}

func writeFish(out io.Writer, top, names []string, flags map[string][]completionFlag) error {
	var b strings.Builder
	b.WriteString("# fish completion for raptiformica: raptiformica completion fish > ~/.config/fish/completions/raptiformica.fish\n")
	b.WriteString("complete -c raptiformica -f\n")
	for _, n := range top {
		fmt.Fprintf(&b, "complete -c raptiformica -n __fish_use_subcommand -a %s -d %s\n", n, fishQuote(findCommand(n).summary))
	}
	for _, sub := range []string{"validate", "apply", "get"} {
		fmt.Fprintf(&b, "complete -c raptiformica -n '__fish_seen_subcommand_from platform; and not __fish_seen_subcommand_from validate apply get' -a %s -d %s\n",
			sub, fishQuote(findCommand("platform "+sub).summary))
	}
	b.WriteString("complete -c raptiformica -n '__fish_seen_subcommand_from completion' -a 'bash zsh fish'\n")
	for _, n := range names {
		cond := "__fish_seen_subcommand_from " + n
		if sub, ok := strings.CutPrefix(n, "platform "); ok {
			cond = "__fish_seen_subcommand_from platform; and __fish_seen_subcommand_from " + sub
		}
		for _, f := range flags[n] {
			fmt.Fprintf(&b, "complete -c raptiformica -n %s -l %s -d %s\n", fishQuote(cond), f.name, fishQuote(f.usage))
		}
	}
	b.WriteString("complete -c raptiformica -n '__fish_seen_subcommand_from platform; and __fish_seen_subcommand_from validate apply' -F\n")
	_, err := io.WriteString(out, b.String())
	return err
}

func fishQuote(s string) string {
	return "'" + strings.NewReplacer(`\`, `\\`, "'", `\'`).Replace(s) + "'"
}
