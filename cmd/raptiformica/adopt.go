package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"

	"github.com/raptiformica/raptiformica/cluster"
	"github.com/raptiformica/raptiformica/internal/termsafe"
)

// adoptOptions are adopt's flags.
type adoptOptions struct {
	typ, inventory                          string
	parallel                                int
	identity, knownHosts, fingerprint, jump string
	bind                                    string
	timeout                                 time.Duration
}

// adoptCmd is adopt, which provisions a machine reachable over SSH into a
// node of the cluster: the original's `slave HOST`.
func adoptCmd() *cobra.Command {
	c := newCommand("adopt [user@]host[:port] --type T | --inventory FILE",
		"make a machine reachable over SSH a node: upload, configure, start, wait until it joins (the original's slave)", nArgs(0, 1),
		"raptiformica adopt root@192.0.2.20 --type worker", "raptiformica adopt deploy@nas.home:2222 --type storage --identity ~/.ssh/id_ed25519",
		"raptiformica adopt root@10.0.0.5 --type worker --jump root@bastion.example.org")
	t := addTarget(c)
	var o adoptOptions
	fs := c.Flags()
	fs.StringVar(&o.typ, "type", "", "machine type the machine becomes (required, or per line of --inventory)")
	fs.StringVar(&o.inventory, "inventory", "", "file of machines to adopt, one \"[user@]host[:port] [TYPE]\" per line (# comments)")
	fs.IntVar(&o.parallel, "parallel", 4, "with --inventory: machines adopted at once")
	fs.StringVar(&o.identity, "identity", "", "private key file (default: the SSH agent's keys and ~/.ssh/id_*)")
	fs.StringVar(&o.knownHosts, "known-hosts", "", "known_hosts file to check the host key against (default ~/.ssh/known_hosts when it names the host)")
	fs.StringVar(&o.fingerprint, "fingerprint", "", "the host key's SHA256 fingerprint, as ssh-keygen -lf prints it")
	fs.StringVar(&o.jump, "jump", "", "reach the machine through this one, as ssh -J does: [user@]host[:port]")
	fs.StringVar(&o.bind, "bind", "", "address the node binds to (default: the host's address when it is an IP, else its first non-loopback IPv4)")
	fs.DurationVar(&o.timeout, "timeout", 3*time.Minute, "how long to wait for the machine to join")
	_ = c.RegisterFlagCompletionFunc("type", machineTypes(t))
	c.RunE = func(c *cobra.Command, args []string) error { return adoptAll(c.Context(), t, o, args, c.OutOrStdout()) }
	return c
}

func adoptAll(ctx context.Context, t *target, o adoptOptions, args []string, out io.Writer) error {
	hosts, err := cluster.AdoptHosts(o.inventory, o.typ, args)
	if err != nil {
		return err
	}
	c, p, err := t.stored(ctx)
	if err != nil {
		return err
	}
	var outMu sync.Mutex
	// Steps and errors quote what the machine answered: escaped.
	say := func(format string, args ...any) {
		outMu.Lock()
		defer outMu.Unlock()
		fmt.Fprint(out, termsafe.Text(fmt.Sprintf(format, args...)))
	}
	errs, err := cluster.Adopt(ctx, c, p, cluster.AdoptSpec{
		Hosts: hosts, Parallel: o.parallel, Identity: o.identity, KnownHosts: o.knownHosts, Fingerprint: o.fingerprint, Jump: o.jump,
		Bind: o.bind, Timeout: o.timeout, Cred: t.credentials(), Say: say,
	})
	if err != nil {
		return err
	}
	if len(hosts) == 1 && o.inventory == "" {
		return errs[0]
	}
	// Many machines: what failed and why.
	var failed []string
	for i, err := range errs {
		if err != nil {
			failed = append(failed, fmt.Sprintf("FAILED %s (%s): %v\n", hosts[i].Host, hosts[i].Where, err))
		}
	}
	say("\nadopted %d of %d machines from %s\n%s", len(hosts)-len(failed), len(hosts), o.inventory, strings.Join(failed, ""))
	if len(failed) > 0 {
		return fmt.Errorf("%d of %d machines were not adopted (listed above)", len(failed), len(hosts))
	}
	return nil
}
