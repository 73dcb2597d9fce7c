package main

import (
	"cmp"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/raptiformica/raptiformica/cluster"
	"github.com/raptiformica/raptiformica/rules"
)

func moduleCmd() *cobra.Command {
	c := newCommand("module", "add, remove, list or check modules in the original project's format (raptiformica.json)", noSubcommand,
		"raptiformica module add ./modules/compute/docker && raptiformica module list")
	c.RunE = func(*cobra.Command, []string) error {
		return fmt.Errorf("%w: module add|remove|list|validate", errUsage)
	}
	add := newCommand("add PATH|GIT_URL|OWNER/REPO", "keep a module in the cluster; it overrides the modules added before it", nArgs(1, 1),
		"raptiformica module add ./my-module", "raptiformica module add https://example.org/my-module.git",
		"raptiformica module add https://example.org/my-module.git --ref 0123456789abcdef0123456789abcdef01234567",
		"raptiformica module add vdloo/raptiformica-map")
	rm := newCommand("remove NAME", "drop a module; what it overrode comes back", nArgs(1, 1), "raptiformica module remove my-module")
	list := newCommand("list", "list the modules the cluster keeps, in the order they apply", nArgs(0, 0), "raptiformica module list")
	validate := newCommand("validate PATH|GIT_URL|OWNER/REPO", "check a module file: every problem with file, line and field", nArgs(1, 1),
		"raptiformica module validate modules/compute/docker/raptiformica.json")
	add.ValidArgsFunction, validate.ValidArgsFunction = nil, nil // PATH: the shell completes file names
	refs := map[*cobra.Command]*string{}
	for _, sub := range []*cobra.Command{add, validate} {
		refs[sub] = sub.Flags().String("ref", "", "the branch or tag of a git module to read, or the full commit (40 hex digits) it is pinned to, verified after the fetch")
	}
	for _, sub := range []*cobra.Command{add, rm, list} {
		t := addTarget(sub)
		sub.RunE = func(c *cobra.Command, args []string) error {
			cl, err := t.client(c.Context())
			if err != nil {
				return err
			}
			var mods []*rules.Module
			var notices []rules.Problem
			switch sub {
			case add:
				var m *rules.Module
				if m, notices, err = cluster.AddModule(c.Context(), cl, parseOpts(), args[0], *refs[add]); err == nil {
					fmt.Fprintf(c.OutOrStdout(), "added module %s\n", m.Name)
				}
			case rm:
				if notices, err = cluster.RemoveModule(c.Context(), cl, parseOpts(), args[0]); err == nil {
					fmt.Fprintf(c.OutOrStdout(), "removed module %s\n", args[0])
				}
			default:
				mods, notices, err = cluster.ListModules(c.Context(), cl, parseOpts())
			}
			return cmp.Or(cluster.WriteModules(c.OutOrStdout(), c.ErrOrStderr(), mods, notices), err)
		}
	}
	validate.RunE = func(c *cobra.Command, args []string) error {
		m, err := cluster.FetchModule(c.Context(), args[0], *refs[validate])
		if err == nil {
			fmt.Fprintf(c.OutOrStdout(), "%s: valid module %s (%s)\n", m.File, m.Name, m.Summary())
		}
		return err
	}
	c.AddCommand(add, rm, list, validate)
	return c
}

func packageCmd() *cobra.Command {
	c := newCommand("package COMPUTE_TYPE[/SERVER_TYPE]", "run a compute module's package command (such as building its image) in a clone of its source", nArgs(1, 1),
		"raptiformica package docker", "raptiformica package docker/headless --timeout 1h")
	t := addTarget(c)
	timeout := c.Flags().Duration("timeout", 30*time.Minute, "how long the package command may run")
	c.RunE = func(c *cobra.Command, args []string) error {
		cl, err := t.client(c.Context())
		if err != nil {
			return err
		}
		return cluster.Package(c.Context(), cl, args[0], *timeout, c.OutOrStdout(), c.ErrOrStderr())
	}
	return c
}
