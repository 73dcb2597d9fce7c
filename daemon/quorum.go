package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"

	"github.com/raptiformica/raptiformica/backends"
	"github.com/raptiformica/raptiformica/daemon/agentapi"
	"github.com/raptiformica/raptiformica/internal/clock"
	"github.com/raptiformica/raptiformica/internal/consulclient"
	"github.com/raptiformica/raptiformica/internal/fsutil"
	"github.com/raptiformica/raptiformica/internal/nodeconfig"
	"github.com/raptiformica/raptiformica/internal/recoverfile"
	"github.com/raptiformica/raptiformica/internal/state"
	"github.com/raptiformica/raptiformica/internal/telemetry"
	"github.com/raptiformica/raptiformica/reconcile"
)

// quorumWatch looks at this node's Consul every second for a leader. The
// look is the local agent's status endpoint, which answers without quorum,
// so it keeps working exactly when everything else stops. While there is no
// leader it says what this node knows (Status); once quorum is lost it
// decides, by decideRecovery, whether this node recovers the cluster, and
// does it.
//
// Quorum is lost after quorum_lost_after without a leader, or 2 s without
// one once a majority of the servers have failed or are gone by their
// backends' word (decideRecovery).
//
//	leader ─no leader─▶ leaderless ─quorum_lost_after─▶ lost ─chosen, or `recover`─▶ recovering
//	  ▲                     │                            │                               │
//	  └─────────────────────┴────────── leader again ────┴── leader, lost servers given up┘
type quorumWatch struct {
	cfg       nodeconfig.Config
	consul    *api.Client
	inventory *reconcile.Inventory
	proc      *ConsulProcess // restarted to recover
	mirror    *mirror
	seed      *kvSeed
	backends  func() map[string]backends.Backend
	// poke wakes the control loop once lost servers are given up.
	poke func()
	// askPeer asks another agent what it knows of the lost quorum.
	askPeer func(ctx context.Context, addr string) (*agentapi.QuorumStatus, error)
	clock   clock.Clock
	log     hclog.Logger
	metrics *telemetry.Metrics

	mu     sync.RWMutex           // guards status
	status *agentapi.QuorumStatus // set while Consul has no leader

	// lastRaftIndex is the last Raft index read from Consul; only Run's
	// goroutine uses it.
	lastRaftIndex uint64
}

// The quorum watch's cadence. A server looks every second: it may have to
// recover the cluster, and quorum_lost_after counts from its looks. A
// client only reports what it sees (it never recovers), and its look is an
// RPC to a server: at a thousand clients, once a second each is a thousand
// requests a second on the servers for no decision, during an outage
// exactly when the survivors recover. It looks once a minute while Consul
// has a leader, and every 10 s from the first look that finds none until
// one is back: what it reports of an outage starts up to a minute late and
// ends up to 10 s late. At rest the look every 10 s it used to make was
// half of a client agent's CPU.
const (
	serverQuorumLook           = time.Second
	clientQuorumLook           = time.Minute
	clientQuorumLookLeaderless = 10 * time.Second
)

// Run looks for a leader every second (a client: every minute while there
// is one, every 10 s while there is none) until ctx ends, then returns nil. Failures (Consul unreachable,
// a recovery step) are logged and retried at the next look.
func (q *quorumWatch) Run(ctx context.Context) error {
	since := q.clock.Now()
	wasLost, recovering := false, false
	var last recoveryDecision
	// Until the first look, as though there were a leader: a client that
	// starts looks a minute later, a server a second later.
	hadLeader := true
	for clock.Sleep(ctx, q.clock, q.lookEvery(hadLeader)) == nil {
		lctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		leader, err := consulclient.Leader(lctx, q.consul)
		cancel()
		now := q.clock.Now()
		if err == nil && leader != "" {
			if recovering {
				recovering = q.dropLostServers(ctx) != nil
			}
			if wasLost {
				q.log.Info("consul has a leader again: quorum restored", telemetry.KeyLeaderlessFor, now.Sub(since).Round(time.Second))
			}
			since, wasLost, last = now, false, recoveryDecision{}
			if recoverfile.Drop(q.cfg.DataDir) {
				q.log.Warn("recovery request dropped: the cluster has a leader again")
			}
			q.setStatus(nil)
			q.metrics.ConsulLeaderless.Set(0)
			q.metrics.QuorumLost.Set(0)
			hadLeader = true
			continue
		}
		if hadLeader && !q.cfg.ConsulServer {
			// The leader went at some time in the last minute: counted
			// from now, so that a client never says quorum is lost
			// (quorum_lost_after) before the servers do.
			since = now
		}
		hadLeader = false
		q.metrics.ConsulLeaderless.Set(now.Sub(since).Seconds())
		f := recoveryFacts{
			Self: q.cfg.MachineID, ConsulServer: q.cfg.ConsulServer, Now: now, LeaderlessSince: since,
			Recovering: recovering, Last: last, Servers: q.serversSeen(), RaftLastIndex: q.raftLastIndex(),
		}
		if p := q.mirror.Platform(); p != nil {
			f.Policy = &p.Policy
		}
		d := q.decide(ctx, f)
		last = d
		qs := &agentapi.QuorumStatus{LeaderlessSince: since, Lost: d.Lost, Servers: f.Servers, RaftLastIndex: f.RaftLastIndex, Recovery: d.Reason}
		if d.Recover {
			q.log.Warn("recovering on backend evidence", telemetry.KeyReason, d.Reason)
			if err := q.requestRecovery(); err != nil {
				q.log.Error("request recovery", telemetry.KeyError, err)
			}
		}
		// Say so before the restart, so that no other survivor reads this
		// node's Raft index while its Consul is down and decides otherwise.
		qs.Recovering = recovering || q.recoverRequested()
		q.setStatus(qs)
		if qs.Lost && !wasLost {
			var failed, alive []string
			for _, s := range qs.Servers {
				if s.Status == state.MemberAlive {
					alive = append(alive, s.Name)
				} else {
					failed = append(failed, s.Name+" ("+string(s.Status)+")")
				}
			}
			q.log.Error("quorum lost: consul has had no leader", telemetry.KeyLeaderlessFor, now.Sub(since).Round(time.Second),
				telemetry.KeyServersAlive, alive, telemetry.KeyServersNotAlive, failed, telemetry.KeyError, err)
			q.metrics.QuorumLost.Set(1)
		}
		wasLost = qs.Lost
		if wasLost && q.recoverRequested() {
			if err := q.recoverAlone(); err != nil {
				recoverfile.Drop(q.cfg.DataDir)
				q.log.Error("recovery failed; its request is dropped (ask again)", telemetry.KeyError, err)
			} else {
				recovering = true
			}
		}
	}
	return nil
}

// lookEvery is the time to the next look, after one that found a leader
// or not.
func (q *quorumWatch) lookEvery(hadLeader bool) time.Duration {
	switch {
	case q.cfg.ConsulServer:
		return serverQuorumLook
	case hadLeader:
		return clientQuorumLook
	default:
		return clientQuorumLookLeaderless
	}
}

// Status is what this node knows while its Consul has no leader, nil while
// it has one.
func (q *quorumWatch) Status() *agentapi.QuorumStatus {
	q.mu.RLock()
	defer q.mu.RUnlock()
	return q.status
}

func (q *quorumWatch) setStatus(s *agentapi.QuorumStatus) {
	q.mu.Lock()
	q.status = s
	q.mu.Unlock()
}

// decide takes the recovery decision of one look, asking the backends and
// the other survivors for the evidence it needs as it needs it.
func (q *quorumWatch) decide(ctx context.Context, f recoveryFacts) recoveryDecision {
	f.Backends, f.Survivors = map[string]backendEvidence{}, map[string]survivorEvidence{}
	for {
		d := decideRecovery(f)
		switch {
		case d.AskRecords:
			if f.Records = q.mirror.records(); f.Records == nil {
				f.Records = map[string]reconcile.Record{}
			}
		case d.AskBackend != "":
			f.Backends[d.AskBackend] = q.askBackend(ctx, d.AskBackend)
		case d.AskSurvivor != "":
			var ev survivorEvidence
			ev.Quorum, ev.Err = q.askPeer(ctx, addressOf(f.Servers, d.AskSurvivor))
			f.Survivors[d.AskSurvivor] = ev
		default:
			return d
		}
	}
}

// askBackend asks a backend of the current description which machines it
// runs.
func (q *quorumWatch) askBackend(ctx context.Context, name string) backendEvidence {
	be := q.backends()[name]
	if be == nil {
		return backendEvidence{Unknown: true}
	}
	if lv, ok := be.(backends.LocalView); ok && lv.ListsOnlyLocal() {
		return backendEvidence{LocalOnly: true}
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	insts, err := be.List(ctx)
	if err != nil {
		return backendEvidence{Err: err}
	}
	running := map[string]bool{}
	for _, in := range insts {
		running[in.MachineID] = in.Running
	}
	return backendEvidence{Running: running}
}

// askPeerQuorum asks another agent, at c's ports (every agent's are the
// same), what it knows of the lost quorum: over TLS with this machine's
// certificate, which the peer checks against the CA itself, since no
// Consul can vouch for a token while quorum is lost.
func askPeerQuorum(c nodeconfig.Config) func(ctx context.Context, addr string) (*agentapi.QuorumStatus, error) {
	var r agentapi.Reader
	if c.TLS != nil {
		// Only a server's answer may weigh in on a recovery.
		r = agentapi.Reader{CACert: c.TLS.CACert, Cert: c.TLS.Cert, Key: c.TLS.Key, Server: true}
	}
	return func(ctx context.Context, addr string) (*agentapi.QuorumStatus, error) {
		ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		st, err := agentapi.FetchStatus(ctx, addr, c.HTTPPort, c.HTTPSPort, r)
		return st.Quorum, err
	}
}

func addressOf(ss []agentapi.ServerSeen, name string) string {
	for _, s := range ss {
		if s.Name == name {
			return s.Address
		}
	}
	return ""
}

// requestRecovery asks this node to recover, as `raptiformica recover` does.
func (q *quorumWatch) requestRecovery() error {
	return recoverfile.Write(q.cfg.DataDir, q.clock.Now(), "on backend evidence")
}

func (q *quorumWatch) recoverRequested() bool {
	req, ok, dropped := recoverfile.Pending(q.cfg.DataDir, q.clock.Now())
	if dropped != "" {
		q.log.Warn("recovery request dropped", telemetry.KeyReason, dropped)
	}
	if ok {
		q.log.Debug("recovery requested", telemetry.KeyNonce, req.Nonce, telemetry.KeyReason, req.Why)
	}
	return ok
}

// raftPeer is an entry of Consul's raft/peers.json (Raft protocol 3).
type raftPeer struct {
	ID       string `json:"id"`
	Address  string `json:"address"`
	NonVoter bool   `json:"non_voter"`
}

// recoverAlone follows Consul's outage recovery: a raft/peers.json naming
// only this server, read when Consul starts, so that it becomes a Raft
// cluster of one that keeps its data (the description, the inventory, the
// intents). The control loop then replaces the rest.
func (q *quorumWatch) recoverAlone() error {
	if !q.cfg.ConsulServer {
		return errors.New("this node is not a Consul server: recover on a server")
	}
	dataDir := filepath.Join(q.cfg.DataDir, "consul")
	id, err := consulNodeID(dataDir)
	// Raft's log is raft/wal (Consul's default log store) or raft/raft.db.
	_, rerr := os.Stat(filepath.Join(dataDir, "raft", "wal"))
	if rerr != nil {
		_, rerr = os.Stat(filepath.Join(dataDir, "raft", "raft.db"))
	}
	if err != nil || rerr != nil {
		// Nothing to keep: start a cluster of one afresh and re-seed it
		// from the mirror of the description and the inventory.
		why := errors.Join(err, rerr)
		recoverfile.Drop(q.cfg.DataDir)
		q.log.Warn("consul data unusable: recovering on a fresh consul, re-seeded from the mirror", telemetry.KeyError, why)
		q.proc.RestartFresh()
		return nil
	}
	peers, _ := json.Marshal([]raftPeer{{ID: id, Address: net.JoinHostPort(q.cfg.BindAddr, "8300")}})
	if err := fsutil.WriteFileAtomic(filepath.Join(dataDir, "raft", "peers.json"), peers, 0o600); err != nil {
		return err
	}
	recoverfile.Drop(q.cfg.DataDir)
	q.log.Warn("recovering the cluster alone: restarting consul with only this server in raft/peers.json")
	q.proc.Restart()
	return nil
}

// dropLostServers marks the records of the servers that are not alive for
// removal, once the recovered Consul has a leader: they were given up by
// the recovery, so they are replaced, not waited for (and they do not count
// toward max_unhealthy, which would halt the very replacement needed).
func (q *quorumWatch) dropLostServers(ctx context.Context) error {
	// A fresh Consul has an empty KV until the mirror re-seeds it; the
	// gossip key replacements need is the one this node runs with.
	q.mirror.reseed(ctx)
	if err := q.seed.gossipKey(ctx); err != nil {
		return err
	}
	if err := q.seed.record(ctx); err != nil {
		return err
	}
	recs, _, err := q.inventory.List(ctx, nil)
	if err != nil {
		return err
	}
	if len(recs) == 0 {
		return errors.New("inventory empty: waiting for the mirror to re-seed it")
	}
	members, err := consulclient.Members(ctx, q.consul)
	if err != nil {
		return err
	}
	alive := map[string]bool{}
	for _, m := range members {
		alive[m.Name] = reconcile.SerfStatus(m.Status) == state.MemberAlive
	}
	p := q.mirror.Platform()
	if p == nil {
		return errors.New("no platform description loaded")
	}
	for id, r := range recs {
		mt, known := p.Machines[r.Type]
		if id == q.cfg.MachineID || alive[id] || !known || !mt.ConsulServer || r.State == reconcile.StateDestroying {
			continue
		}
		r.State, r.Updated, r.Reason = reconcile.StateDestroying, q.clock.Now(), "lost with quorum; the cluster was recovered on "+q.cfg.MachineID
		if _, err := q.inventory.Put(ctx, r); err != nil {
			return err
		}
		q.log.Info("lost server given up", telemetry.KeyMachineID, id)
	}
	q.poke()
	return nil
}

// raftLastIndex reads the last Raft log index from this node's Consul,
// which answers without a leader.
// When Consul cannot be asked, it is the last index read: the log does not
// shrink while Consul is down.
func (q *quorumWatch) raftLastIndex() uint64 {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	self, err := consulclient.Self(ctx, q.consul)
	if err == nil {
		raft, _ := self["Stats"]["raft"].(map[string]any)
		s, _ := raft["last_log_index"].(string)
		if n, err := strconv.ParseUint(s, 10, 64); err == nil && n > 0 {
			q.lastRaftIndex = n
		}
	}
	return q.lastRaftIndex
}

// serversSeen are the servers this node's Consul lists. Gossip says who
// is a server, and a client that holds the gossip key may say so of
// itself: on a server, whose mirror holds the inventory, a member counts
// only if it is recorded as a server (or the seed), so that no client
// takes part in the survivors' decision to recover, or holds it up.
func (q *quorumWatch) serversSeen() []agentapi.ServerSeen {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	members, err := consulclient.Members(ctx, q.consul)
	if err != nil {
		return nil
	}
	recorded := func(string) bool { return true }
	if p, recs := q.mirror.Platform(), q.mirror.records(); q.cfg.ConsulServer && p != nil && len(recs) > 0 {
		recorded = func(name string) bool {
			r, ok := recs[name]
			return ok && (r.Seed || p.Machines[r.Type].ConsulServer)
		}
	}
	var out []agentapi.ServerSeen
	for _, m := range members {
		if m.Tags[api.MemberTagKeyRole] == api.MemberTagValueRoleServer && recorded(m.Name) {
			out = append(out, agentapi.ServerSeen{Name: m.Name, Address: m.Addr, Status: reconcile.SerfStatus(m.Status)})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}
