package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/raptiformica/raptiformica/internal/clock"
	"github.com/raptiformica/raptiformica/internal/consulclient"
	"github.com/raptiformica/raptiformica/internal/fsutil"
	"github.com/raptiformica/raptiformica/internal/kvschema"
	"github.com/raptiformica/raptiformica/internal/logfile"
	"github.com/raptiformica/raptiformica/internal/nodeconfig"
	"github.com/raptiformica/raptiformica/internal/procenv"
	"github.com/raptiformica/raptiformica/internal/telemetry"
)

// consulConfig is the subset of Consul's agent configuration we generate.
type consulConfig struct {
	NodeName           string            `json:"node_name"`
	Datacenter         string            `json:"datacenter"`
	DataDir            string            `json:"data_dir"`
	BindAddr           string            `json:"bind_addr"`
	AdvertiseAddr      string            `json:"advertise_addr"`
	ClientAddr         string            `json:"client_addr"`
	Addresses          map[string]string `json:"addresses,omitempty"`
	Server             bool              `json:"server"`
	Bootstrap          bool              `json:"bootstrap,omitempty"`
	RetryJoin          []string          `json:"retry_join,omitempty"`
	RetryInterval      string            `json:"retry_interval"`
	Encrypt            string            `json:"encrypt,omitempty"`
	Ports              map[string]int    `json:"ports"`
	NodeMeta           map[string]string `json:"node_meta"`
	DisableUpdateCheck bool              `json:"disable_update_check"`
	LogLevel           string            `json:"log_level"`
	LeaveOnTerminate   bool              `json:"leave_on_terminate"`
	Autopilot          map[string]any    `json:"autopilot,omitempty"`
	Performance        map[string]any    `json:"performance,omitempty"`
	GossipLAN          map[string]any    `json:"gossip_lan,omitempty"`
	Services           []consulService   `json:"services,omitempty"`
	ACL                *consulACL        `json:"acl,omitempty"`
	TLS                *consulTLS        `json:"tls,omitempty"`
	UnixSockets        map[string]string `json:"unix_sockets,omitempty"`
}

// consulTLS makes Consul's RPC mutual TLS with the cluster's CA: a server
// or client without a certificate of it is refused, and only a server's
// certificate may serve as a server (verify_server_hostname). HTTPS asks
// no client certificate: its callers (the CLI, Prometheus, other agents)
// show a token instead.
type consulTLS struct {
	Defaults    consulTLSDefaults `json:"defaults"`
	InternalRPC map[string]bool   `json:"internal_rpc"`
	HTTPS       map[string]bool   `json:"https"`
}

type consulTLSDefaults struct {
	CAFile         string `json:"ca_file"`
	CertFile       string `json:"cert_file"`
	KeyFile        string `json:"key_file"`
	VerifyIncoming bool   `json:"verify_incoming"`
	VerifyOutgoing bool   `json:"verify_outgoing"`
	MinVersion     string `json:"tls_min_version"`
}

// tlsFiles are where a node's certificate files are written for Consul,
// in its data folder.
func tlsFiles(c nodeconfig.Config) (ca, cert, key string) {
	dir := filepath.Join(c.DataDir, "tls")
	return filepath.Join(dir, "ca.pem"), filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
}

// writeTLSFiles writes the node's certificate files, readable by their
// owner only.
func writeTLSFiles(c nodeconfig.Config) error {
	if c.TLS == nil {
		return nil
	}
	ca, cert, key := tlsFiles(c)
	if err := os.MkdirAll(filepath.Dir(ca), 0o700); err != nil {
		return err
	}
	for _, f := range []struct{ name, pem string }{{ca, c.TLS.CACert}, {cert, c.TLS.Cert}, {key, c.TLS.Key}} {
		if err := fsutil.WriteFileAtomic(f.name, []byte(f.pem), 0o600); err != nil {
			return err
		}
	}
	return nil
}

// consulACL locks Consul down: without a token nothing is read or written,
// members included. Tokens given through the API are kept across restarts.
type consulACL struct {
	Enabled                bool              `json:"enabled"`
	DefaultPolicy          string            `json:"default_policy"`
	DownPolicy             string            `json:"down_policy"`
	EnableTokenPersistence bool              `json:"enable_token_persistence"`
	Tokens                 map[string]string `json:"tokens"`
}

// consulService is a service Consul registers from its own config, so that
// it is back after every restart of Consul, a fresh one included.
type consulService struct {
	ID      string            `json:"id"`
	Name    string            `json:"name"`
	Address string            `json:"address"`
	Port    int               `json:"port"`
	Tags    []string          `json:"tags"`
	Meta    map[string]string `json:"meta"`
	Checks  []consulCheck     `json:"checks"`
	// Token registers the service: a service from the config file is
	// synced with its own token, not the agent's.
	Token string `json:"token,omitempty"`
}

type consulCheck struct {
	ID            string `json:"id"`
	Name          string `json:"name"`
	HTTP          string `json:"http"`
	TLSSkipVerify bool   `json:"tls_skip_verify,omitempty"`
	Interval      string `json:"interval"`
	Timeout       string `json:"timeout"`
}

// agentService is the node's agent as a Consul service: its metrics port,
// and a check on /livez. Not /healthz, which asks the Consul servers: when
// they are slow, every member's check would go critical at once and back,
// each change a write through the Raft leader that is already slow, a
// hundred at a time. Every 30 s: the check only tells Prometheus's service
// discovery which agents to scrape (a dead machine's Consul is failed by
// gossip in seconds anyway), and at rest it was one of the few things that
// woke every machine's Consul and agent.
//
// A client's token may register more services of the name on its own node,
// with any address and meta: Prometheus's shipped config therefore takes
// only the one of ID kvschema.ServiceName whose meta machine_id is its
// node's name, labels it by the node and scrapes the node's address at
// Port; Address and the meta serve readers that look at a node they trust
// (the CLI finds the leader's agent on the leader's node).
func agentService(c nodeconfig.Config) consulService {
	return consulService{
		// Prometheus scrapes the port over TLS, with a metrics token.
		ID: kvschema.ServiceName, Name: kvschema.ServiceName, Address: c.BindAddr, Port: c.HTTPSPort,
		Tags: []string{c.MachineType},
		Meta: map[string]string{"machine_id": c.MachineID, "machine_type": c.MachineType, "cluster": c.Cluster, "backend": c.Backend,
			// Where the agent is asked to act (plan, join), and, on a
			// loopback address (the local backend's), its plain port.
			"https_port": strconv.Itoa(c.HTTPSPort), "http_port": strconv.Itoa(c.HTTPPort)},
		Token: c.ACLToken,
		Checks: []consulCheck{{
			ID: kvschema.ServiceName + "-livez", Name: "raptiformica agent /livez",
			HTTP: livezURL(c), TLSSkipVerify: c.TLS != nil, Interval: "30s", Timeout: "2s",
		}},
	}
}

// livezURL is where Consul checks the agent: its TLS port on the node's
// address, which is this machine's own (on a host that runs several
// machines of the local backend, the loopback port may be another's); no
// secret goes there and the answer is only ok or not, so the certificate
// is not checked. Without TLS, the plain port on loopback.
func livezURL(c nodeconfig.Config) string {
	if c.TLS == nil {
		return fmt.Sprintf("http://%s/livez", net.JoinHostPort(consulclient.LocalHost(c), strconv.Itoa(c.HTTPPort)))
	}
	return fmt.Sprintf("https://%s/livez", net.JoinHostPort(c.BindAddr, strconv.Itoa(c.HTTPSPort)))
}

// consulConfigFor builds the Consul configuration of a node. peers are the
// addresses of other known members, joined to the configured retry_join, so
// that a restarted node finds the cluster again from its mirror.
func consulConfigFor(c nodeconfig.Config, peers []string) consulConfig {
	join := map[string]bool{}
	for _, a := range append(append([]string(nil), c.RetryJoin...), peers...) {
		if a != "" && a != c.BindAddr {
			join[a] = true
		}
	}
	joins := make([]string, 0, len(join))
	for a := range join {
		joins = append(joins, a)
	}
	sort.Strings(joins)
	cc := consulConfig{
		NodeName:      c.MachineID,
		Datacenter:    "dc1",
		DataDir:       filepath.Join(c.DataDir, "consul"),
		BindAddr:      c.BindAddr,
		AdvertiseAddr: c.BindAddr,
		ClientAddr:    strings.Join(listenHosts(c), " "),
		// Plain HTTP only where nobody but the machine's own users
		// reach it; other machines use HTTPS.
		Addresses:     map[string]string{"http": consulclient.LocalHost(c), "https": strings.Join(listenHosts(c), " ")},
		Server:        c.ConsulServer,
		Bootstrap:     c.Bootstrap && c.ConsulServer,
		RetryJoin:     joins,
		RetryInterval: "2s",
		Encrypt:       c.Encrypt,
		// Only what the cluster uses is opened: no DNS, no gRPC, no WAN.
		Ports: map[string]int{"http": c.ConsulHTTPPort, "https": c.ConsulHTTPSPort, "dns": -1, "grpc": -1, "grpc_tls": -1, "serf_wan": -1},
		NodeMeta: map[string]string{
			"raptiformica_machine_type": c.MachineType,
			"raptiformica_cluster":      c.Cluster,
			"raptiformica_backend":      c.Backend,
			nodeconfig.MetaHTTPSPort:    strconv.Itoa(c.ConsulHTTPSPort),
		},
		DisableUpdateCheck: true,
		LogLevel:           "WARN",
		// Our agent decides when to leave (a graceful stop leaves; a
		// crash does not), not Consul's signal handling.
		LeaveOnTerminate: false,
		Services:         []consulService{agentService(c)},
	}
	if c.ACLToken != "" && !insecureBench {
		cc.ACL = &consulACL{Enabled: true, DefaultPolicy: "deny", DownPolicy: "extend-cache", EnableTokenPersistence: true,
			Tokens: map[string]string{"agent": c.ACLToken}}
		if c.ConsulServer {
			// Used once, by the first leader of a Raft history: the seed,
			// or a survivor's fresh Consul after a recovery.
			cc.ACL.Tokens["initial_management"] = c.ACLToken
		}
	}
	if c.TLS != nil && !insecureBench {
		ca, cert, key := tlsFiles(c)
		cc.TLS = &consulTLS{
			Defaults:    consulTLSDefaults{CAFile: ca, CertFile: cert, KeyFile: key, VerifyIncoming: true, VerifyOutgoing: true, MinVersion: "TLSv1_2"},
			InternalRPC: map[string]bool{"verify_server_hostname": true},
			HTTPS:       map[string]bool{"verify_incoming": false},
		}
	} else {
		delete(cc.Ports, "https")
		delete(cc.Addresses, "https")
	}
	if insecureBench {
		cc.Addresses["http"] = cc.ClientAddr
	}
	if sock := consulclient.Socket(c); sock != "" {
		// The agent sends its token (a server's: the cluster's) to its
		// Consul on every call. A loopback port is anyone's to take on
		// the machine while Consul restarts; a socket in the root-only
		// data folder is not.
		cc.Addresses["http"] += " unix://" + sock
		cc.UnixSockets = map[string]string{"mode": "600"}
	}
	if c.ConsulServer {
		// Dead servers are taken out of Raft by the control loop when it
		// reaps them (the backend's word, or the grace period), not by
		// autopilot, which takes out any server gossip has failed at its
		// next pass (10 s), one cut off for seconds included (see
		// ownServerRemoval). The description fixes it for a new Raft
		// history; the leader fixes it for an older one.
		cc.Autopilot = map[string]any{"cleanup_dead_servers": false, "server_stabilization_time": "2s", "last_contact_threshold": "1s"}
		// A 500 ms leader lease moves leadership in a second when a
		// server dies, and makes the leader step down whenever it is
		// starved of CPU for half a second. On a few machines that pays;
		// on a hundred sharing their cores, one death's work starved the
		// leader, every election added more, and the cluster lost its
		// leader for minutes. Large clusters keep Consul's own timings.
		if !c.DefaultGossip {
			cc.Performance = map[string]any{"raft_multiplier": 1}
		}
	}
	if c.FastGossip && !c.DefaultGossip {
		// Loopback and LAN links: detect a dead member in seconds.
		cc.GossipLAN = map[string]any{"probe_interval": "500ms", "probe_timeout": "250ms", "suspicion_mult": 3, "gossip_interval": "100ms"}
	}
	return cc
}

// seedNodeID gives a machine's first Consul the node ID derived from its
// name (consulclient.NodeID), in the node-id file Consul reads when it
// starts: the reaper finds a derived ID in the Raft configuration without
// asking the catalog. Only the first: a Consul that has a file of its own
// keeps it (made before IDs were derived), and one whose data was wiped
// since (a recovery on a fresh Consul, an operator's hand) makes a new
// random one, as it always did: a server back under its old ID with an
// empty log would be a voter at once, with no memory of its votes. The
// marker beside Consul's data says the first start happened. The file, not
// the configuration's node_id, so that an older agent finds the same ID.
func seedNodeID(dataDir, consulDir, machineID string) error {
	idFile := filepath.Join(consulDir, "node-id")
	if _, err := os.Stat(idFile); !errors.Is(err, os.ErrNotExist) {
		return err // Consul's own (nil), or one it cannot read either
	}
	marker := filepath.Join(dataDir, "consul-node-id-seeded")
	if _, err := os.Stat(marker); !errors.Is(err, os.ErrNotExist) {
		return err // seeded once already (nil): the data was wiped since
	}
	if err := fsutil.WriteFileAtomic(idFile, []byte(consulclient.NodeID(machineID)), 0o600); err != nil {
		return err
	}
	return fsutil.WriteFileAtomic(marker, nil, 0o600)
}

// consulNodeID is the node ID of the Consul whose data is in dataDir, as
// Consul reads it.
func consulNodeID(dataDir string) (string, error) {
	b, err := os.ReadFile(filepath.Join(dataDir, "node-id"))
	if err != nil {
		return "", err
	}
	return strings.ToLower(strings.TrimSpace(string(b))), nil
}

// ConsulProcess supervises the node's Consul agent as a child process.
type ConsulProcess struct {
	Config  nodeconfig.Config
	Log     hclog.Logger
	Metrics *telemetry.Metrics
	// Peers returns addresses of known members to join, read at each start.
	Peers func() []string
	// Clock times the restarts; nil is the wall clock.
	Clock clock.Clock
	// LogMaxBytes is the size at which consul.log is rotated; 0 means
	// logfile.DefaultMaxBytes.
	LogMaxBytes int64

	restart chan struct{}
	once    sync.Once
	fresh   atomic.Bool // the next start wipes the data folder and bootstraps
}

// errRestart ends a run of Consul that was asked to restart.
var errRestart = errors.New("restart requested")

// Restart stops Consul and starts it again at once, so that it reads what
// was changed in its data folder (raft/peers.json).
func (p *ConsulProcess) Restart() {
	p.init()
	select {
	case p.restart <- struct{}{}:
	default:
	}
}

// RestartFresh restarts Consul on an empty data folder as the first server
// of a new cluster: the way back when its data is unusable. The agent then
// re-seeds the KV from its mirror.
func (p *ConsulProcess) RestartFresh() {
	p.fresh.Store(true)
	p.Restart()
}

func (p *ConsulProcess) init() { p.once.Do(func() { p.restart = make(chan struct{}, 1) }) }

// Run writes Consul's config, starts it, and restarts it with backoff when it
// exits. It blocks until ctx ends, then stops Consul (SIGTERM, SIGKILL after
// 10 s) and returns nil.
func (p *ConsulProcess) Run(ctx context.Context) error {
	p.init()
	failures := 0
	for {
		clk := clock.Or(p.Clock)
		started := clk.Now()
		err := p.runOnce(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if err == errRestart {
			p.Log.Info("consul restarted on request")
			continue
		}
		if clk.Now().Sub(started) > time.Minute {
			failures = 0
		}
		failures++
		wait := clock.Backoff{Initial: 500 * time.Millisecond, Max: 30 * time.Second}.Delay(failures)
		p.Log.Error("consul exited; restarting", telemetry.KeyError, err, telemetry.KeyAttempt, failures, telemetry.KeyWait, wait)
		if p.Metrics != nil {
			p.Metrics.ConsulRestarts.Inc()
		}
		if clock.Sleep(ctx, clk, wait) != nil {
			return nil
		}
	}
}

func (p *ConsulProcess) runOnce(ctx context.Context) error {
	var peers []string
	if p.Peers != nil {
		peers = p.Peers()
	}
	cc := consulConfigFor(p.Config, peers)
	if p.fresh.Swap(false) {
		if err := wipeConsulData(cc.DataDir); err != nil {
			return err
		}
		cc.Bootstrap, cc.RetryJoin = true, nil
	}
	if err := writeTLSFiles(p.Config); err != nil {
		return fmt.Errorf("write certificate files: %w", err)
	}
	b, _ := json.MarshalIndent(cc, "", "  ")
	cfgPath := filepath.Join(p.Config.DataDir, "consul.json")
	if err := fsutil.WriteFileAtomic(cfgPath, b, 0o600); err != nil {
		return err
	}
	if err := os.MkdirAll(cc.DataDir, 0o700); err != nil {
		return err
	}
	if err := seedNodeID(p.Config.DataDir, cc.DataDir, p.Config.MachineID); err != nil {
		// Consul makes a random one: only the reaper's way to it is longer.
		p.Log.Warn("give consul the node ID derived from the machine's name", telemetry.KeyError, err)
	}
	// Consul's output goes through the agent, into a file with a size cap,
	// rather than to a descriptor of that file that Consul would fill
	// without end. The pipe dies with the agent, as Consul does.
	logw, err := logfile.Open(filepath.Join(p.Config.DataDir, "consul.log"), logfile.Options{MaxBytes: p.LogMaxBytes})
	if err != nil {
		return err
	}
	defer func() {
		if err := logw.Err(); err != nil {
			p.Log.Warn("consul log", telemetry.KeyError, err)
		}
		logw.Close()
	}()
	cmd := exec.Command(p.Config.ConsulBinary, "agent", "-config-file", cfgPath)
	cmd.Stdout, cmd.Stderr = logw, logw
	cmd.Env = procenv.Child()
	// Consul gone, its output is all read soon after; nothing it started
	// may hold the pipe and the restart.
	cmd.WaitDelay = 5 * time.Second
	// If the agent dies, its Consul goes with it: a node is one unit.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start consul: %w", err)
	}
	p.Log.Info("consul started", telemetry.KeyPID, cmd.Process.Pid, telemetry.KeyServer, cc.Server, telemetry.KeyBootstrap, cc.Bootstrap, telemetry.KeyRetryJoin, cc.RetryJoin)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err == nil {
			err = errors.New("consul exited with status 0")
		}
		return err
	case <-p.restart:
		stopProcess(cmd, done, clock.Or(p.Clock))
		return errRestart
	case <-ctx.Done():
		stopProcess(cmd, done, clock.Or(p.Clock))
		return ctx.Err()
	}
}

// stopProcess stops Consul: SIGTERM, then SIGKILL after 10 s.
func stopProcess(cmd *exec.Cmd, done <-chan error, clk clock.Clock) {
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
	case <-clk.After(10 * time.Second):
		_ = cmd.Process.Kill()
		<-done
	}
}
