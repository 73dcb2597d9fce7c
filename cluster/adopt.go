package cluster

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/raptiformica/raptiformica/deploy/systemd"
	"github.com/raptiformica/raptiformica/enrol"
	"github.com/raptiformica/raptiformica/internal/arch"
	"github.com/raptiformica/raptiformica/internal/kvschema"
	"github.com/raptiformica/raptiformica/internal/nodeconfig"
	"github.com/raptiformica/raptiformica/provision"
	"github.com/raptiformica/raptiformica/reconcile"
	"github.com/raptiformica/raptiformica/rules"
)

// ErrUsage marks an operation asked wrongly (the hosts, the flags), as
// against one that failed: the CLI answers it with its usage exit code.
var ErrUsage = errors.New("usage")

// AdoptSpec is what `adopt` is asked: the machines, and how to reach them.
// It runs on the operator's host by design: it logs in with the
// operator's SSH keys, which never leave that host (the leader's way to
// SSH hosts is the ssh pool backend, with keys its description names).
type AdoptSpec struct {
	// Hosts are the machines and the type each becomes (AdoptHosts).
	Hosts []provision.HostEntry
	// Parallel is how many are adopted at once.
	Parallel int
	// Identity, KnownHosts, Fingerprint and Jump are the SSH settings, as
	// ssh's -i, UserKnownHostsFile, a pinned key and -J.
	Identity, KnownHosts, Fingerprint, Jump string
	// Bind is the address the nodes bind to; empty: found per host.
	Bind string
	// Timeout bounds the wait for each machine to join.
	Timeout time.Duration
	// Cred is what the new nodes are given (the cluster's token and CA).
	Cred enrol.Credentials
	// Say reports each step, as the machine answered (the caller escapes).
	Say func(format string, args ...any)
}

// AdoptHosts reads the machines to adopt: the lines of the file inventory
// (each "[user@]host[:port] [TYPE]", typ the default), or the one host of
// args with typ.
func AdoptHosts(inventory, typ string, args []string) ([]provision.HostEntry, error) {
	switch {
	case inventory != "" && len(args) == 0:
		jobs, err := provision.ReadHostList(inventory, typ)
		if err != nil {
			return nil, fmt.Errorf("%w: %v", ErrUsage, err)
		}
		return jobs, nil
	case inventory == "" && len(args) == 1 && typ != "":
		h, err := provision.ParseHost(args[0])
		if err != nil {
			return nil, fmt.Errorf("%w: %v", ErrUsage, err)
		}
		return []provision.HostEntry{{Host: h, Type: typ, Where: "--type"}}, nil
	}
	return nil, fmt.Errorf("%w: adopt [user@]host[:port] --type T, or adopt --inventory FILE", ErrUsage)
}

// Adopt makes every machine of s a node of the cluster c stores p in:
// it records each before it acts, uploads this binary and the pinned
// Consul, configures and starts the agent and waits until the machine
// joins. It returns, per machine in s.Hosts' order, what stopped it.
func Adopt(ctx context.Context, c *api.Client, p *rules.Platform, s AdoptSpec) ([]error, error) {
	if s.Parallel < 1 {
		return nil, fmt.Errorf("%w: --parallel must be at least 1", ErrUsage)
	}
	for _, j := range s.Hosts {
		if _, ok := p.Machines[j.Type]; !ok {
			return nil, fmt.Errorf("%w: %s: machine type %q is not in the description (%s)", ErrUsage, j.Where, j.Type, strings.Join(p.MachineNames(), ", "))
		}
	}
	dialer, err := sshDialer(c, s)
	if err != nil {
		return nil, err
	}
	consul, err := nodeconfig.FindConsul()
	if err != nil {
		return nil, err
	}
	arts, err := arch.NativeArtifacts(consul)
	if err != nil {
		return nil, err
	}
	a := &provision.Adopter{
		Dialer: dialer, Artifacts: arts, Unit: systemd.Unit(provision.RemoteBinary),
		Joined:   func(ctx context.Context, id string) (bool, error) { return alive(ctx, c, id) },
		Progress: func(st provision.Step) { s.Say("%s\n", st) },
	}
	adopt := func(j provision.HostEntry) error {
		mt := p.Machines[j.Type]
		configure := func(ctx context.Context, id string) (nodeconfig.Config, error) {
			node, err := enrol.NodeConfigs{Client: c, Cred: s.Cred, ConsulBinary: provision.RemoteConsul}.For(ctx, p, id, mt, provision.AdoptBackend)
			node = provision.AdoptedNode(node, j.Host)
			node.BindAddr = cmp.Or(s.Bind, node.BindAddr)
			return node, err
		}
		proposed := nodeconfig.Config{MachineID: reconcile.NewMachineID(j.Type), MachineType: j.Type, Cluster: p.Cluster}
		res, err := a.AdoptRecorded(ctx, &reconcile.Inventory{Store: kvschema.New(c)},
			provision.AdoptSpec{Host: j.Host, Node: proposed, Configure: configure, KeepID: true, JoinTimeout: s.Timeout})
		if err != nil {
			return err
		}
		what := "adopted"
		if !res.Changed {
			what = "already adopted, nothing changed:"
		}
		s.Say("%s %s as %s (%s)\n", what, j.Host, res.Node.MachineID, j.Type)
		return nil
	}
	return provision.AdoptAll(s.Hosts, s.Parallel, adopt), nil
}

// sshDialer builds the SSH settings of s. Host keys are checked against
// the fingerprint given, known_hosts, and else the keys the cluster
// trusted on first use.
func sshDialer(c *api.Client, s AdoptSpec) (provision.Dialer, error) {
	for flag, f := range map[string]string{"--identity": s.Identity, "--known-hosts": s.KnownHosts} {
		if _, err := os.Stat(f); f != "" && err != nil {
			return provision.Dialer{}, fmt.Errorf("%s: %w", flag, err)
		}
	}
	known := s.KnownHosts
	if home, err := os.UserHomeDir(); known == "" && err == nil {
		known = filepath.Join(home, ".ssh", "known_hosts")
	}
	d, err := provision.NewDialer(provision.DialOptions{Identity: s.Identity, KnownHosts: known, Fingerprint: s.Fingerprint, Jump: s.Jump, HostKeys: kvschema.New(c).TrustedHostKeys()})
	if err != nil {
		return d, fmt.Errorf("%w: --%v", ErrUsage, err)
	}
	return d, nil
}
