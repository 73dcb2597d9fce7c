package main

import (
	"context"
	"fmt"
	"io"
	"maps"
	"slices"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/spf13/cobra"

	"github.com/raptiformica/raptiformica/cluster"
	"github.com/raptiformica/raptiformica/internal/termsafe"
)

func completionCmd() *cobra.Command {
	c := newCommand("completion bash|zsh|fish|powershell", "print a shell completion script", nArgs(1, 1),
		"source <(raptiformica completion bash)",
		"raptiformica completion zsh > \"${fpath[1]}/_raptiformica\"",
		"raptiformica completion fish > ~/.config/fish/completions/raptiformica.fish",
		"raptiformica completion powershell | Out-String | Invoke-Expression")
	c.ValidArgs = []string{"bash", "zsh", "fish", "powershell"}
	c.RunE = func(c *cobra.Command, args []string) error {
		root, out := c.Root(), c.OutOrStdout()
		switch args[0] {
		case "bash":
			if err := root.GenBashCompletionV2(out, true); err != nil {
				return err
			}
			_, err := io.WriteString(out, bashWithoutPackage)
			return err
		case "zsh":
			return root.GenZshCompletion(out)
		case "fish":
			return root.GenFishCompletion(out, true)
		case "powershell":
			return root.GenPowerShellCompletionWithDesc(out)
		}
		return fmt.Errorf("%w: no completion for shell %q (bash, zsh, fish or powershell)", errUsage, args[0])
	}
	return c
}

// bashWithoutPackage replaces a function of cobra's bash script, which
// needs the bash-completion package to split the command line: many servers
// do not have it. Without it, the words are taken as bash splits them.
const bashWithoutPackage = `
__raptiformica_init_completion()
{
    COMPREPLY=()
    if declare -F _get_comp_words_by_ref >/dev/null 2>&1; then
        _get_comp_words_by_ref "$@" cur prev words cword
        return
    fi
    cur=${COMP_WORDS[COMP_CWORD]} prev=${COMP_WORDS[COMP_CWORD-1]}
    words=("${COMP_WORDS[@]}") cword=$COMP_CWORD
}
`

// completionTimeout bounds a completion that asks the cluster: the shell
// waits for it on every TAB.
const completionTimeout = 2 * time.Second

// fromCluster completes with what list reads from the cluster t finds; the
// shells keep those that begin with the word typed. Completion is best
// effort: a cluster that is down, slow or refuses means no completions, and
// never file names, which cannot be meant here.
func fromCluster(t *target, list func(context.Context, *api.Client) ([]cobra.Completion, error)) cobra.CompletionFunc {
	return func(c *cobra.Command, _ []string, _ string) ([]cobra.Completion, cobra.ShellCompDirective) {
		ctx, cancel := context.WithTimeout(c.Context(), completionTimeout)
		defer cancel()
		cl, err := t.client(ctx)
		if err != nil {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		comps, err := list(ctx, cl)
		if err != nil {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		return comps, cobra.ShellCompDirectiveNoFileComp
	}
}

// machineTypes completes --type with the types of the stored description.
func machineTypes(t *target) cobra.CompletionFunc {
	return fromCluster(t, func(ctx context.Context, c *api.Client) ([]cobra.Completion, error) {
		p, err := kvPlatform(ctx, c)
		if err != nil {
			return nil, err
		}
		var out []cobra.Completion
		for _, n := range p.MachineNames() {
			mt := p.Machines[n]
			out = append(out, cobra.CompletionWithDesc(n, fmt.Sprintf("min %d, max %d", mt.Min, mt.Max)))
		}
		return out, nil
	})
}

// machineIDs completes a machine ID with the inventory's machines.
func machineIDs(t *target) cobra.CompletionFunc {
	return fromCluster(t, func(ctx context.Context, c *api.Client) ([]cobra.Completion, error) {
		recs, err := cluster.Machines(ctx, c)
		if err != nil {
			return nil, err
		}
		var out []cobra.Completion
		for _, id := range slices.Sorted(maps.Keys(recs)) {
			// A completion is a line of name, tab, description: a member's
			// tab or newline would make completions of its own.
			out = append(out, cobra.CompletionWithDesc(termsafe.String(id), termsafe.String(recs[id].Type+", "+string(recs[id].State))))
		}
		return out, nil
	})
}

// runningServers completes recover --machine. Without quorum there is no
// cluster to ask: the candidates are the folder's running servers, as
// recover itself finds them.
func runningServers(t *target) cobra.CompletionFunc {
	return func(*cobra.Command, []string, string) ([]cobra.Completion, cobra.ShellCompDirective) {
		var out []cobra.Completion
		for _, m := range t.cluster().RunningServers() {
			out = append(out, cobra.CompletionWithDesc(m.Config.MachineID, m.Config.MachineType))
		}
		return out, cobra.ShellCompDirectiveNoFileComp
	}
}
