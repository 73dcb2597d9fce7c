// Package daemon is the raptiformica agent's lifecycle: it supervises the
// node's own Consul, watches the platform description with blocking queries,
// mirrors the description and the inventory to disk (and re-seeds an empty KV
// from that mirror), takes part in leader election through a Consul lock,
// runs the control loop while it leads, and serves /metrics, /v1/status and
// /healthz.
//
// An agent's life:
//
//	start ─▶ Consul up ─▶ description loaded ─▶ READY ─▶ campaigning ⇄ leading
//	                                                  │
//	          SIGTERM: stop leading, leave Consul, stop Consul ◀┘
package daemon

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"

	"github.com/raptiformica/raptiformica/backends"
	"github.com/raptiformica/raptiformica/daemon/agentapi"
	"github.com/raptiformica/raptiformica/internal/clock"
	"github.com/raptiformica/raptiformica/internal/kvschema"
	"github.com/raptiformica/raptiformica/internal/nodeconfig"
	"github.com/raptiformica/raptiformica/internal/telemetry"
	"github.com/raptiformica/raptiformica/mesh"
	"github.com/raptiformica/raptiformica/reconcile"
	"github.com/raptiformica/raptiformica/rules"
)

// Agent is one node's daemon.
type Agent struct {
	Config   nodeconfig.Config
	Registry backends.Registry
	// Binary is the raptiformica executable that new machines run.
	Binary string
	Log    hclog.Logger
	Clock  clock.Clock

	metrics   *telemetry.Metrics
	consul    *api.Client
	store     *kvschema.Store
	inventory *reconcile.Inventory
	executor  *reconcile.Executor
	wake      chan struct{}

	mu          sync.RWMutex
	platform    *rules.Platform // last valid description; guarded by mu
	platformErr string          // why the description in KV was rejected; guarded by mu
	bes         map[string]backends.Backend
	besFor      *rules.Platform // the description bes were built from; guarded by mu
	leading     bool            // guarded by mu
	lastStatus  *reconcile.Status
	ready       bool                   // Consul reachable and a description loaded; guarded by mu
	quorum      *agentapi.QuorumStatus // set while Consul has no leader; guarded by mu
	consulProc  *ConsulProcess
	// mesh is the overlay node, nil with mesh = "none".
	mesh       *mesh.Node
	meshMu     sync.Mutex // guards meshMirror and its file
	meshMirror meshMirror
	// bindAuto: bind_addr was "auto", so the machine's own network is all
	// of its interfaces, and the mesh advertises each.
	bindAuto bool
	// lastRaftIndex is the last Raft index read from Consul.
	lastRaftIndex atomic.Uint64
}

// Run starts the node and blocks until ctx ends; then it stops leading,
// leaves Consul gracefully, stops Consul and returns. It returns an error
// only when the node cannot start at all.
func (a *Agent) Run(ctx context.Context) error {
	if a.Clock == nil {
		a.Clock = clock.Real{}
	}
	a.bindAuto = a.Config.BindAddr == nodeconfig.BindAuto
	addr, err := nodeconfig.ResolveBindAddr(a.Config.BindAddr)
	if err != nil {
		return err
	}
	a.Config.BindAddr = addr
	a.Log = a.Log.With(telemetry.KeyMachineID, a.Config.MachineID)
	if a.Config.Mesh != nil {
		if err := os.MkdirAll(a.Config.DataDir, 0o700); err != nil {
			return fmt.Errorf("data dir: %w", err)
		}
		if err := a.startMesh(); err != nil {
			return err
		}
		defer a.mesh.Close()
	}
	c := a.Config
	a.metrics = telemetry.New()
	a.wake = make(chan struct{}, 1)
	if err := os.MkdirAll(c.DataDir, 0o700); err != nil {
		return fmt.Errorf("data dir: %w", err)
	}
	if p, err := a.loadMirror(); err == nil {
		a.setPlatform(p)
		a.Log.Info("loaded platform description from the local mirror")
	} else if c.PlatformFile != "" {
		p, err := rules.ParseFile(c.PlatformFile, a.parseOptions())
		if err != nil {
			return err
		}
		a.setPlatform(p)
	} else if c.Platform != "" {
		p, err := rules.Parse("node config platform", []byte(c.Platform), a.parseOptions())
		if err != nil {
			return err
		}
		a.setPlatform(p)
	}

	cfg := api.DefaultConfig()
	cfg.Address = net.JoinHostPort(c.BindAddr, strconv.Itoa(c.ConsulHTTPPort))
	cfg.Scheme = "http"
	client, err := api.NewClient(cfg)
	if err != nil {
		return fmt.Errorf("consul client: %w", err)
	}
	a.consul = client
	a.store = kvschema.New(client)
	a.inventory = &reconcile.Inventory{Store: a.store}
	hooks := &reconcile.HookRunner{Log: a.Log.Named("hook"), Metrics: a.metrics, Clock: a.Clock}
	a.executor = &reconcile.Executor{
		Inventory: a.inventory, Consul: client, Clock: a.Clock, Log: a.Log.Named("executor"),
		Metrics: a.metrics, NodeConfig: NodeConfigFor(client, c.ClusterDir, c.ConsulBinary, a.selfEndpoints), Hooks: hooks,
	}

	var lns []net.Listener
	for _, host := range listenHosts(c) {
		ln, err := net.Listen("tcp", net.JoinHostPort(host, strconv.Itoa(c.HTTPPort)))
		if err != nil {
			for _, l := range lns {
				l.Close()
			}
			return fmt.Errorf("node config http_port %d on bind_addr %s: %w (another agent or program holds it; set http_port)", c.HTTPPort, host, err)
		}
		lns = append(lns, ln)
	}
	srv := &http.Server{Handler: a.handler(), ReadHeaderTimeout: 5 * time.Second}

	runCtx, stop := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	goRun := func(f func(context.Context)) {
		wg.Add(1)
		go func() { defer wg.Done(); f(runCtx) }()
	}
	consulCtx, stopConsul := context.WithCancel(context.Background())
	consulDone := make(chan struct{})
	proc := &ConsulProcess{Config: c, Log: a.Log.Named("consul"), Metrics: a.metrics, Peers: a.mirroredPeers, Clock: a.Clock}
	a.consulProc = proc
	go func() { defer close(consulDone); proc.Run(consulCtx) }()
	for _, ln := range lns {
		go func() { _ = srv.Serve(ln) }()
	}
	if a.mesh != nil {
		goRun(a.runMesh)
	}

	goRun(func(ctx context.Context) {
		if err := a.waitConsul(ctx); err != nil {
			return
		}
		a.Log.Info("consul is up")
		a.bootstrapKV(ctx)
		goRun(a.watchPlatform)
		goRun(a.watchInventory)
		goRun(a.campaign)
		goRun(a.watchQuorum)
		goRun(a.watchdog)
	})

	<-ctx.Done()
	a.Log.Info("stopping")
	notify("STOPPING=1")
	stop()
	wg.Wait()
	// A graceful stop leaves the cluster, so that the others see "left",
	// not "failed", and a server is taken out of Raft.
	leaveDone := make(chan error, 1)
	go func() { leaveDone <- client.Agent().Leave() }()
	select {
	case err := <-leaveDone:
		if err != nil {
			a.Log.Warn("leave failed", telemetry.KeyError, err)
		}
	case <-a.Clock.After(5 * time.Second):
		a.Log.Warn("leave timed out")
	}
	stopConsul()
	<-consulDone
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = srv.Shutdown(shutdownCtx)
	a.Log.Info("stopped")
	return nil
}

func (a *Agent) parseOptions() rules.Options {
	return rules.Options{BackendTypes: a.Registry.Types()}
}

// waitConsul blocks until the local Consul answers and the cluster has a
// leader, which every KV write needs.
func (a *Agent) waitConsul(ctx context.Context) error {
	return clock.Poll(ctx, a.Clock, 250*time.Millisecond, func() (bool, error) {
		leader, err := a.consul.Status().Leader()
		return err == nil && leader != "", nil
	})
}

// bootstrapKV puts in KV what the cluster needs from this node: the gossip
// key (when the cluster has none yet) and this machine's inventory record
// (when it has none: the seed, or a machine joined by hand). It retries until
// it succeeds or ctx ends.
func (a *Agent) bootstrapKV(ctx context.Context) {
	attempt := 0
	_ = clock.Poll(ctx, a.Clock, time.Second, func() (bool, error) {
		attempt++
		err := a.ensureGossipKey(ctx)
		if err == nil {
			err = a.ensureMeshSecret(ctx)
		}
		if err == nil {
			err = a.ensureRecord(ctx)
		}
		if err != nil {
			a.Log.Warn("bootstrap KV", telemetry.KeyError, err, telemetry.KeyAttempt, attempt)
		}
		return err == nil, nil
	})
}

func (a *Agent) ensureGossipKey(ctx context.Context) error {
	key := a.Config.Encrypt
	if key == "" {
		return nil
	}
	return a.store.InitGossipKey(ctx, key)
}

func (a *Agent) ensureRecord(ctx context.Context) error {
	rec, found, err := a.inventory.Get(ctx, a.Config.MachineID)
	if err != nil {
		return err
	}
	if found && a.mesh != nil && rec.Address != a.Config.BindAddr {
		// The spawner recorded the machine's own network address; over
		// the mesh the others reach it at its overlay address.
		// The old address stays among Addresses: members dial it until
		// this node's mesh entry is in KV.
		if !slices.Contains(rec.Addresses, rec.Address) {
			rec.Addresses = append(rec.Addresses, rec.Address)
		}
		rec.Address, rec.Updated = a.Config.BindAddr, a.Clock.Now()
		if _, err := a.inventory.Put(ctx, rec); err != nil && !errors.Is(err, reconcile.ErrConflict) {
			return err
		}
		return nil
	}
	if found {
		return nil
	}
	now := a.Clock.Now()
	_, err = a.inventory.Put(ctx, reconcile.Record{
		ID: a.Config.MachineID, Type: a.Config.MachineType, Backend: a.Config.Backend, State: reconcile.StateJoined,
		Address: a.Config.BindAddr, Seed: a.Config.Bootstrap, Created: now, Updated: now,
	})
	if errors.Is(err, reconcile.ErrConflict) {
		return nil // written by the leader meanwhile
	}
	return err
}

// NewGossipKey returns a fresh 32-byte gossip encryption key, base64-encoded
// as Consul wants it.
func NewGossipKey() string {
	var b [32]byte
	_, _ = rand.Read(b[:])
	return base64.StdEncoding.EncodeToString(b[:])
}

// Platform returns the last valid description, or nil before the first.
func (a *Agent) Platform() *rules.Platform {
	a.mu.RLock()
	defer a.mu.RUnlock()
	return a.platform
}

func (a *Agent) setPlatform(p *rules.Platform) {
	a.mu.Lock()
	a.platform = p
	a.platformErr = ""
	a.mu.Unlock()
	select {
	case a.wake <- struct{}{}:
	default:
	}
}

// backends returns the backends of the current description, built once per
// description.
func (a *Agent) backends() map[string]backends.Backend {
	p := a.Platform()
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.besFor == p && a.bes != nil {
		return a.bes
	}
	env := backends.Env{Cluster: p.Cluster, ClusterDir: a.Config.ClusterDir, Binary: a.Binary, ConsulBinary: a.Config.ConsulBinary, Logger: a.Log.Named("backend")}
	bes, errs := reconcile.NewBackends(a.Registry, p, env, a.store)
	for name, err := range errs {
		a.Log.Error("backend unusable", telemetry.KeyBackend, name, telemetry.KeyError, err)
		bes[name] = brokenBackend{err: err}
	}
	a.bes, a.besFor = bes, p
	return bes
}

// brokenBackend stands in for a backend whose settings are wrong, so that the
// planner sees it as unavailable and says why.
type brokenBackend struct{ err error }

var _ backends.Backend = brokenBackend{}

func (b brokenBackend) Available(context.Context) error { return b.err }
func (b brokenBackend) Spawn(context.Context, backends.Spec) (backends.Instance, error) {
	return backends.Instance{}, b.err
}
func (b brokenBackend) Destroy(context.Context, string) error             { return b.err }
func (b brokenBackend) List(context.Context) ([]backends.Instance, error) { return nil, b.err }

// NodeConfigFor returns how new machines are configured by a node that
// reaches Consul through client: they join the live servers, get the
// cluster's gossip key and mesh secret, dial the members' mesh endpoints
// and the configuring node's own (self, which may be nil), and run the
// given Consul binary.
func NodeConfigFor(client *api.Client, clusterDir, consulBinary string, self func() []string) reconcile.NodeConfigFunc {
	return func(ctx context.Context, p *rules.Platform, id string, mt rules.MachineType, backend string) (nodeconfig.Config, error) {
		store := kvschema.New(client)
		key, err := store.GossipKey(ctx)
		if err != nil {
			return nodeconfig.Config{}, fmt.Errorf("read gossip key: %w", err)
		}
		if err := CheckMeshMode(ctx, store, p); err != nil {
			return nodeconfig.Config{}, err
		}
		var meshCfg *nodeconfig.Mesh
		if p.Mesh.Enabled() {
			var own []string
			if self != nil {
				own = self()
			}
			if meshCfg, err = meshConfigFor(ctx, store, p.Mesh.Port, p.Mesh.Peers, own); err != nil {
				return nodeconfig.Config{}, err
			}
		}
		members, err := client.Agent().Members(false)
		if err != nil {
			return nodeconfig.Config{}, fmt.Errorf("list members: %w", err)
		}
		var join []string
		for _, m := range members {
			if reconcile.SerfStatus(m.Status) == reconcile.MemberAlive && m.Tags[api.MemberTagKeyRole] == api.MemberTagValueRoleServer {
				join = append(join, m.Addr)
			}
		}
		return nodeconfig.Config{
			MachineID: id, MachineType: mt.Name, Cluster: p.Cluster, Backend: backend,
			ClusterDir: clusterDir, ConsulBinary: consulBinary, ConsulServer: mt.ConsulServer,
			RetryJoin: join, Encrypt: key, Mesh: meshCfg,
		}.WithDefaults(), nil
	}
}

// listenHosts are the addresses the agent's HTTP listens on: the node's
// address, and with the mesh also loopback, where the CLI on the machine
// finds its agent and Consul.
func listenHosts(c nodeconfig.Config) []string {
	if c.Mesh == nil {
		return []string{c.BindAddr}
	}
	hosts := []string{c.BindAddr, "127.0.0.1"}
	if c.Mesh.ServeUnderlay && c.Mesh.Underlay != "" && c.Mesh.Underlay != nodeconfig.BindAuto {
		hosts = append(hosts, c.Mesh.Underlay)
	}
	return hosts
}

func (a *Agent) isLeading() bool {
	a.mu.RLock()
	defer a.mu.RUnlock()
	return a.leading
}

func (a *Agent) mirrorDir() string { return filepath.Join(a.Config.DataDir, "mirror") }
