package main

import (
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/raptiformica/raptiformica/internal/termsafe"
	"github.com/raptiformica/raptiformica/rotate"
)

// rotateCmd is rotate gossip|mesh: the cluster's shared secrets replaced
// on the live cluster (package rotate says how).
func rotateCmd() *cobra.Command {
	c := newCommand("rotate", "replace the cluster's gossip key or mesh secret on the live cluster", noSubcommand)
	c.RunE = func(*cobra.Command, []string) error { return fmt.Errorf("%w: rotate gossip|mesh", errUsage) }
	for what, short := range map[string]string{
		"gossip": "replace Consul's gossip encryption key through its keyring, losing no member",
		"mesh":   "replace the overlay's link secret, re-making every link with it, cutting no machine off",
	} {
		sub := newCommand(what, short, nArgs(0, 0), "raptiformica rotate "+what)
		t := addTarget(sub)
		timeout := sub.Flags().Duration("timeout", 2*time.Minute, "how long to wait for every member to take each step")
		sub.RunE = func(cc *cobra.Command, _ []string) error {
			cl, err := t.client(cc.Context())
			if err != nil {
				return err
			}
			// The progress names members and quotes their errors.
			opts := rotate.Options{Out: termsafe.NewWriter(cc.OutOrStdout()), Timeout: *timeout}
			if what == "mesh" {
				return rotate.Mesh(cc.Context(), cl, opts)
			}
			if t.explicit || os.Getenv("CONSUL_HTTP_ADDR") == "" {
				opts.IdentityDir = t.folder() // `up` re-creates the cluster from it
			}
			_, err = rotate.Gossip(cc.Context(), cl, opts)
			return err
		}
		c.AddCommand(sub)
	}
	return c
}
