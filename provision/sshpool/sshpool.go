// Package sshpool is the "ssh" backend: a pool of machines, listed in the
// platform description, that the leader adopts over SSH when the rules need
// a machine. Which host runs which machine is kept in the cluster's KV, so
// any leader knows; a host that fails to be adopted is backed off on its own,
// so one bad host neither stops the pool nor is retried in a tight loop.
package sshpool

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/raptiformica/raptiformica/backends"
	"github.com/raptiformica/raptiformica/deploy/systemd"
	"github.com/raptiformica/raptiformica/internal/arch"
	"github.com/raptiformica/raptiformica/internal/clock"
	"github.com/raptiformica/raptiformica/internal/telemetry"
	"github.com/raptiformica/raptiformica/provision"
)

// Settings of an ssh backend.
const (
	SettingHosts       = "hosts"       // comma-separated [user@]host[:port], in order of preference
	SettingIdentity    = "identity"    // private key file on the leader (default: the agent's keys and ~/.ssh/id_*)
	SettingKnownHosts  = "known_hosts" // known_hosts file (default: trust on first use, recorded in KV)
	SettingJump        = "jump"        // reach the hosts through this machine, as ssh -J does
	SettingJoinTimeout = "join_timeout"
	SettingArch        = "arch" // the hosts' architecture (Go's name), which placement trusts and adoption checks
)

var known = []string{SettingHosts, SettingIdentity, SettingKnownHosts, SettingJump, SettingJoinTimeout, SettingArch}

// hostBackoff is how long a host rests after failed adoptions.
var hostBackoff = clock.Backoff{Initial: 30 * time.Second, Max: 10 * time.Minute}

// Backend adopts machines from a pool of hosts.
type Backend struct {
	name     string
	cluster  string
	hosts    []provision.Host
	claims   backends.Store // host:port -> assignment; nil without a cluster
	adopter  *provision.Adopter
	log      hclog.Logger
	clock    clock.Clock
	joinWait time.Duration
	arch     string // SettingArch

	mu       sync.Mutex
	failures map[string]int       // host:port -> consecutive failed adoptions; guarded by mu
	notUntil map[string]time.Time // host:port -> backed off until; guarded by mu
	lastErr  map[string]string    // host:port -> why it last failed; guarded by mu
}

// assignment is what the KV holds for a host in use.
type assignment struct {
	MachineID   string    `json:"machine_id"`
	MachineType string    `json:"machine_type"`
	Host        string    `json:"host"`
	Since       time.Time `json:"since"`
}

var _ backends.Backend = (*Backend)(nil)

// New builds an ssh pool backend from its settings.
func New(cfg backends.Config, env backends.Env) (backends.Backend, error) {
	if len(cfg.Commands) > 0 {
		return nil, errors.New("commands are for exec backends; an ssh backend takes settings only")
	}
	for k := range cfg.Settings {
		if !slices.Contains(known, k) {
			return nil, fmt.Errorf("unknown setting %q (known: %s)", k, strings.Join(known, ", "))
		}
	}
	b := &Backend{name: cfg.Name, cluster: env.Cluster, claims: env.Claims, log: env.Logger, clock: clock.Real{},
		failures: map[string]int{}, notUntil: map[string]time.Time{}, lastErr: map[string]string{}}
	if b.log == nil {
		b.log = hclog.NewNullLogger()
	}
	for _, s := range strings.Split(cfg.Settings[SettingHosts], ",") {
		if s = strings.TrimSpace(s); s == "" {
			continue
		}
		h, err := provision.ParseHost(s)
		if err != nil {
			return nil, fmt.Errorf("setting hosts: %w", err)
		}
		b.hosts = append(b.hosts, h)
	}
	if len(b.hosts) == 0 {
		return nil, errors.New("setting hosts: list at least one [user@]host[:port] to adopt")
	}
	d, err := provision.NewDialer(provision.DialOptions{
		Identity: cfg.Settings[SettingIdentity], KnownHosts: cfg.Settings[SettingKnownHosts],
		Jump: cfg.Settings[SettingJump], HostKeys: env.HostKeys,
	})
	if err != nil {
		return nil, fmt.Errorf("setting %w", err)
	}
	b.joinWait = 2 * time.Minute
	if s := cfg.Settings[SettingJoinTimeout]; s != "" {
		v, err := time.ParseDuration(s)
		if err != nil || v <= 0 {
			return nil, fmt.Errorf("setting join_timeout: %q is not a positive duration", s)
		}
		b.joinWait = v
	}
	if a := cfg.Settings[SettingArch]; a != "" {
		if !arch.Valid(a) {
			return nil, fmt.Errorf("setting arch: want one of %s (Go's names), got %q", strings.Join(arch.Known, ", "), a)
		}
		b.arch = a
	}
	b.adopter = &provision.Adopter{Dialer: d, Artifacts: arch.Artifacts{Binary: env.Binary, Consul: env.ConsulBinary}, Arch: b.arch, Unit: systemd.Unit(provision.RemoteBinary),
		Progress: func(s provision.Step) {
			b.log.Debug("adopt", telemetry.KeyBackend, b.name, telemetry.KeyStep, s.String())
		}}
	return b, nil
}

// MachineArch is the arch setting: the pool's hosts' architecture, empty
// when it does not say (backends.Archer).
func (b *Backend) MachineArch() string { return b.arch }

// assignments reads which hosts run which machines, by host:port.
func (b *Backend) assignments(ctx context.Context) (map[string]assignment, error) {
	if b.claims == nil {
		return nil, errors.New("the ssh backend keeps its hosts in the cluster's KV, which is not reachable from here")
	}
	entries, err := b.claims.List(ctx)
	if err != nil {
		return nil, fmt.Errorf("read pool assignments: %w", err)
	}
	out := map[string]assignment{}
	for _, p := range entries {
		var a assignment
		if json.Unmarshal(p, &a) == nil {
			out[a.Host] = a
		}
	}
	return out, nil
}

// free lists the hosts that run nothing and are not backing off, in the
// description's order, and says why the others are not free.
func (b *Backend) free(ctx context.Context) ([]provision.Host, []string, error) {
	used, err := b.assignments(ctx)
	if err != nil {
		return nil, nil, err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []provision.Host
	var why []string
	for _, h := range b.hosts {
		if a, ok := used[h.HostPort()]; ok {
			why = append(why, fmt.Sprintf("%s runs %s", h, a.MachineID))
			continue
		}
		if until := b.notUntil[h.HostPort()]; b.clock.Now().Before(until) {
			why = append(why, fmt.Sprintf("%s backing off for %s (%s)", h, until.Sub(b.clock.Now()).Round(time.Second), b.lastErr[h.HostPort()]))
			continue
		}
		out = append(out, h)
	}
	return out, why, nil
}

// Available is nil while a host is free to adopt, and, where the pool says
// its hosts' architecture, the binaries built for it are at hand here.
func (b *Backend) Available(ctx context.Context) error {
	if b.arch != "" {
		if _, _, err := b.adopter.Artifacts.For(b.arch); err != nil {
			return err
		}
	}
	free, why, err := b.free(ctx)
	if err != nil {
		return err
	}
	if len(free) == 0 {
		return fmt.Errorf("no free host in the pool: %s", strings.Join(why, "; "))
	}
	return nil
}

// Spawn adopts the first free host that takes the machine. Each host is
// claimed in KV (check-and-set) before anything is installed on it; a host
// that fails is released, backed off, and the next is tried.
func (b *Backend) Spawn(ctx context.Context, spec backends.Spec) (backends.Instance, error) {
	free, why, err := b.free(ctx)
	if err != nil {
		return backends.Instance{}, err
	}
	if len(free) == 0 {
		return backends.Instance{}, fmt.Errorf("no free host in the pool: %s", strings.Join(why, "; "))
	}
	var errs []error
	for _, h := range free {
		inst, err := b.adopt(ctx, h, spec)
		if err == nil {
			return inst, nil
		}
		if ctx.Err() != nil {
			return backends.Instance{}, err
		}
		errs = append(errs, err)
	}
	return backends.Instance{}, errors.Join(errs...)
}

func (b *Backend) adopt(ctx context.Context, h provision.Host, spec backends.Spec) (backends.Instance, error) {
	a := assignment{MachineID: spec.Node.MachineID, MachineType: spec.Node.MachineType, Host: h.HostPort(), Since: b.clock.Now()}
	val, _ := json.Marshal(a)
	ok, err := b.claims.CAS(ctx, h.HostPort(), val, 0)
	if err != nil {
		return backends.Instance{}, fmt.Errorf("claim %s: %w", h, err)
	}
	if !ok {
		return backends.Instance{}, fmt.Errorf("%s was claimed meanwhile", h)
	}
	node := provision.AdoptedNode(spec.Node, h)
	_, err = b.adopter.Adopt(ctx, provision.AdoptSpec{Host: h, Node: node, JoinTimeout: b.joinWait})
	if err != nil {
		// Adopt stopped whatever it started; the host is free again,
		// after its backoff.
		// Freed even when the spawn's own deadline has passed.
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		_ = b.claims.Delete(dctx, h.HostPort())
		cancel()
		b.failed(h, err)
		return backends.Instance{}, err
	}
	b.mu.Lock()
	delete(b.failures, h.HostPort())
	delete(b.notUntil, h.HostPort())
	delete(b.lastErr, h.HostPort())
	b.mu.Unlock()
	return backends.Instance{MachineID: node.MachineID, MachineType: node.MachineType, Address: h.Addr, Running: true, Created: a.Since}, nil
}

func (b *Backend) failed(h provision.Host, err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	n := b.failures[h.HostPort()] + 1
	b.failures[h.HostPort()] = n
	wait := hostBackoff.Delay(n)
	b.notUntil[h.HostPort()] = b.clock.Now().Add(wait)
	msg := err.Error()
	if len(msg) > 200 {
		msg = msg[:200] + "..."
	}
	b.lastErr[h.HostPort()] = msg
	b.log.Warn("pool host failed to adopt; backing it off", telemetry.KeyBackend, b.name, telemetry.KeyHost, h.String(), telemetry.KeyWait, wait, telemetry.KeyError, err)
}

// Destroy stops the node on its host and frees the host. A host that cannot
// be reached is freed all the same: the next adoption rewrites its config
// and restarts its agent, so a node that comes back there cannot linger.
func (b *Backend) Destroy(ctx context.Context, machineID string) error {
	used, err := b.assignments(ctx)
	if err != nil {
		return err
	}
	for _, a := range used {
		if a.MachineID != machineID {
			continue
		}
		h, err := b.hostOf(a.Host)
		if err != nil {
			return err
		}
		if err := b.adopter.Remove(ctx, h); err != nil {
			b.log.Warn("could not stop the node on its host; freeing the host anyway", telemetry.KeyBackend, b.name, telemetry.KeyHost, h.String(), telemetry.KeyMachineID, machineID, telemetry.KeyError, err)
		}
		return b.claims.Delete(ctx, h.HostPort())
	}
	return nil
}

func (b *Backend) hostOf(hostport string) (provision.Host, error) {
	for _, h := range b.hosts {
		if h.HostPort() == hostport {
			return h, nil
		}
	}
	// Dropped from the description since: reached as root, the default.
	host, port, err := net.SplitHostPort(hostport)
	if err != nil {
		return provision.Host{}, err
	}
	return provision.ParseHost("root@" + net.JoinHostPort(host, port))
}

// List returns the machines the pool's hosts run. Whether they are alive is
// Consul's to say; the pool knows only which host holds which machine.
func (b *Backend) List(ctx context.Context) ([]backends.Instance, error) {
	used, err := b.assignments(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]backends.Instance, 0, len(used))
	for _, a := range used {
		host, _, _ := net.SplitHostPort(a.Host)
		out = append(out, backends.Instance{MachineID: a.MachineID, MachineType: a.MachineType, Address: host, Running: true, Created: a.Since})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].MachineID < out[j].MachineID })
	return out, nil
}
