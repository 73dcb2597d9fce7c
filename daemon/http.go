package daemon

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/sync/errgroup"

	"github.com/raptiformica/raptiformica/daemon/agentapi"
	"github.com/raptiformica/raptiformica/internal/clock"
	"github.com/raptiformica/raptiformica/internal/consulclient"
	"github.com/raptiformica/raptiformica/internal/kvschema"
	"github.com/raptiformica/raptiformica/internal/nodeconfig"
	"github.com/raptiformica/raptiformica/internal/state"
	"github.com/raptiformica/raptiformica/internal/telemetry"
	"github.com/raptiformica/raptiformica/internal/termsafe"
	"github.com/raptiformica/raptiformica/reconcile"
)

// httpServer serves the agent's API (package agentapi), /metrics, /healthz
// and the status page on the listeners the agent opened at start. It owns
// no state: it reports the other components'.
type httpServer struct {
	lns       []net.Listener
	cfg       nodeconfig.Config
	consul    *api.Client
	store     *kvschema.Store
	inventory *reconcile.Inventory
	mirror    *mirror
	elector   *elector
	quorum    *quorumWatch
	mesh      *meshSync // nil with mesh = "none"
	// provisioner is this machine's provisioning; nil shows none.
	provisioner *provisioner
	// newNode configures a machine joined with a token.
	newNode reconcile.NodeConfigFunc
	clock   clock.Clock
	log     hclog.Logger
	metrics *telemetry.Metrics
	// limits bound each client; nil is defaultHTTPLimits.
	limits *httpLimits
	// readers remembers the tokens Consul vouched for as readers.
	readers readerTokens
}

// readerTokens remembers, by the SHA-256 of a token, the tokens Consul
// said may read an agent (the operator, read-only or metrics role), so
// that a scrape every 15 s asks Consul once every readerFresh, and keeps
// being answered while Consul cannot resolve tokens (no quorum: when the
// metrics matter most) for up to readerStale, as Consul's own
// extend-cache down policy does. At most readerMax are kept. Safe for
// concurrent use; the zero value is empty.
type readerTokens struct {
	mu   sync.Mutex
	seen map[[32]byte]time.Time // when Consul last vouched; guarded by mu
}

const (
	readerFresh = 5 * time.Minute
	readerStale = time.Hour
	readerMax   = 64
)

// allows reports whether auth's bearer token may read the agent: Consul
// vouches for it now, or did within readerFresh, or within readerStale
// when Consul cannot be asked.
func (rt *readerTokens) allows(ctx context.Context, c *api.Client, auth string) bool {
	tok, ok := strings.CutPrefix(auth, "Bearer ")
	if !ok || len(tok) != 36 || c == nil {
		return false
	}
	key := sha256.Sum256([]byte(tok))
	now := time.Now()
	rt.mu.Lock()
	last, known := rt.seen[key]
	rt.mu.Unlock()
	if known && now.Sub(last) < readerFresh {
		return true
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	// Stale: any server answers, so that a scrape is judged while the
	// servers elect a leader.
	self, _, err := c.ACL().TokenReadSelf((&api.QueryOptions{Token: tok, AllowStale: true}).WithContext(ctx))
	var se api.StatusError
	switch {
	case err == nil && self != nil && readerPolicy(self):
	case err != nil && !(errors.As(err, &se) && se.Code == http.StatusForbidden) && known && now.Sub(last) < readerStale:
		return true // Consul cannot answer: believe what it said last
	default:
		rt.mu.Lock()
		delete(rt.seen, key)
		rt.mu.Unlock()
		return false
	}
	rt.mu.Lock()
	defer rt.mu.Unlock()
	if rt.seen == nil {
		rt.seen = map[[32]byte]time.Time{}
	}
	if _, ok := rt.seen[key]; !ok && len(rt.seen) >= readerMax {
		var oldest [32]byte
		var at time.Time
		for k, t := range rt.seen {
			if at.IsZero() || t.Before(at) {
				oldest, at = k, t
			}
		}
		delete(rt.seen, oldest)
	}
	rt.seen[key] = now
	return true
}

// readerPolicy reports whether a token's policies make it a reader: the
// operator's (global management) or a read-only or metrics role's.
func readerPolicy(t *api.ACLToken) bool {
	for _, p := range t.Policies {
		if p.ID == kvschema.GlobalManagementPolicyID || p.Name == kvschema.ReadOnlyPolicy || p.Name == kvschema.MetricsPolicy {
			return true
		}
	}
	return false
}

// httpLimits bound what one client of the agent's HTTP server may hold:
// the time to send its headers and body, to read the answer, to keep an
// idle connection, and the size of its headers and body.
type httpLimits struct {
	readHeader, read, write, idle time.Duration
	maxHeaderBytes                int
	maxBodyBytes                  int64
}

// defaultHTTPLimits are the agent's. Requests are small (a join or a peer
// is under 4 KiB), so a client gets seconds to send one; the slowest
// answer is a plan, which observes for up to a minute.
var defaultHTTPLimits = httpLimits{
	readHeader: 5 * time.Second, read: 10 * time.Second, write: planTimeout + 15*time.Second, idle: time.Minute,
	maxHeaderBytes: 16 << 10, maxBodyBytes: 64 << 10,
}

const (
	// planTimeout bounds a plan's observation, which asks the backends.
	planTimeout = time.Minute
	// healthzConsulTimeout bounds /healthz's question to Consul: whoever
	// asks (systemd, a load balancer, Prometheus) gets an answer within a
	// second, and a Consul that slow is not healthy.
	healthzConsulTimeout = 750 * time.Millisecond
)

// server is the HTTP server of handler under h's limits: no client holds
// a connection, or a handler's memory, for longer or more than they say.
func (h *httpServer) server(handler http.Handler) *http.Server {
	l := defaultHTTPLimits
	if h.limits != nil {
		l = *h.limits
	}
	return &http.Server{
		Handler:           http.MaxBytesHandler(handler, l.maxBodyBytes),
		ReadHeaderTimeout: l.readHeader, ReadTimeout: l.read, WriteTimeout: l.write, IdleTimeout: l.idle,
		MaxHeaderBytes: l.maxHeaderBytes,
	}
}

// Run serves until ctx ends, then shuts the server down (open requests get
// 2 s) and returns nil; it returns an error when a listener fails.
func (h *httpServer) Run(ctx context.Context) error {
	srv := h.server(h.handler())
	g, gctx := errgroup.WithContext(ctx)
	for _, ln := range h.lns {
		g.Go(func() error {
			if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
				return fmt.Errorf("serve http on %s: %w", ln.Addr(), err)
			}
			return nil
		})
	}
	g.Go(func() error {
		<-gctx.Done()
		shutdownCtx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(shutdownCtx)
		return nil
	})
	return g.Wait()
}

func (h *httpServer) handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", h.reading(promhttp.HandlerFor(h.metrics.Registry, promhttp.HandlerOpts{Registry: h.metrics.Registry})))
	// /healthz and /livez say ok or not to anyone (load balancers,
	// Consul's check); why not, only to readers.
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		if !h.mirror.Ready() {
			http.Error(w, "not ready: waiting for Consul and a platform description\n", http.StatusServiceUnavailable)
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), healthzConsulTimeout)
		defer cancel()
		if _, err := h.consul.Status().LeaderWithQueryOptions((&api.QueryOptions{}).WithContext(ctx)); err != nil {
			why := "consul unreachable"
			if h.reader(r) {
				why += ": " + err.Error()
			}
			http.Error(w, why+"\n", http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ok\n"))
	})
	// /livez is the agent alone: it serves and holds a description. It
	// asks nothing of Consul, so that a slow cluster does not flip every
	// member's Consul check (see agentService).
	mux.HandleFunc("GET /livez", func(w http.ResponseWriter, r *http.Request) {
		if !h.mirror.Ready() {
			http.Error(w, "not ready: waiting for Consul and a platform description\n", http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.Handle("GET /{$}", h.reading(http.HandlerFunc(h.servePage)))
	addPeer := func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "this node runs without the mesh (mesh = \"none\"): there is nothing to peer\n", http.StatusConflict)
	}
	if h.mesh != nil {
		addPeer = h.mesh.serveAddPeer
	}
	mux.HandleFunc("POST "+agentapi.MeshPeersPath, h.acting(addPeer))
	// A plan observes through the backends: token holders only, and only
	// a server leads.
	mux.HandleFunc("GET "+agentapi.PlanPath, h.serverOnly(h.acting(func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), planTimeout)
		defer cancel()
		d, err := h.elector.DryRun(ctx)
		if errors.Is(err, errNotLeading) {
			http.Error(w, err.Error()+": ask the leader\n", http.StatusConflict)
			return
		} else if err != nil {
			http.Error(w, "observe: "+err.Error()+"\n", http.StatusServiceUnavailable)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(d.Plan())
	})))
	mux.HandleFunc("POST "+agentapi.MachinesPath, h.serverOnly(h.acting(h.serveSpawn)))
	mux.HandleFunc("DELETE "+agentapi.MachinesPath+"/{id}", h.serverOnly(h.acting(h.serveDestroy)))
	mux.HandleFunc("POST "+agentapi.JoinPath, h.serveJoin)
	mux.Handle("GET "+agentapi.StatusPath, h.reading(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		b, _ := json.MarshalIndent(h.status(), "", "  ")
		// Members wrote much of it: nothing that a terminal takes for a
		// command reaches whoever curls it.
		_, _ = w.Write(append(termsafe.JSON(b), '\n'))
	})))
	return mux
}

// reading guards what discloses the cluster's state (its topology, types,
// leader, recent actions, backend errors): the status, the page and the
// metrics. The machine's own users read it over plain HTTP, which listens
// on its loopback only; another machine over TLS, showing a certificate of
// the cluster's CA (a member: the quorum watch asks its peers so, when no
// Consul can vouch for a token), or a token of the operator, read-only or
// metrics role (Prometheus, a person), or this machine's own.
func (h *httpServer) reading(next http.Handler) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		switch {
		case h.reader(r):
		case r.TLS == nil:
			http.Error(w, fmt.Sprintf("other machines read this agent over TLS: ask https://%s with a token of the metrics, read-only or operator role\n", net.JoinHostPort(h.cfg.BindAddr, strconv.Itoa(h.cfg.HTTPSPort))), http.StatusForbidden)
			return
		default:
			http.Error(w, "reading this agent takes a token of the metrics, read-only or operator role: send it as Authorization: Bearer TOKEN\n", http.StatusUnauthorized)
			return
		}
		next.ServeHTTP(w, r)
	}
}

// reader reports whether r may read the cluster's state (see reading).
func (h *httpServer) reader(r *http.Request) bool {
	switch {
	case r.TLS == nil:
		return fromLoopback(r)
	case len(r.TLS.VerifiedChains) > 0:
		return true
	case h.cfg.ACLToken != "" && subtle.ConstantTimeCompare([]byte(r.Header.Get("Authorization")), []byte("Bearer "+h.cfg.ACLToken)) == 1:
		return true
	}
	return h.readers.allows(r.Context(), h.consul, r.Header.Get("Authorization"))
}

// acting guards an endpoint that makes the node act: the caller must hold
// the machine's own token (compared in constant time) or, on a server,
// another operator's token (one with Consul's global-management policy,
// which Consul itself vouches for), and send it over TLS, or from the
// machine itself (loopback), where nobody else sees it. Reading (status,
// metrics, the page) needs none and discloses no secret.
//
// A client agent (consul_server = false) acts for its own token only, a
// narrow one that speaks for that machine alone: it holds only its own
// keys, and must not be where the cluster's authority is exercised, so an
// operator's token is refused there without being shown to Consul.
// Callers check that an agent's certificate names a server before they
// send an operator's token; one that arrives at a client anyway (from its
// own loopback) acts for nobody.
func (h *httpServer) acting(next http.HandlerFunc) http.HandlerFunc {
	want := []byte("Bearer " + h.cfg.ACLToken)
	return func(w http.ResponseWriter, r *http.Request) {
		if r.TLS == nil && !fromLoopback(r) {
			http.Error(w, fmt.Sprintf("this endpoint is served over TLS to other machines: ask https://%s\n", net.JoinHostPort(h.cfg.BindAddr, strconv.Itoa(h.cfg.HTTPSPort))), http.StatusForbidden)
			return
		}
		got := []byte(r.Header.Get("Authorization"))
		own := h.cfg.ACLToken != "" && subtle.ConstantTimeCompare(got, want) == 1
		switch {
		case own:
		case !h.cfg.ConsulServer:
			http.Error(w, "this agent is a client's: it acts for its own machine's token only, never for an operator's\n", http.StatusUnauthorized)
			return
		case h.cfg.ACLToken == "" || !h.operator(r.Context(), string(got)):
			http.Error(w, "this endpoint acts for the cluster's operators only: send an operator's token as Authorization: Bearer TOKEN\n", http.StatusUnauthorized)
			return
		}
		next(w, r)
	}
}

// serverOnly guards an endpoint that needs the cluster's authority (a
// plan, which runs backend calls): a client agent refuses it outright,
// whatever token comes with it.
func (h *httpServer) serverOnly(next http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if !h.cfg.ConsulServer {
			http.Error(w, "this agent is a client's: it acts for no operator; ask a server (the leader)\n", http.StatusForbidden)
			return
		}
		next(w, r)
	}
}

// operator asks Consul whether the bearer token of auth may manage the
// cluster. Only a token's shape reaches Consul, which caches what it
// resolves.
func (h *httpServer) operator(ctx context.Context, auth string) bool {
	tok, ok := strings.CutPrefix(auth, "Bearer ")
	if !ok || len(tok) != 36 || h.consul == nil {
		return false
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	self, _, err := h.consul.ACL().TokenReadSelf((&api.QueryOptions{Token: tok}).WithContext(ctx))
	if err != nil || self == nil {
		return false
	}
	for _, p := range self.Policies {
		if p.ID == kvschema.GlobalManagementPolicyID {
			return true
		}
	}
	return false
}

// fromLoopback reports whether the request came from the machine itself:
// over loopback, or over the agent's unix socket.
func fromLoopback(r *http.Request) bool {
	if la, ok := r.Context().Value(http.LocalAddrContextKey).(net.Addr); ok && la.Network() == "unix" {
		return true
	}
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	return err == nil && consulclient.IsLoopback(host)
}

func (h *httpServer) status() agentapi.AgentStatus {
	st := agentapi.AgentStatus{
		MachineID: h.cfg.MachineID, MachineType: h.cfg.MachineType, Address: h.cfg.BindAddr,
		IsLeader: h.elector.Leading(), Ready: h.mirror.Ready(), PlatformError: h.mirror.PlatformError(), MirrorError: h.mirror.MirrorError(),
		Reconcile: h.elector.LastStatus(), Quorum: h.quorum.Status(),
	}
	if h.mesh != nil {
		st.Mesh = h.mesh.Status()
	}
	if h.provisioner != nil {
		st.Provisioning = h.provisioner.Status()
	}
	if st.Quorum != nil {
		// Without a Consul leader a KV read waits for one for seconds, then
		// fails: say what this node knows instead.
		return st
	}
	// A node cut off from the servers (before its quorum watch says so)
	// waits seconds for each read: answer with what it knows instead.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	st.Leader = h.store.Leader(ctx)
	if !st.IsLeader {
		if b, err := h.store.Status(ctx); err == nil && b != nil {
			var rs state.Status
			if json.Unmarshal(b, &rs) == nil {
				st.Reconcile = &rs
			}
		}
	}
	return st
}
