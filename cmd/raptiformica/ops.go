package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"
	"github.com/spf13/cobra"

	"github.com/raptiformica/raptiformica/backends"
	"github.com/raptiformica/raptiformica/cluster"
	"github.com/raptiformica/raptiformica/daemon/agentapi"
	"github.com/raptiformica/raptiformica/enrol"
	"github.com/raptiformica/raptiformica/internal/clock"
	"github.com/raptiformica/raptiformica/internal/kvschema"
	"github.com/raptiformica/raptiformica/internal/nodeconfig"
	"github.com/raptiformica/raptiformica/internal/state"
	"github.com/raptiformica/raptiformica/internal/termsafe"
	"github.com/raptiformica/raptiformica/reconcile"
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
	addr, err := cluster.LeaderAgent(ctx, c)
	if err != nil {
		return err
	}
	a, err := t.agent(addr)
	if err != nil {
		return err
	}
	// The leader itself, by its certificate: another server that took its
	// address is not asked instead.
	a.MachineID = kvschema.New(c).Leader(ctx)
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
		if err := cluster.CheckApply(c.Context(), cl, p, parseOpts()); err != nil {
			return err
		}
		version, err := kvschema.New(cl).PutPlatform(c.Context(), p.Source)
		if err != nil {
			return fmt.Errorf("store description: %w", err)
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
		pair, _, err := kvschema.New(cl).Platform(c.Context(), nil)
		if err != nil {
			return err
		}
		if pair == nil {
			return fmt.Errorf("no platform description stored")
		}
		_, err = c.OutOrStdout().Write(pair.Value)
		return err
	}
	return c
}

// do runs one action from this host, as the leader's executor would: the
// CLI's own spawn and destroy.
func (t *target) do(ctx context.Context, c *api.Client, p *rules.Platform, bes map[string]backends.Backend, obs reconcile.Observed, a state.Action) (reconcile.Record, error) {
	consul, err := nodeconfig.FindConsul()
	if err != nil {
		return reconcile.Record{}, err
	}
	log := hclog.New(&hclog.LoggerOptions{Name: "raptiformica", Level: hclog.Warn, Output: os.Stderr})
	cred := t.credentials()
	ex := &reconcile.Executor{
		Inventory: &reconcile.Inventory{Store: kvschema.New(c)}, Consul: c, Clock: clock.Real{}, Log: log,
		NodeConfig: enrol.NodeConfigs{Client: c, Cred: cred, ClusterDir: t.folder(), ConsulBinary: consul}.For, Token: cred.Token, CACert: cred.CA.CertPEM,
		Forget: func(ctx context.Context, id string) error { return enrol.RemoveMachineToken(ctx, c, id) },
	}
	r, _, err := ex.Do(ctx, p, bes, obs, a)
	return r, err
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
	mt, ok := p.Machines[typ]
	if !ok {
		return fmt.Errorf("%w: --type must be one of %s", errUsage, strings.Join(p.MachineNames(), ", "))
	}
	if backend == "" {
		backend = mt.Backends[0]
	}
	bes, err := t.backends(ctx, p)
	if err != nil {
		return err
	}
	a := state.Action{Kind: state.KindSpawn, Type: typ, Backend: backend, Reason: "spawned by hand", Manual: true}
	r, err := t.do(ctx, c, p, bes, reconcile.Observed{}, a)
	if err != nil {
		return err
	}
	if asJSON {
		return writeJSON(out, map[string]string{"machine_id": r.ID, "machine_type": typ, "backend": backend, "address": r.Address})
	}
	fmt.Fprintf(out, "spawned %s (%s on %s at %s); the leader records it as joined once it is alive\n", r.ID, typ, backend, termsafe.String(r.Address))
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
	c, p, err := t.stored(ctx)
	if err != nil {
		return err
	}
	bes, err := t.backends(ctx, p)
	if err != nil {
		return err
	}
	obs, err := reconcile.Observe(ctx, c, &reconcile.Inventory{Store: kvschema.New(c)}, bes, nil, nil)
	if err != nil {
		return err
	}
	r, ok := obs.Records[id]
	if !ok {
		return fmt.Errorf("no machine %q in the inventory", id)
	}
	a := state.Action{Kind: state.KindScaleDown, MachineID: id, Type: r.Type, Backend: r.Backend, Reason: "destroyed by hand"}
	if _, err := t.do(ctx, c, p, bes, obs, a); err != nil {
		return err
	}
	fmt.Fprintf(out, "destroyed %s\n", id)
	return nil
}
