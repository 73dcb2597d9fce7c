// Package localdc is the local virtual data center behind `up` and `down`:
// it finds a local cluster's machines in their folder, starts the
// seed of a new one on a seed-capable backend (found through the registry),
// waits until every machine type has its minimum alive, and removes every
// machine again. What it asks of the running cluster goes through package
// cluster, the operator's library; the CLI parses and prints, and tests
// and scripts call this package for the same work.
//
// A local cluster lives in a folder: machines/ holds the local backend's
// machines, identity.json the cluster's credentials (the ACL management
// token, the gossip key; readable by the folder's owner only), cluster.json
// names the backend the seed runs on, platform.hcl
// (or .json) the description it started from, and last-platform the
// description its machines held when `down` removed them, so that the next
// `up` brings the same platform back.
package localdc

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"

	"github.com/raptiformica/raptiformica/backends"
	"github.com/raptiformica/raptiformica/backends/local"
	"github.com/raptiformica/raptiformica/cluster"
	"github.com/raptiformica/raptiformica/daemon/agentapi"
	"github.com/raptiformica/raptiformica/enrol"
	"github.com/raptiformica/raptiformica/internal/clock"
	"github.com/raptiformica/raptiformica/internal/consulclient"
	"github.com/raptiformica/raptiformica/internal/fsutil"
	"github.com/raptiformica/raptiformica/internal/identity"
	"github.com/raptiformica/raptiformica/internal/kvschema"
	"github.com/raptiformica/raptiformica/internal/nodeconfig"
	"github.com/raptiformica/raptiformica/internal/pki"
	"github.com/raptiformica/raptiformica/internal/recoverfile"
	"github.com/raptiformica/raptiformica/mesh"
	"github.com/raptiformica/raptiformica/reconcile"
	"github.com/raptiformica/raptiformica/rules"
)

// DefaultDir is where local clusters live when no folder is named.
func DefaultDir() string {
	if d := os.Getenv("XDG_DATA_HOME"); d != "" {
		return filepath.Join(d, "raptiformica")
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return filepath.Join(os.TempDir(), "raptiformica")
	}
	return filepath.Join(home, ".local", "share", "raptiformica")
}

// Local is the cluster whose machines live in a folder of this host.
type Local struct {
	// Dir is the cluster's folder, absolute.
	Dir      string
	Registry backends.Registry

	mu sync.Mutex
	// clients are kept per address: each api.Client has its own connection
	// pool, and a new one per poll (up waits minutes) would exhaust Consul's
	// per-client connection limit. Guarded by mu.
	clients map[string]*api.Client
	// restore are the modules a cluster re-created from its machines'
	// mirror ran with, written into its KV once it answers (Wait).
	restore []byte
}

// Open returns the cluster in dir (DefaultDir when empty); nothing needs to
// run there yet.
func Open(dir string, reg backends.Registry) *Local {
	if dir == "" {
		dir = DefaultDir()
	}
	if abs, err := filepath.Abs(dir); err == nil {
		dir = abs
	}
	return &Local{Dir: dir, Registry: reg}
}

// ParseOptions are the options every description of this cluster is
// parsed with.
func (l *Local) ParseOptions() rules.Options {
	return reconcile.ParseOptions(l.Registry)
}

// seedRecord records, in a cluster's folder, which backend its seed runs on,
// so that commands find machines that are not local processes.
type seedRecord struct {
	Cluster     string            `json:"cluster"`
	Backend     string            `json:"backend"`
	BackendType string            `json:"backend_type"`
	Settings    map[string]string `json:"settings,omitempty"`
}

func (l *Local) seedFile() (seedRecord, bool) {
	var sf seedRecord
	b, err := os.ReadFile(filepath.Join(l.Dir, "cluster.json"))
	if err != nil || json.Unmarshal(b, &sf) != nil {
		return sf, false
	}
	return sf, true
}

// seedBackend is the backend the seed runs on, when it is not the local
// one, whose machines the folder lists itself.
func (l *Local) seedBackend() (backends.Backend, bool) {
	sf, ok := l.seedFile()
	if !ok || sf.BackendType == "" || sf.BackendType == "local" {
		return nil, false
	}
	be, err := l.Registry.New(backends.Config{Name: sf.Backend, Type: sf.BackendType, Settings: sf.Settings}, backends.Env{Cluster: sf.Cluster, ClusterDir: l.Dir, Logger: hclog.NewNullLogger()})
	if err != nil {
		return nil, false
	}
	return be, true
}

// machineAddr is a running machine and where its Consul is reached.
type machineAddr struct {
	id     string
	target consulclient.Target
}

func (l *Local) running(ctx context.Context) ([]machineAddr, error) {
	ms, err := local.Machines(l.Dir)
	if err != nil {
		return nil, err
	}
	var out []machineAddr
	for _, m := range ms {
		if m.Running {
			out = append(out, machineAddr{m.Config.MachineID, consulclient.Target{
				Host: m.Config.BindAddr, HTTPPort: m.Config.ConsulHTTPPort, HTTPSPort: m.Config.ConsulHTTPSPort,
			}})
		}
	}
	if be, ok := l.seedBackend(); ok {
		insts, err := be.List(ctx)
		if err != nil {
			return nil, err
		}
		for _, in := range insts {
			if in.Running && in.Address != "" {
				out = append(out, machineAddr{in.MachineID, consulclient.Target{Host: in.Address}})
			}
		}
	}
	return out, nil
}

// Client connects to the Consul of a running machine of the cluster that
// has a Consul leader.
func (l *Local) Client(ctx context.Context) (*api.Client, error) { return l.ClientExcept(ctx, "") }

// ClientExcept is Client through any machine but the one named: the one
// about to be destroyed, whose Consul goes with it.
func (l *Local) ClientExcept(ctx context.Context, machineID string) (*api.Client, error) {
	ms, err := l.running(ctx)
	if err != nil {
		return nil, err
	}
	var lastErr error
	for _, m := range ms {
		if m.id == machineID && machineID != "" {
			continue
		}
		c, err := l.client(m.target)
		if err != nil {
			return nil, err
		}
		if leader, err := c.Status().LeaderWithQueryOptions((&api.QueryOptions{}).WithContext(ctx)); err == nil && leader != "" {
			return c, nil
		} else if err != nil {
			lastErr = err
		} else {
			lastErr = errors.New("no Consul leader yet")
		}
	}
	if lastErr != nil {
		return nil, fmt.Errorf("no machine of %s answers: %w", l.Dir, lastErr)
	}
	return nil, fmt.Errorf("no running machine in %s (start one with `raptiformica up --dir %s`)", l.Dir, l.Dir)
}

func (l *Local) client(t consulclient.Target) (*api.Client, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	addr := net.JoinHostPort(t.Host, strconv.Itoa(t.HTTPPort))
	if c := l.clients[addr]; c != nil {
		return c, nil
	}
	t.Token, t.CACert = cmp.Or(cluster.EnvToken(), l.Token()), l.CA().CertPEM
	c, err := consulclient.New(t)
	if err != nil {
		return nil, err
	}
	if l.clients == nil {
		l.clients = map[string]*api.Client{}
	}
	l.clients[addr] = c
	return c, nil
}

// ErrSeveralServers is Survivor's answer when more than one server runs
// and none was named.
var ErrSeveralServers = errors.New("several servers run")

// Survivor is the running Consul server of the folder to recover a cluster
// that lost quorum on: the one named machine, or else the only one.
func (l *Local) Survivor(machine string) (local.Machine, error) {
	var cands []local.Machine
	var ids []string
	for _, m := range l.RunningServers() {
		if machine == "" || m.Config.MachineID == machine {
			cands = append(cands, m)
			ids = append(ids, m.Config.MachineID)
		}
	}
	switch {
	case len(cands) == 0 && machine != "":
		return local.Machine{}, fmt.Errorf("no running server machine %s in %s", machine, l.Dir)
	case len(cands) == 0:
		return local.Machine{}, fmt.Errorf("no running server machine in %s: nothing to recover on (`up` re-creates the cluster from its mirror)", l.Dir)
	case len(cands) > 1:
		return local.Machine{}, fmt.Errorf("%w (%s)", ErrSeveralServers, strings.Join(ids, ", "))
	}
	return cands[0], nil
}

// RunningServers are the folder's running Consul servers: the candidates
// to recover on.
func (l *Local) RunningServers() []local.Machine {
	ms, _ := local.Machines(l.Dir)
	var out []local.Machine
	for _, m := range ms {
		if m.Running && m.Config.ConsulServer {
			out = append(out, m)
		}
	}
	return out
}

// Recover asks the survivor m to recover the cluster on itself (its agent
// reads the request from its data folder): its Consul restarts as the only
// Raft server, keeping the description, the inventory and the intents.
func (l *Local) Recover(m local.Machine, now time.Time) error {
	return recoverfile.Write(m.Config.DataDir, now, "by raptiformica recover")
}

// Quorum is what each running machine of the folder knows of a lost
// quorum, by machine ID: the status there is when no Consul has a leader.
func (l *Local) Quorum(ctx context.Context) map[string]*agentapi.QuorumStatus {
	ms, _ := local.Machines(l.Dir)
	out := map[string]*agentapi.QuorumStatus{}
	for _, m := range ms {
		if !m.Running {
			continue
		}
		if st, err := cluster.MachineStatus(ctx, m); err == nil && st.Quorum != nil {
			out[m.Config.MachineID] = st.Quorum
		}
	}
	return out
}

// MirrorErrors is, by machine ID, why a running machine of the folder
// cannot use its mirror (its copy of the description and inventory on
// disk); machines whose mirror is sound are left out.
func (l *Local) MirrorErrors(ctx context.Context) map[string]string {
	ms, _ := local.Machines(l.Dir)
	out := map[string]string{}
	for _, m := range ms {
		if !m.Running {
			continue
		}
		if st, err := cluster.MachineStatus(ctx, m); err == nil && st.MirrorError != "" {
			out[m.Config.MachineID] = st.MirrorError
		}
	}
	return out
}

// Token is the cluster's ACL token as the folder keeps it: the identity
// `up` made, else what a running machine's config carries; "" when the
// folder has neither (a cluster made before ACLs).
func (l *Local) Token() string {
	if id, err := identity.Read(l.Dir); err == nil {
		return id.ManagementToken
	}
	ms, _ := local.Machines(l.Dir)
	for _, m := range ms {
		if m.Config.ACLToken != "" {
			return m.Config.ACLToken
		}
	}
	return ""
}

// CA is the cluster's certificate authority as the folder keeps it: the
// identity `up` made, else what a running machine's config carries. Its
// certificate checks the HTTPS API of every machine not on loopback; its
// key signs the certificates of the machines the CLI makes.
func (l *Local) CA() pki.CA {
	if id, err := identity.Read(l.Dir); err == nil && id.CACert != "" {
		return id.CA()
	}
	ms, _ := local.Machines(l.Dir)
	for _, m := range ms {
		if m.Config.TLS != nil {
			return m.Config.TLS.CA()
		}
	}
	return pki.CA{}
}

// Env is what backends need when the CLI drives them itself, on this host:
// this binary and the Consul found here go onto new machines.
func (l *Local) Env(p *rules.Platform) (backends.Env, error) {
	bin, err := os.Executable()
	if err != nil {
		return backends.Env{}, err
	}
	consul, err := nodeconfig.FindConsul()
	if err != nil {
		return backends.Env{}, err
	}
	return backends.Env{Cluster: p.Cluster, ClusterDir: l.Dir, Binary: bin, ConsulBinary: consul, Logger: hclog.NewNullLogger()}, nil
}

// Backends builds every backend of p for this host; c, when not nil, gives
// the backends that keep state in KV their folder.
func (l *Local) Backends(p *rules.Platform, c *api.Client) (map[string]backends.Backend, error) {
	env, err := l.Env(p)
	if err != nil {
		return nil, err
	}
	var store *kvschema.Store
	if c != nil {
		store = kvschema.New(c)
	}
	bes, errs := reconcile.NewBackends(l.Registry, p, env, store)
	for _, name := range slices.Sorted(maps.Keys(errs)) {
		return nil, fmt.Errorf("backend %s: %w", name, errs[name])
	}
	return bes, nil
}

// Up starts a new cluster in the folder unless machines run there: its seed
// (a Consul server that bootstraps alone, carrying the description the
// control loop grows from) from platformFile, else from the description the
// folder's machines last mirrored, else from the default. It returns the
// description it seeded, nil when the cluster was up already. Progress goes
// to out.
func (l *Local) Up(ctx context.Context, platformFile string, out io.Writer) (*rules.Platform, error) {
	running, err := l.running(ctx)
	if err != nil {
		return nil, err
	}
	if len(running) > 0 {
		fmt.Fprintf(out, "cluster in %s is already up (%d machines running)\n", l.Dir, len(running))
		return nil, nil
	}
	return l.seed(ctx, platformFile, out)
}

func (l *Local) seed(ctx context.Context, platformFile string, out io.Writer) (*rules.Platform, error) {
	plat, name, err := l.seedPlatform(platformFile, out)
	if err != nil {
		return nil, err
	}
	if _, err := local.KillAll(ctx, l.Dir); err != nil { // leftovers of a cluster that died
		return nil, err
	}
	if err := os.MkdirAll(l.Dir, 0o755); err != nil {
		return nil, err
	}
	if err := os.WriteFile(name, plat.Source, 0o644); err != nil {
		return nil, err
	}
	seedType := ""
	for _, n := range plat.MachineNames() {
		if plat.Machines[n].ConsulServer {
			seedType = n
			break
		}
	}
	env, err := l.Env(plat)
	if err != nil {
		return nil, err
	}
	// The seed runs on its type's first backend.
	beName := plat.Machines[seedType].Backends[0]
	spec := plat.Backends[beName]
	be, err := l.Registry.New(reconcile.BackendConfig(spec), env)
	if err != nil {
		return nil, err
	}
	sd, ok := be.(backends.Seeder)
	if !ok {
		return nil, fmt.Errorf("backend %q (type %s) cannot start a seed; the first backend of machine type %q must be local or docker", beName, spec.Type, seedType)
	}
	if err := sd.CanSeed(); err != nil {
		return nil, fmt.Errorf("backend %q cannot start a seed: %w", beName, err)
	}
	seedID := reconcile.NewMachineID(seedType)
	// A new cluster, a new identity; one that came back from its mirror
	// keeps the one its machines carried.
	id, err := identity.Read(l.Dir)
	if errors.Is(err, identity.ErrNone) {
		if id, err = identity.New(plat.Cluster); err == nil {
			err = identity.Write(l.Dir, id)
		}
	} else if err == nil && id.CACert == "" {
		// Kept from before the cluster had a CA: every machine of the
		// cluster that comes back is made anew, with certificates of it.
		if err = id.EnsureCA(plat.Cluster); err == nil {
			err = identity.Write(l.Dir, id)
		}
	}
	if err != nil {
		return nil, err
	}
	cert, err := id.CA().Issue(seedID, true)
	if err != nil {
		return nil, fmt.Errorf("sign the seed's certificate: %w", err)
	}
	sf, _ := json.Marshal(seedRecord{Cluster: plat.Cluster, Backend: beName, BackendType: spec.Type, Settings: spec.Settings})
	if err := fsutil.WriteFileAtomic(filepath.Join(l.Dir, "cluster.json"), sf, 0o644); err != nil {
		return nil, err
	}
	node := nodeconfig.Config{
		MachineID: seedID, MachineType: seedType, Cluster: plat.Cluster,
		ConsulServer: true, Encrypt: id.GossipKey, ACLToken: id.ManagementToken, PlatformFile: name,
		TLS: &nodeconfig.TLS{CACert: id.CACert, CAKey: id.CAKey, Cert: cert.CertPEM, Key: cert.KeyPEM},
		// The seed bootstraps Consul alone; no machine after it does.
		Bootstrap:     true,
		DefaultGossip: plat.PlannedMachines() > nodeconfig.FastGossipMax,
	}.WithDefaults()
	if spec.Type != "local" {
		// A container cannot read our files: the description goes inline.
		node.PlatformFile, node.Platform = "", string(plat.Source)
	}
	if plat.Mesh.Enabled() {
		node.Mesh = &nodeconfig.Mesh{ListenPort: plat.Mesh.Port, Secret: mesh.NewSecret(), Peers: plat.Mesh.Peers}
	}
	inst, err := sd.Spawn(ctx, backends.Spec{Node: node})
	if err != nil {
		return nil, fmt.Errorf("start seed: %w", err)
	}
	fmt.Fprintf(out, "started seed %s on %s (cluster %q in %s)\n", inst.MachineID, inst.Address, plat.Cluster, l.Dir)
	return plat, nil
}

// seedPlatform reads the description a new seed starts from and the file
// in the folder it is kept in.
func (l *Local) seedPlatform(platformFile string, out io.Writer) (*rules.Platform, string, error) {
	name := filepath.Join(l.Dir, "platform.hcl")
	if platformFile == "" {
		if mirror := newestMirror(l.Dir); mirror != "" {
			// The machines of this folder died (a reboot): the cluster is
			// re-created from the last description one of them held.
			fmt.Fprintf(out, "re-creating the cluster from the description mirrored in %s\n", mirror)
			platformFile = mirror
			l.restore = mirroredModules(l.Dir, out)
		}
	}
	if platformFile == "" {
		p, err := rules.Parse(name, []byte(rules.DefaultSource), l.ParseOptions())
		return p, name, err
	}
	p, err := rules.ParseFile(platformFile, l.ParseOptions())
	if strings.HasSuffix(platformFile, ".json") {
		name = filepath.Join(l.Dir, "platform.json")
	}
	return p, name, err
}

// newestMirror returns the most recently written platform mirror of the
// machines in a cluster folder, or "". `down` keeps a copy of it as
// last-platform in the folder.
func newestMirror(dir string) string {
	ms, _ := local.Machines(dir)
	paths := []string{filepath.Join(dir, "last-platform")}
	for _, m := range ms {
		paths = append(paths, filepath.Join(m.Config.DataDir, "mirror", "platform"))
	}
	best, bestTime := "", time.Time{}
	for _, p := range paths {
		if fi, err := os.Stat(p); err == nil && fi.ModTime().After(bestTime) {
			best, bestTime = p, fi.ModTime()
		}
	}
	return best
}

// Wait blocks until every machine type of plat has its min of joined, alive
// members (plat nil: the description the cluster stores), printing progress
// to out as it changes, and returns a client of the cluster. It gives up when
// ctx ends, or when machines run but none has had a Consul leader for 30 s
// (quorum lost: waiting longer would not help).
func (l *Local) Wait(ctx context.Context, plat *rules.Platform, out io.Writer) (*api.Client, error) {
	last := ""
	start := time.Now()
	var ready *api.Client
	err := clock.Poll(ctx, clock.Real{}, 300*time.Millisecond, func() (bool, error) {
		c, err := l.Client(ctx)
		line := "waiting for the seed's Consul"
		if plat == nil {
			line = "waiting for a Consul leader"
			if err != nil && time.Since(start) > 30*time.Second {
				return false, fmt.Errorf("machines run in %s but none has had a Consul leader for 30s: the cluster lost quorum (%v); `raptiformica down --dir %s` and then `up` re-create it with the description its machines mirrored", l.Dir, err, l.Dir)
			}
		}
		done := false
		if err == nil && l.restore != nil && l.restoreModules(ctx, c, out) {
			l.restore = nil
		}
		if err == nil {
			if plat == nil {
				plat, _ = cluster.Platform(ctx, c, l.ParseOptions())
			}
			if plat != nil {
				line, done = cluster.Progress(ctx, c, plat)
			}
		}
		if line != last {
			fmt.Fprintf(out, "[%5.1fs] %s\n", time.Since(start).Seconds(), line)
			last = line
		}
		ready = c
		return done, nil
	})
	if err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("gave up waiting (%s): %v", last, ctx.Err())
		}
		return nil, err
	}
	return ready, nil
}

// Down removes every machine of the cluster: the local processes first (or
// their leader would replace what the rest of Down removes), then the seed
// backend's machines, then what the last description put on other backends
// (an exec backend's containers or VMs). The description stays in the
// folder as last-platform for the next Up. It returns how many machines it
// removed.
func (l *Local) Down(ctx context.Context) (int, error) {
	if m := newestMirror(l.Dir); m != "" && filepath.Dir(m) != l.Dir {
		if src, err := os.ReadFile(m); err == nil {
			_ = fsutil.WriteFileAtomic(filepath.Join(l.Dir, "last-platform"), src, 0o644)
		}
	}
	keepModules(l.Dir)
	n, err := local.KillAll(ctx, l.Dir)
	if err != nil {
		return n, err
	}
	if be, ok := l.seedBackend(); ok {
		if ra, ok := be.(backends.ClusterRemover); ok {
			m, err := ra.RemoveAll(ctx)
			n += m
			if err != nil {
				return n, err
			}
		}
	}
	m, err := l.removeElsewhere(ctx)
	return n + m, err
}

// removeElsewhere removes the machines the cluster's last description put
// on backends other than local processes.
func (l *Local) removeElsewhere(ctx context.Context) (int, error) {
	src := newestMirror(l.Dir)
	if src == "" {
		return 0, nil
	}
	p, err := rules.ParseFile(src, l.ParseOptions())
	if err != nil {
		return 0, nil // nothing but local machines can be known from it
	}
	bes, err := l.Backends(p, nil)
	if err != nil {
		return 0, err
	}
	removed := 0
	var errs []error
	for _, name := range slices.Sorted(maps.Keys(bes)) {
		if p.Backends[name].Type == "local" {
			continue
		}
		if ra, ok := bes[name].(backends.ClusterRemover); ok {
			m, err := ra.RemoveAll(ctx)
			removed += m
			errs = append(errs, err)
			continue
		}
		insts, err := bes[name].List(ctx)
		if err != nil {
			errs = append(errs, fmt.Errorf("backend %s: %w", name, err))
			continue
		}
		for _, in := range insts {
			if err := bes[name].Destroy(ctx, in.MachineID); err != nil {
				errs = append(errs, fmt.Errorf("backend %s: %w", name, err))
				continue
			}
			removed++
		}
	}
	return removed, errors.Join(errs...)
}

// Credentials are the cluster's credentials as an operator's command finds
// them: the token new machines get, and the CA the command checks members
// with (and signs the machines it makes with, when it holds the key). With
// machine set (the command talks to $CONSUL_HTTP_ADDR, or to this
// machine's agent), they come from this machine's node config at
// nodeConfig (a member's: root reads it); what is still missing, and
// everything without machine, comes from the local cluster's folder, then
// from where Consul's own CLI looks ($CONSUL_HTTP_TOKEN,
// $CONSUL_HTTP_TOKEN_FILE, $CONSUL_CACERT). The token a command shows is
// another: the environment's first (see EnvToken), so that a person with a
// read-only token reads with it.
func (l *Local) Credentials(machine bool, nodeConfig string) enrol.Credentials {
	var cred enrol.Credentials
	if machine {
		if cfg, err := nodeconfig.Read(nodeConfig); err == nil {
			cred = enrol.Credentials{Token: cfg.ACLToken, CA: cfg.TLS.CA()}
		}
	}
	if cred.Token == "" {
		cred.Token = cmp.Or(l.Token(), cluster.EnvToken())
	}
	if cred.CA.CertPEM == "" {
		cred.CA = l.CA()
	}
	if f := os.Getenv("CONSUL_CACERT"); f != "" && cred.CA.CertPEM == "" {
		if b, err := os.ReadFile(f); err == nil {
			cred.CA.CertPEM = string(b)
		}
	}
	return cred
}
