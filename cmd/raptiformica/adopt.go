package main

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/spf13/cobra"

	"github.com/raptiformica/raptiformica/cluster"
	"github.com/raptiformica/raptiformica/deploy/systemd"
	"github.com/raptiformica/raptiformica/enrol"
	"github.com/raptiformica/raptiformica/internal/kvschema"
	"github.com/raptiformica/raptiformica/internal/nodeconfig"
	"github.com/raptiformica/raptiformica/internal/termsafe"
	"github.com/raptiformica/raptiformica/provision"
	"github.com/raptiformica/raptiformica/reconcile"
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
	var jobs []provision.HostEntry
	switch {
	case o.inventory != "" && len(args) == 0:
		var err error
		if jobs, err = provision.ReadHostList(o.inventory, o.typ); err != nil {
			return fmt.Errorf("%w: %v", errUsage, err)
		}
	case o.inventory == "" && len(args) == 1 && o.typ != "":
		h, err := provision.ParseHost(args[0])
		if err != nil {
			return fmt.Errorf("%w: %v", errUsage, err)
		}
		jobs = []provision.HostEntry{{Host: h, Type: o.typ, Where: "--type"}}
	default:
		return fmt.Errorf("%w: adopt [user@]host[:port] --type T, or adopt --inventory FILE", errUsage)
	}
	if o.parallel < 1 {
		return fmt.Errorf("%w: --parallel must be at least 1", errUsage)
	}
	c, p, err := t.stored(ctx)
	if err != nil {
		return err
	}
	for _, j := range jobs {
		if _, ok := p.Machines[j.Type]; !ok {
			return fmt.Errorf("%w: %s: machine type %q is not in the description (%s)", errUsage, j.Where, j.Type, strings.Join(p.MachineNames(), ", "))
		}
	}
	dialer, err := sshDialer(c, o)
	if err != nil {
		return err
	}
	consul, err := nodeconfig.FindConsul()
	if err != nil {
		return err
	}
	self, err := os.Executable()
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
	a := &provision.Adopter{
		Dialer: dialer, Binary: self, Consul: consul, Unit: systemd.Unit(provision.RemoteBinary),
		Joined:   func(ctx context.Context, id string) (bool, error) { return cluster.Alive(ctx, c, id) },
		Progress: func(s provision.Step) { say("%s\n", s) },
	}
	adopt := func(j provision.HostEntry) error {
		mt := p.Machines[j.Type]
		configure := func(ctx context.Context, id string) (nodeconfig.Config, error) {
			node, err := enrol.NodeConfigs{Client: c, Cred: t.credentials(), ConsulBinary: provision.RemoteConsul}.For(ctx, p, id, mt, provision.AdoptBackend)
			node = provision.AdoptedNode(node, j.Host)
			node.BindAddr = cmp.Or(o.bind, node.BindAddr)
			return node, err
		}
		proposed := nodeconfig.Config{MachineID: reconcile.NewMachineID(j.Type), MachineType: j.Type, Cluster: p.Cluster}
		res, err := a.AdoptRecorded(ctx, &reconcile.Inventory{Store: kvschema.New(c)},
			provision.AdoptSpec{Host: j.Host, Node: proposed, Configure: configure, KeepID: true, JoinTimeout: o.timeout})
		if err != nil {
			return err
		}
		what := "adopted"
		if !res.Changed {
			what = "already adopted, nothing changed:"
		}
		say("%s %s as %s (%s)\n", what, j.Host, res.Node.MachineID, j.Type)
		return nil
	}
	if len(jobs) == 1 && o.inventory == "" {
		return adopt(jobs[0])
	}
	// Many machines: a bounded number at once, then what failed and why.
	errs := provision.AdoptAll(jobs, o.parallel, adopt)
	var failed []string
	for i, err := range errs {
		if err != nil {
			failed = append(failed, fmt.Sprintf("FAILED %s (%s): %v\n", jobs[i].Host, jobs[i].Where, err))
		}
	}
	say("\nadopted %d of %d machines from %s\n%s", len(jobs)-len(failed), len(jobs), o.inventory, strings.Join(failed, ""))
	if len(failed) > 0 {
		return fmt.Errorf("%d of %d machines were not adopted (listed above)", len(failed), len(jobs))
	}
	return nil
}

// sshDialer builds the SSH settings of the adopt flags. Host keys are
// checked against the fingerprint given, known_hosts, and else the keys
// the cluster trusted on first use.
func sshDialer(c *api.Client, o adoptOptions) (provision.Dialer, error) {
	for flag, f := range map[string]string{"--identity": o.identity, "--known-hosts": o.knownHosts} {
		if _, err := os.Stat(f); f != "" && err != nil {
			return provision.Dialer{}, fmt.Errorf("%s: %w", flag, err)
		}
	}
	known := o.knownHosts
	if home, err := os.UserHomeDir(); known == "" && err == nil {
		known = filepath.Join(home, ".ssh", "known_hosts")
	}
	d, err := provision.NewDialer(provision.DialOptions{Identity: o.identity, KnownHosts: known, Fingerprint: o.fingerprint, Jump: o.jump, HostKeys: kvschema.New(c).TrustedHostKeys()})
	if err != nil {
		return d, fmt.Errorf("%w: --%v", errUsage, err)
	}
	return d, nil
}
