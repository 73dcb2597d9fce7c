package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/hashicorp/consul/api"
	"github.com/spf13/cobra"

	"github.com/raptiformica/raptiformica/cluster"
	"github.com/raptiformica/raptiformica/daemon/agentapi"
	"github.com/raptiformica/raptiformica/internal/termsafe"
	"github.com/raptiformica/raptiformica/rules"
)

func statusCmd() *cobra.Command {
	c := newCommand("status", "show the leader's last reconcile pass and what blocks it (exit 1 while quorum is lost)", nArgs(0, 0),
		"raptiformica status", "raptiformica status --json | jq .reconcile.types")
	t := addTarget(c)
	asJSON := jsonFlag(c)
	c.RunE = func(c *cobra.Command, _ []string) error { return status(c.Context(), t, *asJSON, c.OutOrStdout()) }
	return c
}

func status(ctx context.Context, t *target, asJSON bool, out io.Writer) error {
	c, err := t.client(ctx)
	if err != nil {
		// Without a Consul leader there is no KV to read: what each local
		// machine knows of the lost quorum is the status there is.
		if q := t.cluster().Quorum(ctx); len(q) > 0 {
			v := cluster.StatusView{Quorum: q}
			if !asJSON {
				_ = v.WriteText(out)
				return errors.New("no Consul leader: the cluster lost quorum")
			} else if err := writeJSON(out, v); err != nil {
				return err
			}
			return errReported // exit 1, as the README says, the view being the report
		}
		if why := localMeshProblem(ctx); why != "" {
			// A machine of a mesh cluster without a link has no cluster
			// to ask: that is the status.
			return fmt.Errorf("%w; this machine: %s", err, why)
		}
		return err
	}
	v, err := cluster.Status(ctx, c, parseOpts())
	if err != nil {
		return err
	}
	v.MirrorErrors = t.cluster().MirrorErrors(ctx)
	if asJSON {
		return writeJSON(out, v)
	}
	return v.WriteText(out)
}

func planCmd() *cobra.Command {
	c := newCommand("plan", "show what the leader would do now, changing nothing", nArgs(0, 0),
		"raptiformica plan", "raptiformica plan --json | jq '.actions | length'")
	t := addTarget(c)
	asJSON := jsonFlag(c)
	c.RunE = func(c *cobra.Command, _ []string) error { return plan(c.Context(), t, *asJSON, c.OutOrStdout()) }
	return c
}

func plan(ctx context.Context, t *target, asJSON bool, out io.Writer) error {
	c, err := t.client(ctx)
	if err != nil {
		return err
	}
	// The leader plans, on its own machine: no backend command runs here.
	a, err := t.leaderAgent(ctx, c)
	if err != nil {
		return err
	}
	d, err := agentapi.FetchPlan(ctx, a)
	if err != nil {
		return err
	}
	if asJSON {
		return writeJSON(out, d)
	}
	return cluster.WritePlan(out, d)
}

func platformCmd() *cobra.Command {
	c := newCommand("platform", "check, store or print the platform description", noSubcommand,
		"raptiformica platform validate platform.hcl && raptiformica platform apply platform.hcl")
	c.RunE = func(*cobra.Command, []string) error {
		return fmt.Errorf("%w: platform validate|apply|get", errUsage)
	}
	c.AddCommand(platformValidateCmd(), platformApplyCmd(), platformGetCmd())
	return c
}

func platformValidateCmd() *cobra.Command {
	c := newCommand("validate FILE", "check a platform description: every problem with file, line and field", nArgs(1, 1),
		"raptiformica platform validate platform.hcl", "raptiformica platform validate --json platform.hcl")
	asJSON := jsonFlag(c)
	c.ValidArgsFunction = nil // FILE: the shell completes file names
	c.RunE = func(c *cobra.Command, args []string) error {
		v, err := rules.Validate(args[0], parseOpts())
		if *asJSON {
			if werr := writeJSON(c.OutOrStdout(), v); werr != nil || err == nil {
				return werr
			}
			return errReported
		}
		if err != nil {
			return err
		}
		fmt.Fprintf(c.OutOrStdout(), "%s: valid (%d machine types, %d Consul servers)\n", v.File, v.MachineTypes, v.ConsulServers)
		return nil
	}
	return c
}

func platformApplyCmd() *cobra.Command {
	c := newCommand("apply FILE", "validate, then store a description as the next version; the leader acts at once", nArgs(1, 1),
		"raptiformica platform apply platform.hcl", "raptiformica platform apply --json platform.hcl | jq .version")
	t := addTarget(c)
	asJSON := jsonFlag(c)
	c.ValidArgsFunction = nil // FILE: the shell completes file names
	c.RunE = func(c *cobra.Command, args []string) error {
		out, file := c.OutOrStdout(), args[0]
		p, err := rules.ParseFile(file, parseOpts())
		if err != nil {
			return err
		}
		cl, err := t.client(c.Context())
		if err != nil {
			return err
		}
		version, err := cluster.ApplyPlatform(c.Context(), cl, p, parseOpts())
		if err != nil {
			return err
		}
		if *asJSON {
			return writeJSON(out, map[string]any{"file": file, "version": version})
		}
		fmt.Fprintf(out, "applied %s as version %d\n", file, version)
		return nil
	}
	return c
}

func platformGetCmd() *cobra.Command {
	c := newCommand("get", "print the stored platform description", nArgs(0, 0),
		"raptiformica platform get > platform.hcl")
	t := addTarget(c)
	c.RunE = func(c *cobra.Command, _ []string) error {
		cl, err := t.client(c.Context())
		if err != nil {
			return err
		}
		src, err := cluster.StoredPlatform(c.Context(), cl)
		if err != nil {
			return err
		}
		_, err = c.OutOrStdout().Write(src)
		return err
	}
	return c
}

// leaderAgent is the leader's agent, by its certificate: another server
// that took its address is not asked instead. It is where a plan is
// asked and an action by hand runs: the leader places and runs it, on
// whichever member offers its backend, so no backend runs here.
func (t *target) leaderAgent(ctx context.Context, c *api.Client) (agentapi.Agent, error) {
	leader, addr, err := cluster.LeaderAgent(ctx, c)
	if err != nil {
		return agentapi.Agent{}, err
	}
	a, err := t.agent(addr)
	a.MachineID = leader
	return a, err
}

// stored is a client of the cluster and the description it stores.
func (t *target) stored(ctx context.Context) (*api.Client, *rules.Platform, error) {
	c, err := t.client(ctx)
	if err != nil {
		return nil, nil, err
	}
	p, err := kvPlatform(ctx, c)
	if err != nil {
		return nil, nil, err
	}
	return c, p, nil
}

func spawnCmd() *cobra.Command {
	c := newCommand("spawn", "spawn one machine on top of the description (never scaled down)", nArgs(0, 0),
		"raptiformica spawn --type worker", "raptiformica spawn --type worker --backend docker --json | jq -r .machine_id")
	t := addTarget(c)
	typ := c.Flags().String("type", "", "machine type (required)")
	backend := c.Flags().String("backend", "", "backend (default: the type's first)")
	asJSON := jsonFlag(c)
	_ = c.RegisterFlagCompletionFunc("type", machineTypes(t))
	c.RunE = func(c *cobra.Command, _ []string) error {
		return spawn(c.Context(), t, *typ, *backend, *asJSON, c.OutOrStdout())
	}
	return c
}

func spawn(ctx context.Context, t *target, typ, backend string, asJSON bool, out io.Writer) error {
	c, p, err := t.stored(ctx)
	if err != nil {
		return err
	}
	if _, ok := p.Machines[typ]; !ok {
		return fmt.Errorf("%w: --type must be one of %s", errUsage, strings.Join(p.MachineNames(), ", "))
	}
	a, err := t.leaderAgent(ctx, c)
	if err != nil {
		return err
	}
	r, err := agentapi.Spawn(ctx, a, agentapi.SpawnRequest{Type: typ, Backend: backend})
	if err != nil {
		return err
	}
	if asJSON {
		return writeJSON(out, map[string]string{"machine_id": r.ID, "machine_type": r.Type, "backend": r.Backend, "host": r.Host, "address": r.Address})
	}
	where := r.Backend
	if r.Host != "" {
		where += " of " + r.Host
	}
	fmt.Fprintf(out, "spawned %s (%s on %s at %s); the leader records it as joined once it is alive\n", r.ID, r.Type, termsafe.String(where), termsafe.String(r.Address))
	return nil
}

func destroyCmd() *cobra.Command {
	c := newCommand("destroy MACHINE_ID", "remove one machine gracefully (replaced if that takes its type below min)", nArgs(1, 1),
		"raptiformica destroy worker-3f2a9c1d")
	t := addTarget(c)
	ids := machineIDs(t)
	c.ValidArgsFunction = func(c *cobra.Command, args []string, prefix string) ([]cobra.Completion, cobra.ShellCompDirective) {
		if len(args) > 0 {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		return ids(c, args, prefix)
	}
	c.RunE = func(c *cobra.Command, args []string) error { return destroy(c.Context(), t, args[0], c.OutOrStdout()) }
	return c
}

func destroy(ctx context.Context, t *target, id string, out io.Writer) error {
	t.avoid = id
	c, err := t.client(ctx)
	if err != nil {
		return err
	}
	a, err := t.leaderAgent(ctx, c)
	if err != nil {
		return err
	}
	if err := agentapi.Destroy(ctx, a, id); err != nil {
		return err
	}
	fmt.Fprintf(out, "destroyed %s\n", termsafe.String(id))
	return nil
}
