package main

import (
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/raptiformica/raptiformica/cluster"
	"github.com/raptiformica/raptiformica/enrol"
	"github.com/raptiformica/raptiformica/internal/jointoken"
)

// tokenCmd groups the join tokens' commands: a token lets machines of
// one type join by hand (`join --token`), as many as its uses, until it
// expires or is revoked.
func tokenCmd() *cobra.Command {
	c := newCommand("token", "create, list or revoke join tokens", noSubcommand,
		"raptiformica token create --type worker", "raptiformica token list", "raptiformica token revoke 3f2a9c01b7d4")
	c.RunE = func(*cobra.Command, []string) error { return fmt.Errorf("%w: token create|list|revoke", errUsage) }
	c.AddCommand(tokenCreateCmd(), tokenListCmd(), tokenRevokeCmd())
	return c
}

func tokenCreateCmd() *cobra.Command {
	c := newCommand("create", "print a join token (the CA's hash and a secret), or with --role a Consul ACL token for a person or Prometheus", nArgs(0, 0),
		"raptiformica token create", "raptiformica token create --ttl 15m --type worker --uses 3", "raptiformica token create --role metrics > prometheus.token")
	t := addTarget(c)
	ttl := c.Flags().Duration("ttl", jointoken.DefaultTTL, "how long the token is valid (a role's: forever unless given)")
	typ := c.Flags().String("type", "", "the machine type its machines join as (default: the description's first type by name that is not a server)")
	uses := c.Flags().Int("uses", jointoken.DefaultUses, "how many machines may join with it")
	role := c.Flags().String("role", "", "operator, read-only or metrics: a Consul ACL token with that role's policy")
	c.RunE = func(c *cobra.Command, _ []string) error {
		cl, p, err := t.stored(c.Context())
		if err != nil {
			return err
		}
		if *role != "" {
			if !c.Flags().Changed("ttl") {
				*ttl = 0
			}
			tok, err := enrol.CreateRoleToken(c.Context(), cl, *role, *ttl)
			if err != nil {
				return err
			}
			fmt.Fprintf(c.ErrOrStderr(), "accessor %s (token revoke %s)\n", tok.AccessorID, tok.AccessorID)
			fmt.Fprintln(c.OutOrStdout(), tok.SecretID)
			return nil
		}
		if *uses < 1 {
			return fmt.Errorf("%w: --uses %d: at least 1", errUsage, *uses)
		}
		tok, rec, err := enrol.CreateJoinToken(c.Context(), cl, p, t.credentials().CA.CertPEM, enrol.JoinTokenSpec{Type: *typ, Uses: *uses, TTL: *ttl})
		if err != nil {
			return err
		}
		if p.Machines[rec.Type].ConsulServer {
			fmt.Fprintf(c.ErrOrStderr(), "warning: a token for %s, a server type: whoever holds it gets the cluster's token and the CA key (all of the cluster); keep its --ttl short\n", rec.Type)
		}
		fmt.Fprintf(c.ErrOrStderr(), "join token %s: type %s, %d use(s), expires %s (token revoke %s)\n", rec.ID, rec.Type, rec.UsesLeft, rec.Expires.Local().Format(time.RFC3339), rec.ID)
		fmt.Fprintln(c.OutOrStdout(), tok)
		return nil
	}
	return c
}

func tokenListCmd() *cobra.Command {
	c := newCommand("list", "list the join tokens and role tokens: ID, type or role, a join token's uses left, expiry (never the secrets)", nArgs(0, 0),
		"raptiformica token list", "raptiformica token list --json")
	t := addTarget(c)
	asJSON := jsonFlag(c)
	c.RunE = func(c *cobra.Command, _ []string) error {
		cl, err := t.client(c.Context())
		if err != nil {
			return err
		}
		toks, err := cluster.TokenList(c.Context(), cl)
		if err != nil {
			return err
		} else if *asJSON {
			return writeJSON(c.OutOrStdout(), toks)
		}
		return cluster.WriteTokenList(c.OutOrStdout(), toks, time.Now())
	}
	return c
}

func tokenRevokeCmd() *cobra.Command {
	c := newCommand("revoke ID", "revoke a join token, or a role token by its accessor ID: nobody uses it after", nArgs(1, 1),
		"raptiformica token revoke 3f2a9c01b7d4")
	t := addTarget(c)
	c.RunE = func(c *cobra.Command, args []string) error {
		cl, err := t.client(c.Context())
		if err != nil {
			return err
		}
		if err := cluster.RevokeToken(c.Context(), cl, args[0]); err != nil {
			return err
		}
		fmt.Fprintf(c.OutOrStdout(), "revoked %s\n", args[0])
		return nil
	}
	return c
}
