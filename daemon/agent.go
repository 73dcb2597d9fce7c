// Package daemon is the raptiformica agent: one process on every machine,
// made of components that each own their state and each run, as
// Run(ctx) error, until the agent stops:
//
//	ConsulProcess  consul.go  the node's own Consul, a supervised child process
//	meshSync       mesh.go    the overlay's links, kept in line with KV (mesh = "overlay")
//	httpServer     http.go    /metrics, /healthz, /v1/status, /v1/mesh/peers, the status page
//	mirror         mirror.go  the description and inventory watches (a server: every
//	                          record, from the snapshot; a client: its own), their
//	                          copy on disk, and the re-seed of an empty KV from it
//	moduleWatch    modules.go the modules (`module add`), mirrored on disk, applied
//	                          to the description the mirror gives out
//	elector        leader.go  the campaign for the leader lock (servers only); while
//	                          it holds the lock, the control loop, the autopilot
//	                          watch and the inventory snapshot (snapshot.go)
//	quorumWatch    quorum.go  lost quorum noticed, and recovered on evidence
//	provisioner    provisioner.go  this machine's provisioners, run on itself
//	watchdog       notify.go  the systemd watchdog
//
// Agent.Run wires them and runs them as controller-runtime's manager runs
// its runnables: Consul, the HTTP server and the mesh at once, the rest once
// Consul answers with a leader; a component that returns an error stops the
// agent. Components retry what fails on their own and return an error only
// when they cannot go on.
//
// An agent's life:
//
//	start ─▶ Consul up ─▶ description loaded ─▶ READY ─▶ campaigning ⇄ leading
//	                                                  │
//	          SIGTERM: stop leading, leave Consul, stop Consul ◀┘
package daemon

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"
	"golang.org/x/sync/errgroup"

	"github.com/raptiformica/raptiformica/backends"
	"github.com/raptiformica/raptiformica/enrol"
	"github.com/raptiformica/raptiformica/internal/clock"
	"github.com/raptiformica/raptiformica/internal/consulclient"
	"github.com/raptiformica/raptiformica/internal/identity"
	"github.com/raptiformica/raptiformica/internal/kvschema"
	"github.com/raptiformica/raptiformica/internal/nodeconfig"
	"github.com/raptiformica/raptiformica/internal/telemetry"
	"github.com/raptiformica/raptiformica/mesh"
	"github.com/raptiformica/raptiformica/provision"
	"github.com/raptiformica/raptiformica/reconcile"
	"github.com/raptiformica/raptiformica/rules"
)

// Agent is one node's daemon.
type Agent struct {
	Config   nodeconfig.Config
	Registry backends.Registry
	// Binary is the raptiformica executable that new machines run.
	Binary string
	// Version is the agent's version, as the members are shown it.
	Version string
	Log     hclog.Logger
	Clock   clock.Clock
	// LogMaxBytes is the size at which agent.log and consul.log are
	// rotated; 0 means logfile.DefaultMaxBytes.
	LogMaxBytes int64

	// Set by Run before any component starts; read-only afterwards.
	metrics   *telemetry.Metrics
	consul    *api.Client
	store     *kvschema.Store
	inventory *reconcile.Inventory
	seed      *kvSeed

	// The components.
	proc        *ConsulProcess
	mesh        *meshSync // nil with mesh = "none"
	http        *httpServer
	mirror      *mirror
	modules     *moduleWatch
	elector     *elector
	quorum      *quorumWatch
	offers      *offerer
	work        *worker
	changes     *clusterChange
	provisioner *provisioner
	watchdog    *watchdog
}

// component is a long-lived part of the agent. Run blocks until ctx ends
// and then returns nil; an error means the agent cannot go on.
type component interface {
	Run(ctx context.Context) error
}

// Run starts the node and blocks until ctx ends or a component fails; then
// it stops leading, leaves Consul gracefully, stops Consul, shuts the HTTP
// server and returns. It returns an error when the node cannot start at
// all, or the error of the component that stopped it.
func (a *Agent) Run(ctx context.Context) error {
	defer a.rotateOwnLog(ctx, logCheckInterval)()
	if err := a.setUp(); err != nil {
		return err
	}
	if a.mesh != nil {
		// Consul binds to the overlay: it goes last.
		defer a.mesh.node.Close()
	}
	// Plain HTTP for the machine's own users only: other machines read
	// over TLS, with a member's certificate or a role's token.
	lns, err := listen(ctx, a.Config, []string{consulclient.LocalHost(a.Config)}, a.Config.HTTPPort, "http_port", a.Log)
	if err != nil && !consulclient.IsLoopback(a.Config.BindAddr) && errors.Is(err, syscall.EADDRINUSE) && a.Config.TLS != nil {
		// A host that runs several machines of the local backend on its
		// own addresses: another holds the loopback port. This one is
		// read over TLS and asked on its socket.
		a.Log.Warn("the plain HTTP port on loopback is another agent's: serving TLS and the socket only", telemetry.KeyError, err)
		lns, err = nil, nil
	}
	if err != nil {
		return err
	}
	a.http.lns = lns
	if ln, err := listenSocket(consulclient.AgentSocket(a.Config)); err != nil {
		a.Log.Warn("no socket for the agent's API: the CLI here asks it on loopback", telemetry.KeyError, err)
	} else if ln != nil {
		a.http.lns = append(a.http.lns, ln)
	}
	if a.Config.TLS != nil {
		tlsCfg, err := serverTLS(a.Config.TLS)
		if err != nil {
			return fmt.Errorf("node config tls: %w", err)
		}
		tlns, err := listen(ctx, a.Config, listenHosts(a.Config), a.Config.HTTPSPort, "https_port", a.Log)
		if err != nil {
			return err
		}
		for _, ln := range tlns {
			a.http.lns = append(a.http.lns, tls.NewListener(ln, tlsCfg))
		}
	}

	// stopping ends with ctx, or when Consul or the HTTP server fails.
	stopping, fail := context.WithCancelCause(ctx)
	defer fail(nil)
	// Consul and the HTTP server outlive the other components, so that
	// the node leaves Consul and answers /healthz while it stops.
	consul := startDetached(a.proc, fail)
	web := startDetached(a.http, fail)

	// Without Consul: the mesh is how a new node finds the cluster.
	atOnce := []component{}
	if a.mesh != nil {
		atOnce = append(atOnce, a.mesh)
	}
	// Once Consul has a leader and the KV holds this node's part.
	afterConsul := []component{a.mirror, a.modules, a.elector, a.quorum, a.watchdog, a.offers, a.work, a.changes, a.provisioner}

	g, gctx := errgroup.WithContext(stopping)
	for _, c := range atOnce {
		g.Go(func() error { return c.Run(gctx) })
	}
	up := make(chan struct{})
	g.Go(func() error {
		if a.waitConsul(gctx) != nil {
			return nil
		}
		a.Log.Info("consul is up")
		if a.seed.run(gctx) == nil {
			close(up)
		}
		return nil
	})
	for _, c := range afterConsul {
		g.Go(func() error {
			select {
			case <-up:
				return c.Run(gctx)
			case <-gctx.Done():
				return nil
			}
		})
	}

	<-gctx.Done()
	a.Log.Info("stopping")
	notify("STOPPING=1")
	err = g.Wait() // the elector has stopped leading when this returns
	a.leave()
	err = errors.Join(err, consul.stop())
	err = errors.Join(err, web.stop())
	a.Log.Info("stopped")
	return err
}

// setUp makes what the components share and the components themselves:
// the node's address resolved, the mesh up (the node's address becomes the
// overlay one), the Consul client, and a description loaded (from the
// mirror, else the node config). It starts no goroutine but the mesh's.
func (a *Agent) setUp() (err error) {
	a.Clock = clock.Or(a.Clock)
	bindAuto := a.Config.BindAddr == nodeconfig.BindAuto
	addr, err := nodeconfig.ResolveBindAddr(a.Config.BindAddr)
	if err != nil {
		return err
	}
	a.Config.BindAddr = addr
	a.Log = a.Log.With(telemetry.KeyMachineID, a.Config.MachineID)
	if err := os.MkdirAll(a.Config.DataDir, 0o700); err != nil {
		return fmt.Errorf("data dir: %w", err)
	}
	if err := a.ensureIdentity(); err != nil {
		return err
	}
	var overlay *mesh.Node
	var known meshMirror
	if a.Config.Mesh != nil {
		if overlay, known, err = startMesh(a.Config, a.Log); err != nil {
			return err
		}
		defer func() {
			if err != nil {
				overlay.Close()
			}
		}()
		a.Config.Mesh.Underlay = a.Config.BindAddr
		a.Config.BindAddr = overlay.Address().String()
		a.Log.Info("mesh up", telemetry.KeyAddress, a.Config.BindAddr, telemetry.KeyPublicKey, overlay.PublicKey(), telemetry.KeyListenPort, a.Config.Mesh.ListenPort)
	}
	c := a.Config

	client, err := consulclient.Local(c)
	if err != nil {
		return fmt.Errorf("consul client: %w", err)
	}
	a.metrics = telemetry.New()
	a.consul = client
	a.store = kvschema.New(client)
	a.inventory = &reconcile.Inventory{Store: a.store}
	a.seed = &kvSeed{cfg: c, store: a.store, inventory: a.inventory, clock: a.Clock, log: a.Log}

	a.mirror = &mirror{
		dir: filepath.Join(c.DataDir, "mirror"), self: c.MachineID, server: c.ConsulServer, parse: reconcile.ParseOptions(a.Registry),
		store: a.store, inventory: a.inventory, consul: client, clock: a.Clock, log: a.Log, metrics: a.metrics,
	}
	bes := &backendSet{
		registry: a.Registry, platform: a.mirror.Platform, store: a.store, log: a.Log,
		env: backends.Env{ClusterDir: c.ClusterDir, Binary: a.Binary, ConsulBinary: c.ConsulBinary, BindAddr: c.BindAddr, Logger: a.Log.Named("backend")},
	}
	a.proc = &ConsulProcess{Config: c, Log: a.Log.Named("consul"), Metrics: a.metrics, Peers: a.mirror.peers, Clock: a.Clock, LogMaxBytes: a.LogMaxBytes}
	// Where a new machine can dial the node that configures it: in its
	// config even before this node's mesh entry is in KV.
	var selfEndpoints func() []string
	if overlay != nil {
		selfEndpoints = func() []string { return meshEndpoints(c.Mesh, bindAuto) }
	}
	executor := &reconcile.Executor{
		Inventory: a.inventory, Consul: client, Clock: a.Clock, Log: a.Log.Named("executor"), Metrics: a.metrics, Token: c.ACLToken, CACert: c.TLS.CACert,
		Forget: func(ctx context.Context, id string) error { return enrol.RemoveMachineToken(ctx, client, id) },
		NodeConfig: enrol.NodeConfigs{
			Client: client, Cred: enrol.Credentials{Token: c.ACLToken, CA: c.TLS.CA()}, ClusterDir: c.ClusterDir, ConsulBinary: c.ConsulBinary,
			Self: selfEndpoints,
		}.For,
		Grant: enrol.GrantWork(client),
		Self:  c.MachineID,
		Hooks: &reconcile.HookRunner{Log: a.Log.Named("hook"), Metrics: a.metrics, Clock: a.Clock},
	}
	a.elector = &elector{
		self: c.MachineID, neverLead: !mayLead(c), consul: client, store: a.store, inventory: a.inventory, executor: executor,
		platform: a.mirror.Platform, backends: bes.get,
		snapshots: &snapshotter{store: a.store, inventory: a.inventory, every: snapshotEvery, chunkSize: snapshotChunk, clock: a.Clock, log: a.Log.Named("snapshot")},
		clock:     a.Clock, log: a.Log, metrics: a.metrics, wake: make(chan struct{}, 1),
	}
	notHere := ""
	if c.NeverLead {
		notHere = c.Backend
	}
	a.offers = &offerer{
		self: c.MachineID, version: a.Version, notHere: notHere, backends: bes.get, platform: a.mirror.Platform, store: a.store,
		clock: a.Clock, log: a.Log.Named("offers"), metrics: a.metrics, wake: make(chan struct{}, 1),
	}
	a.work = &worker{
		orders: reconcile.NewOrders(a.store, c.MachineID), backends: bes.get, env: bes.env, published: a.offers.publishAfter,
		served: filepath.Join(c.DataDir, "hosted-backends.json"), clock: a.Clock, log: a.Log.Named("work"),
	}
	a.offers.hosting = a.work.hosting
	executor.Served = func(ctx context.Context, backend string) uint64 {
		a.work.serve(backend)
		pctx, cancel := context.WithTimeout(ctx, offerCheckTimeout)
		defer cancel()
		return a.offers.publish(pctx)
	}
	a.provisioner = &provisioner{
		self: c.MachineID, machineType: c.MachineType, runner: &provision.Self{Dir: filepath.Join(c.DataDir, "provisioners"), Clock: a.Clock},
		platform: a.mirror.Platform, store: a.store, hooks: executor.Hooks,
		clock: a.Clock, log: a.Log.Named("provision"), metrics: a.metrics, wake: make(chan struct{}, 1), publish: make(chan struct{}, 1),
	}
	a.changes = &clusterChange{self: c.MachineID, consul: client, platform: a.mirror.Platform, hooks: executor.Hooks, clock: a.Clock, log: a.Log.Named("hook"), wake: make(chan struct{}, 1)}
	a.mirror.changed = func() { a.elector.poke(); a.offers.poke(); a.provisioner.poke(); a.changes.poke() }
	a.modules = &moduleWatch{
		path: filepath.Join(c.DataDir, "mirror", modulesFile), store: a.store, parse: a.mirror.parse,
		log: a.Log.Named("modules"), changed: a.mirror.changed,
	}
	a.modules.load()
	a.mirror.overlay = a.modules.apply
	a.mirror.leading, a.modules.leading = a.elector.Leading, a.elector.Leading
	// A new leader re-seeds a KV that lost its state and reads the
	// description and the modules from the Raft leader before it plans.
	a.elector.reseed = func(ctx context.Context) bool {
		ok := a.mirror.reseed(ctx)
		if ok {
			a.modules.confirm(ctx)
			if err := a.store.AnchorModules(ctx); err != nil {
				a.Log.Debug("anchor the modules' watches", telemetry.KeyError, err)
			}
		}
		return ok
	}
	a.quorum = &quorumWatch{
		cfg: c, consul: client, inventory: a.inventory, proc: a.proc, mirror: a.mirror, seed: a.seed,
		backends: bes.get, poke: a.elector.poke, askPeer: askPeerQuorum(c),
		clock: a.Clock, log: a.Log, metrics: a.metrics,
	}
	if overlay != nil {
		a.mesh = &meshSync{
			node: overlay, known: known, cfg: c, bindAuto: bindAuto,
			consul: client, store: a.store, inventory: a.inventory,
			platform: a.mirror.Platform, leading: a.elector.Leading,
			clock: a.Clock, log: a.Log, metrics: a.metrics, hooks: executor.Hooks,
		}
	}
	a.watchdog = &watchdog{consul: client, clock: a.Clock, log: a.Log}
	a.http = &httpServer{
		cfg: c, consul: client, store: a.store, inventory: a.inventory,
		mirror: a.mirror, elector: a.elector, quorum: a.quorum, mesh: a.mesh, provisioner: a.provisioner, newNode: executor.NodeConfig,
		clock: a.Clock, log: a.Log, metrics: a.metrics,
	}
	return a.mirror.load(c.PlatformFile, c.Platform)
}

// ensureIdentity gives the node its credentials: its ACL token and its
// certificate. A node config carries them, written by whoever made the
// machine; only a seed may start without: on its first start it makes the
// cluster's identity, keeps it in its data folder, where every later start
// (and a recovery) finds it again, and signs its own certificate.
func (a *Agent) ensureIdentity() error {
	if a.Config.ACLToken != "" && a.Config.TLS != nil {
		return nil
	}
	seed := a.Config.Bootstrap && a.Config.ConsulServer
	if !seed {
		missing := "acl_token"
		if a.Config.ACLToken != "" {
			missing = "tls"
		}
		return fmt.Errorf("node config: %s is missing: Consul runs with ACLs and TLS, and a machine without the cluster's credentials can join nothing. "+
			"Machines made by the cluster get theirs from their maker; for a machine configured by hand, use `raptiformica join` or copy them from a server's node config. "+
			"A cluster made before this version is re-created: `raptiformica down` keeps its description and `raptiformica up` brings it back", missing)
	}
	id, err := identity.Read(a.Config.DataDir)
	if errors.Is(err, identity.ErrNone) {
		if _, serr := os.Stat(filepath.Join(a.Config.DataDir, "consul", "raft")); serr == nil {
			// A seed of a cluster made before ACLs: an identity made now
			// would lock its Consul alone, apart from its members.
			return errors.New("node config: acl_token is missing, and this seed's Consul holds a cluster made before ACLs. " +
				"Re-create the cluster with them: `raptiformica down` keeps its description and `raptiformica up` brings it back")
		}
		if id, err = identity.New(a.Config.Cluster); err == nil {
			if a.Config.Encrypt != "" {
				id.GossipKey = a.Config.Encrypt
			}
			err = identity.Write(a.Config.DataDir, id)
			a.Log.Info("made the cluster's identity", telemetry.KeyFile, filepath.Join(a.Config.DataDir, identity.File))
		}
	} else if err == nil && id.CACert == "" {
		// Kept by a seed of before TLS: the CA joins it.
		if err = id.EnsureCA(a.Config.Cluster); err == nil {
			err = identity.Write(a.Config.DataDir, id)
		}
	}
	if err != nil {
		return err
	}
	if a.Config.ACLToken == "" {
		a.Config.ACLToken = id.ManagementToken
	}
	if a.Config.Encrypt == "" {
		a.Config.Encrypt = id.GossipKey
	}
	if a.Config.TLS == nil {
		cert, err := id.CA().Issue(a.Config.MachineID, true)
		if err != nil {
			return fmt.Errorf("sign this seed's certificate: %w", err)
		}
		a.Config.TLS = &nodeconfig.TLS{CACert: id.CACert, CAKey: id.CAKey, Cert: cert.CertPEM, Key: cert.KeyPEM}
	}
	return nil
}

// waitConsul blocks until the local Consul answers and the cluster has a
// leader, which every KV write needs.
func (a *Agent) waitConsul(ctx context.Context) error {
	return clock.Poll(ctx, a.Clock, 250*time.Millisecond, func() (bool, error) {
		lctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		leader, err := consulclient.Leader(lctx, a.consul)
		return err == nil && leader != "", nil
	})
}

// leave takes the node out of the cluster, so that the others see "left",
// not "failed", and a server is taken out of Raft. It gives up after 5 s.
func (a *Agent) leave() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := consulclient.Leave(ctx, a.consul); err != nil {
		a.Log.Warn("leave failed", telemetry.KeyError, err)
	}
}

// detached is a component run on a context of its own, so that the agent's
// stop ends it at its turn rather than with the others.
type detached struct {
	cancel context.CancelFunc
	done   chan error
}

// startDetached runs c until stop; if c fails first, fail is called with
// its error, which stops the agent.
func startDetached(c component, fail context.CancelCauseFunc) *detached {
	ctx, cancel := context.WithCancel(context.Background())
	d := &detached{cancel: cancel, done: make(chan error, 1)}
	go func() {
		err := c.Run(ctx)
		if err != nil {
			fail(err)
		}
		d.done <- err
	}()
	return d
}

// stop ends the component, waits for it and returns its error.
func (d *detached) stop() error {
	d.cancel()
	return <-d.done
}

// serverTLS is the agent's TLS: the machine's certificate, sent with the
// CA's, so that a machine joining with a token can check the CA by its
// hash before it sends anything. A caller may show a certificate of the
// cluster's CA (a member reading this agent's status), which is verified;
// one without any (a machine joining, a person with a token) is served as
// well, and its requests are judged by their token.
func serverTLS(t *nodeconfig.TLS) (*tls.Config, error) {
	pair, err := tls.X509KeyPair([]byte(t.Cert+t.CACert), []byte(t.Key))
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM([]byte(t.CACert)) {
		return nil, errors.New("no CA certificate in PEM")
	}
	return &tls.Config{Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12,
		ClientAuth: tls.VerifyClientCertIfGiven, ClientCAs: pool}, nil
}

// listen holds one of the agent's ports (named by its setting) on every
// address it serves, before anything starts: a port held by another
// program stops the agent at once; the overlay address is waited for until
// ctx ends.
func listen(ctx context.Context, c nodeconfig.Config, hosts []string, port int, setting string, log hclog.Logger) ([]net.Listener, error) {
	var lns []net.Listener
	for _, host := range hosts {
		addr := net.JoinHostPort(host, strconv.Itoa(port))
		// The overlay's address is this node's own and tentative until the
		// kernel's duplicate address detection is done, which a loaded
		// machine may take long over: wait for it as long as the agent
		// runs (an agent that gave up after a fixed time exited under
		// load). Any other address missing is a configuration error.
		wait := 10 * time.Second
		overlay := c.Mesh != nil && host == c.BindAddr
		if overlay {
			wait = 0
		}
		var ln net.Listener
		var err error
		wctx, cancel := ctx, context.CancelFunc(func() {})
		if wait > 0 {
			wctx, cancel = context.WithTimeout(ctx, wait)
		}
		start, said := time.Now(), time.Duration(0)
		_ = clock.Poll(wctx, clock.Real{}, 200*time.Millisecond, func() (bool, error) {
			ln, err = net.Listen("tcp", addr)
			if waited := time.Since(start); overlay && errors.Is(err, syscall.EADDRNOTAVAIL) && waited-said > 10*time.Second {
				said = waited
				log.Warn("waiting for the overlay address to become usable", telemetry.KeyAddress, host, telemetry.KeyWaited, waited.Round(time.Second))
			}
			return !errors.Is(err, syscall.EADDRNOTAVAIL), nil
		})
		cancel()
		if err != nil {
			for _, l := range lns {
				l.Close()
			}
			if errors.Is(err, syscall.EADDRNOTAVAIL) {
				return nil, fmt.Errorf("node config %s %d on bind_addr %s: %w (no interface of this machine has that address)", setting, port, host, err)
			}
			return nil, fmt.Errorf("node config %s %d on bind_addr %s: %w (another agent or program holds it; set %s)", setting, port, host, err, setting)
		}
		lns = append(lns, ln)
	}
	return lns, nil
}

// listenSocket holds the agent API's unix socket at path (nil for ""),
// readable by its owner alone: the machine's own token goes there from
// the CLI, and a loopback port is any local user's to take while the
// agent restarts. A socket left by the last run is replaced.
func listenSocket(path string) (net.Listener, error) {
	if path == "" {
		return nil, nil
	}
	if fi, err := os.Lstat(path); err == nil && fi.Mode()&os.ModeSocket != 0 {
		_ = os.Remove(path)
	}
	// The data folder is its owner's alone (0700): nobody else reaches
	// the socket in the moment before its mode is set.
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, err
	}
	return ln, nil
}

// listenHosts are the addresses the agent's HTTPS, and Consul's, listen
// on: the node's address, and with the mesh also loopback, where the CLI
// on the machine finds its agent and Consul.
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

// Platform returns the last valid description, or nil before the first.
func (a *Agent) Platform() *rules.Platform {
	if a.mirror == nil {
		return nil
	}
	return a.mirror.Platform()
}
