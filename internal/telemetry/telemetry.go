// Package telemetry holds the agent's Prometheus metrics and the fixed log
// keys, in one place so that names never drift between packages.
package telemetry

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// Log keys. Every structured log line uses these and no others.
const (
	KeyMachineID   = "machine_id"
	KeyMachineType = "machine_type"
	KeyBackend     = "backend"
	KeyAction      = "action"
	KeyReason      = "reason"
	KeyError       = "error"
	KeyEvent       = "event"
	KeyIndex       = "index"
	KeyFile        = "file"
	KeyDuration    = "duration"
	KeyLeader      = "leader"
	KeyPID         = "pid"
	KeyAddress     = "address"
	KeyHost        = "host"
	KeyAttempt     = "attempt"
)

// More log keys, each for what one kind of line says; like the ones above,
// the only names a log line's fields take (TestFloorPlanOneSetOfLogKeys).
const (
	KeyActions         = "actions"
	KeyAppliedIndex    = "applied_index"
	KeyBootstrap       = "bootstrap"
	KeyBytes           = "bytes"
	KeyChecksum        = "checksum"
	KeyCommand         = "command"
	KeyChunks          = "chunks"
	KeyCluster         = "cluster"
	KeyDetail          = "detail"
	KeyDial            = "dial"
	KeyEndpoint        = "endpoint"
	KeyExitCode        = "exit_code"
	KeyKVIndex         = "kv_index"
	KeyKVVersion       = "kv_version"
	KeyLeaderlessFor   = "leaderless_for"
	KeyListen          = "listen"
	KeyListenPort      = "listen_port"
	KeyMax             = "max"
	KeyMirrorVersion   = "mirror_version"
	KeyModules         = "modules"
	KeyNonce           = "nonce"
	KeyNotice          = "notice"
	KeyObserve         = "observe"
	KeyOffered         = "offered"
	KeyOutput          = "output"
	KeyOutputCut       = "output_cut"
	KeyPort            = "port"
	KeyPredicate       = "predicate"
	KeyProvisioner     = "provisioner"
	KeyPublicKey       = "key"
	KeyReadIndex       = "read_index"
	KeyRecords         = "records"
	KeyResolvers       = "resolvers"
	KeyRetryJoin       = "retry_join"
	KeyServer          = "server"
	KeyServersAlive    = "servers_alive"
	KeyServersNotAlive = "servers_not_alive"
	KeyState           = "state"
	KeyStatus          = "status"
	KeyStep            = "step"
	KeyToken           = "token"
	KeyVersion         = "version"
	KeyWait            = "wait"
	KeyWaited          = "waited"
	KeyWatch           = "watch"
	KeyWhat            = "what"
)

// Metrics are every metric the agent exports, registered on a private
// registry.
type Metrics struct {
	Registry *prometheus.Registry

	ReconcileDuration   prometheus.Histogram
	ReconcileTotal      *prometheus.CounterVec
	LastSuccess         prometheus.Gauge
	Halted              prometheus.Gauge
	Actions             *prometheus.CounterVec
	MachinesDesired     *prometheus.GaugeVec
	MachinesMax         *prometheus.GaugeVec
	ScaleSignal         *prometheus.GaugeVec
	ScaleWant           *prometheus.GaugeVec
	ScaleSignalUp       *prometheus.GaugeVec
	MachinesLive        *prometheus.GaugeVec
	MachinesPending     *prometheus.GaugeVec
	MachinesFailed      *prometheus.GaugeVec
	BackendUp           *prometheus.GaugeVec
	BackendOffered      *prometheus.GaugeVec
	BackendErrors       *prometheus.CounterVec
	BackendBackoff      *prometheus.GaugeVec
	BackendCallDuration *prometheus.HistogramVec
	HookRuns            *prometheus.CounterVec
	IsLeader            prometheus.Gauge
	LeaderChanges       prometheus.Counter
	PlatformValid       prometheus.Gauge
	PlatformRejected    prometheus.Counter
	MirrorKeptNewer     *prometheus.CounterVec
	MirrorUnreadable    *prometheus.GaugeVec
	ConsulVoters        prometheus.Gauge
	FailureTolerance    prometheus.Gauge
	ConsulRestarts      prometheus.Counter
	ConsulLeaderless    prometheus.Gauge
	QuorumLost          prometheus.Gauge
	MeshPeers           *prometheus.GaugeVec
	MeshBytes           *prometheus.CounterVec
	MeshPeerChanges     *prometheus.CounterVec
	JoinRequests        *prometheus.CounterVec
	ProvisionRuns       *prometheus.CounterVec
	ProvisionState      *prometheus.GaugeVec
	BadRecords          prometheus.Gauge
}

const ns = "raptiformica"

// New creates the metrics on a new private registry, with the Go and process
// collectors beside them.
func New() *Metrics {
	reg := prometheus.NewRegistry()
	m := &Metrics{
		Registry: reg,
		ReconcileDuration: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: ns, Name: "reconcile_duration_seconds",
			Help: "Time to observe, plan and start the actions of one reconcile pass.", Buckets: prometheus.ExponentialBuckets(0.001, 4, 9)}),
		ReconcileTotal: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "reconcile_total",
			Help: "Reconcile passes by result (success, error)."}, []string{"result"}),
		LastSuccess: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Name: "reconcile_last_success_timestamp_seconds",
			Help: "Unix time of the last successful reconcile pass on this node."}),
		Halted: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Name: "reconcile_halted",
			Help: "1 when replacements are suspended because too many members are failed."}),
		Actions: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "actions_total",
			Help: "Actions run by the leader, by kind and result."}, []string{"kind", "result"}),
		MachinesDesired: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Name: "machines_desired",
			Help: "Machines the description asks for (min), by machine type."}, []string{"machine_type"}),
		MachinesMax: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Name: "machines_max",
			Help: "Most machines the description allows, by machine type."}, []string{"machine_type"}),
		ScaleSignal: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Name: "scale_signal_value",
			Help: "The last value read of the signal a machine type scales on, by machine type."}, []string{"machine_type"}),
		ScaleWant: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Name: "scale_want",
			Help: "The count the signal decided, between min and max, by machine type."}, []string{"machine_type"}),
		ScaleSignalUp: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Name: "scale_signal_up",
			Help: "1 when the last read of a machine type's signal gave a value, 0 when it failed or is missing (the count holds)."}, []string{"machine_type"}),
		MachinesLive: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Name: "machines_live",
			Help: "Joined, alive machines, by machine type."}, []string{"machine_type"}),
		MachinesPending: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Name: "machines_in_flight",
			Help: "Machines being spawned or joining, by machine type."}, []string{"machine_type"}),
		MachinesFailed: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Name: "machines_failed",
			Help: "Failed machines not yet reaped, by machine type."}, []string{"machine_type"}),
		BackendUp: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Name: "backend_up",
			Help: "1 when the backend answered its last availability check and listing."}, []string{"backend"}),
		BackendOffered: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Name: "backend_offered",
			Help: "1 when this machine can run the backend (its availability check passed here), so that the leader may place machines of it on this one."}, []string{"backend"}),
		BackendBackoff: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Name: "backend_backoff_seconds",
			Help: "Seconds until a backend whose calls failed is tried again; 0 when it is not backing off."}, []string{"backend"}),
		BackendErrors: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "backend_errors_total",
			Help: "Failed backend calls, by backend."}, []string{"backend"}),
		BackendCallDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: ns, Name: "backend_call_duration_seconds",
			Help: "Duration of backend calls, by backend and operation.", Buckets: prometheus.ExponentialBuckets(0.001, 4, 10)}, []string{"backend", "op"}),
		HookRuns: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "hook_runs_total",
			Help: "Hook commands run, by event and result."}, []string{"event", "result"}),
		IsLeader: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Name: "is_leader",
			Help: "1 while this node holds the leader lock."}),
		LeaderChanges: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "leader_changes_total",
			Help: "Times this node gained or lost the leader lock."}),
		PlatformValid: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Name: "platform_valid",
			Help: "1 when the description in KV is valid; 0 when it was rejected and the last good one is in use."}),
		PlatformRejected: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "platform_rejected_total",
			Help: "Descriptions read from KV and rejected as invalid."}),
		MirrorKeptNewer: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "mirror_kept_newer_total",
			Help: "Times KV held an older copy than this node's on-disk mirror, which was kept; by what (platform, inventory)."}, []string{"what"}),
		MirrorUnreadable: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Name: "mirror_unreadable",
			Help: "1 while this node's on-disk mirror cannot be read or does not match the version stored with it, by what (platform, inventory): the node neither starts from it nor re-seeds KV from it."}, []string{"what"}),
		ConsulVoters: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Name: "consul_voters",
			Help: "Consul servers with a vote in Raft, as the leader sees them; leader only."}),
		FailureTolerance: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Name: "consul_failure_tolerance",
			Help: "Consul servers that may fail before quorum is lost, as Consul's autopilot reports; leader only."}),
		ConsulLeaderless: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Name: "consul_leaderless_seconds",
			Help: "How long this node's Consul has had no Raft leader; 0 while it has one."}),
		QuorumLost: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Name: "quorum_lost",
			Help: "1 when this node's Consul has had no leader for longer than the policy's quorum_lost_after."}),
		ConsulRestarts: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "consul_restarts_total",
			Help: "Times the supervised Consul agent exited and was restarted."}),
		MeshPeers: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Name: "mesh_peers",
			Help: "Overlay links of this node: up, or kept and being dialled (down)."}, []string{"state"}),
		MeshBytes: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "mesh_bytes_total",
			Help: "Bytes this node's overlay links carried, by direction (rx, tx)."}, []string{"direction"}),
		MeshPeerChanges: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "mesh_peer_changes_total",
			Help: "Overlay peers (by key) that came up or went down: the mesh's churn."}, []string{"change"}),
		JoinRequests: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "join_requests_total",
			Help: "Join tokens presented to this agent, by result (joined, refused, error)."}, []string{"result"}),
		ProvisionRuns: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "provision_runs_total",
			Help: "Passes over this machine's provisioners that ran steps, by result (ok, failed)."}, []string{"result"}),
		ProvisionState: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Name: "provision_state",
			Help: "1 for this machine's provisioning state (running, ok, failed), 0 for the others; all 0 when its type has no provisioners."}, []string{"state"}),
		BadRecords: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Name: "bad_records",
			Help: "Stored per-machine records the leader's last pass refused (too large, unreadable, or naming another machine than their key); leader only."}),
	}
	reg.MustRegister(
		m.ReconcileDuration, m.ReconcileTotal, m.LastSuccess, m.Halted, m.Actions,
		m.MachinesDesired, m.MachinesMax, m.MachinesLive, m.MachinesPending, m.MachinesFailed,
		m.ScaleSignal, m.ScaleWant, m.ScaleSignalUp,
		m.BackendUp, m.BackendOffered, m.BackendErrors, m.BackendBackoff, m.BackendCallDuration, m.HookRuns,
		m.IsLeader, m.LeaderChanges, m.PlatformValid, m.PlatformRejected, m.ConsulRestarts,
		m.ConsulLeaderless, m.QuorumLost, m.MirrorKeptNewer, m.MirrorUnreadable,
		m.ConsulVoters, m.FailureTolerance, m.MeshPeers, m.MeshBytes, m.MeshPeerChanges, m.JoinRequests,
		m.ProvisionRuns, m.ProvisionState, m.BadRecords,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	for _, r := range []string{"success", "error"} {
		m.ReconcileTotal.WithLabelValues(r)
	}
	for _, r := range []string{"ok", "failed"} {
		m.ProvisionRuns.WithLabelValues(r)
	}
	for _, w := range []string{"platform", "inventory"} {
		m.MirrorKeptNewer.WithLabelValues(w)
		m.MirrorUnreadable.WithLabelValues(w)
	}
	return m
}

// ForgetLeaderView drops what only the leader knows (the machines per type,
// backend health, halts, Consul's fault tolerance) when this node stops
// leading, so that a scrape shows the current leader's view and no stale
// copy of a former one's.
func (m *Metrics) ForgetLeaderView() {
	for _, v := range []*prometheus.GaugeVec{m.MachinesDesired, m.MachinesMax, m.MachinesLive, m.MachinesPending, m.MachinesFailed, m.ScaleSignal, m.ScaleWant, m.ScaleSignalUp, m.BackendUp, m.BackendBackoff} {
		v.Reset()
	}
	m.Halted.Set(0)
	m.ConsulVoters.Set(0)
	m.FailureTolerance.Set(0)
}
