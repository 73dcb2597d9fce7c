package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/raptiformica/raptiformica/cluster"
	"github.com/raptiformica/raptiformica/internal/termsafe"
	"github.com/raptiformica/raptiformica/localdc"
	"github.com/raptiformica/raptiformica/rules"
)

// recoverCmd is the operator's way out of lost quorum: the chosen survivor
// restarts its Consul as the only Raft server, keeping its data, and the
// control loop replaces the servers it gave up.
func recoverCmd() *cobra.Command {
	c := newCommand("recover", "after lost quorum: re-create the cluster from a surviving server", nArgs(0, 0),
		"raptiformica recover", "raptiformica recover --machine server-0a1b2c3d --yes")
	t := addTarget(c)
	machine := c.Flags().String("machine", "", "the surviving server to recover on (default: the only one running)")
	yes := c.Flags().Bool("yes", false, "do not ask for confirmation")
	timeout := c.Flags().Duration("timeout", 3*time.Minute, "how long to wait for the cluster to be whole again")
	_ = c.RegisterFlagCompletionFunc("machine", runningServers(t))
	c.RunE = func(c *cobra.Command, _ []string) error {
		return recoverOn(c.Context(), t, *machine, *yes, *timeout, c.InOrStdin(), c.OutOrStdout())
	}
	return c
}

func recoverOn(ctx context.Context, t *target, machine string, yes bool, timeout time.Duration, in io.Reader, out io.Writer) error {
	m, err := t.cluster().Survivor(machine)
	if errors.Is(err, localdc.ErrSeveralServers) {
		return fmt.Errorf("%w: %v: choose one with --machine", errUsage, err)
	} else if err != nil {
		return err
	}
	st, err := cluster.MachineStatus(ctx, m)
	if err != nil {
		return fmt.Errorf("machine %s: %w", m.Config.MachineID, err)
	}
	if st.Quorum == nil || !st.Quorum.Lost {
		return fmt.Errorf("machine %s has not lost quorum (its Consul has a leader, or has not missed one for the policy's quorum_lost_after): nothing to recover", m.Config.MachineID)
	}
	var dropped []string
	for _, s := range st.Quorum.Servers {
		if s.Name != m.Config.MachineID {
			dropped = append(dropped, termsafe.String(fmt.Sprintf("%s (%s, %s)", s.Name, s.Address, s.Status)))
		}
	}
	fmt.Fprintf(out, "Recover cluster on %s (%s): its Consul restarts as the only Raft server and keeps\n"+
		"the description, the inventory and the intents. These servers are given up, then\n"+
		"removed and replaced by the control loop:\n  %s\n"+
		"If any of them is only cut off, not dead, it must not come back: destroy it.\n",
		m.Config.MachineID, m.Config.BindAddr, strings.Join(dropped, "\n  "))
	if !yes {
		fmt.Fprint(out, "Type yes to go on: ")
		line, _ := bufio.NewReader(in).ReadString('\n')
		if strings.TrimSpace(line) != "yes" {
			return errors.New("not confirmed; nothing was changed")
		}
	}
	if err := t.cluster().Recover(m, time.Now()); err != nil {
		return err
	}
	return waitAndPrint(ctx, t, nil, timeout, out)
}

// waitAndPrint waits up to timeout for every machine type to have its min
// alive, then prints the members. The progress quotes errors and what
// the cluster holds: it is escaped as it is printed.
func waitAndPrint(ctx context.Context, t *target, plat *rules.Platform, timeout time.Duration, out io.Writer) error {
	wctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	c, err := t.cluster().Wait(wctx, plat, termsafe.NewWriter(out)) // the members get their own 30 s after
	if err != nil {
		return err
	}
	return printMembers(ctx, c, out, false)
}
