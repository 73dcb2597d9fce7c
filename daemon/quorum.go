package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/raptiformica/raptiformica/backends"
	"github.com/raptiformica/raptiformica/daemon/agentapi"
	"github.com/raptiformica/raptiformica/internal/clock"
	"github.com/raptiformica/raptiformica/internal/fsutil"
	"github.com/raptiformica/raptiformica/internal/telemetry"
	"github.com/raptiformica/raptiformica/reconcile"
)

// watchQuorum polls this node's Consul for a leader. The poll is the local
// agent's status endpoint, which answers without quorum, so it keeps
// working exactly when everything else stops.
func (a *Agent) watchQuorum(ctx context.Context) {
	since := a.Clock.Now()
	lost, recovering := false, false
	// The last decision on recovering, reused for evidenceEvery while the
	// servers seen stay the same: asking every backend each second is
	// cheap for containers, not for a cloud CLI.
	var decision string
	var decidedHere bool
	var decidedAt time.Time
	var decidedOn string
	for clock.Sleep(ctx, a.Clock, time.Second) == nil {
		leader, err := a.consul.Status().Leader()
		now := a.Clock.Now()
		if err == nil && leader != "" {
			if recovering {
				recovering = a.dropLostServers(ctx) != nil
			}
			if lost {
				a.Log.Info("consul has a leader again: quorum restored", "leaderless_for", now.Sub(since).Round(time.Second))
			}
			since, lost = now, false
			a.setQuorum(nil)
			a.metrics.ConsulLeaderless.Set(0)
			a.metrics.QuorumLost.Set(0)
			continue
		}
		missing := now.Sub(since)
		a.metrics.ConsulLeaderless.Set(missing.Seconds())
		after := 30 * time.Second
		if p := a.Platform(); p != nil {
			after = p.Policy.QuorumLostAfter
		}
		qs := &agentapi.QuorumStatus{LeaderlessSince: since, Lost: missing >= after, Servers: a.serversSeen(), RaftLastIndex: a.raftLastIndex()}
		if qs.Lost && !recovering {
			if seen := serversKey(qs.Servers); seen != decidedOn || now.Sub(decidedAt) >= evidenceEvery {
				decision, decidedHere = a.decideRecovery(ctx, qs)
				decidedAt, decidedOn = now, seen
			}
			qs.Recovery = decision
			if decidedHere {
				a.Log.Warn("recovering on backend evidence", telemetry.KeyReason, qs.Recovery)
				if err := a.requestRecovery(); err != nil {
					a.Log.Error("request recovery", telemetry.KeyError, err)
				}
			}
		}
		// Say so before the restart, so that no other survivor reads this
		// node's Raft index while its Consul is down and decides otherwise.
		qs.Recovering = recovering || a.recoverRequested()
		a.setQuorum(qs)
		if qs.Lost && !lost {
			var failed, alive []string
			for _, s := range qs.Servers {
				if s.Status == reconcile.MemberAlive {
					alive = append(alive, s.Name)
				} else {
					failed = append(failed, s.Name+" ("+string(s.Status)+")")
				}
			}
			a.Log.Error("quorum lost: consul has had no leader", "for", missing.Round(time.Second),
				"servers_alive", alive, "servers_not_alive", failed, telemetry.KeyError, err)
			a.metrics.QuorumLost.Set(1)
		}
		lost = qs.Lost
		if lost && a.recoverRequested() {
			if err := a.recoverAlone(); err != nil {
				a.Log.Error("recovery failed", telemetry.KeyError, err)
			} else {
				recovering = true
			}
		}
	}
}

// evidenceEvery is how often a survivor asks the backends again whether the
// lost servers are gone, while what it sees of them does not change.
const evidenceEvery = 5 * time.Second

// serversKey is what a survivor sees of the servers, to notice a change.
func serversKey(ss []agentapi.ServerSeen) string {
	var b strings.Builder
	for _, s := range ss {
		b.WriteString(s.Name + "=" + string(s.Status) + ";")
	}
	return b.String()
}

// RecoverFile, in a node's data folder while its Consul has lost quorum,
// asks the node to recover the cluster alone; `raptiformica recover` writes
// it. A file rather than an HTTP call, so that only who may write the
// node's folder may do it.
const RecoverFile = "recover"

// requestRecovery asks this node to recover, as `raptiformica recover` does.
func (a *Agent) requestRecovery() error {
	return os.WriteFile(filepath.Join(a.Config.DataDir, RecoverFile), []byte(time.Now().UTC().Format(time.RFC3339)+" on backend evidence\n"), 0o600)
}

func (a *Agent) recoverRequested() bool {
	_, err := os.Stat(filepath.Join(a.Config.DataDir, RecoverFile))
	return err == nil
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
func (a *Agent) recoverAlone() error {
	if !a.Config.ConsulServer {
		return errors.New("this node is not a Consul server: recover on a server")
	}
	dataDir := filepath.Join(a.Config.DataDir, "consul")
	id, err := os.ReadFile(filepath.Join(dataDir, "node-id"))
	// Raft's log is raft/wal (Consul's default log store) or raft/raft.db.
	_, rerr := os.Stat(filepath.Join(dataDir, "raft", "wal"))
	if rerr != nil {
		_, rerr = os.Stat(filepath.Join(dataDir, "raft", "raft.db"))
	}
	if err != nil || rerr != nil {
		// Nothing to keep: start a cluster of one afresh and re-seed it
		// from the mirror of the description and the inventory.
		why := errors.Join(err, rerr)
		if err := os.Remove(filepath.Join(a.Config.DataDir, RecoverFile)); err != nil {
			return err
		}
		a.Log.Warn("consul data unusable: recovering on a fresh consul, re-seeded from the mirror", telemetry.KeyError, why)
		a.consulProc.RestartFresh()
		return nil
	}
	peers, _ := json.Marshal([]raftPeer{{ID: strings.TrimSpace(string(id)), Address: net.JoinHostPort(a.Config.BindAddr, "8300")}})
	if err := fsutil.WriteFileAtomic(filepath.Join(dataDir, "raft", "peers.json"), peers, 0o600); err != nil {
		return err
	}
	if err := os.Remove(filepath.Join(a.Config.DataDir, RecoverFile)); err != nil {
		return err
	}
	a.Log.Warn("recovering the cluster alone: restarting consul with only this server in raft/peers.json")
	a.consulProc.Restart()
	return nil
}

// dropLostServers marks the records of the servers that are not alive for
// removal, once the recovered Consul has a leader: they were given up by
// the recovery, so they are replaced, not waited for (and they do not count
// toward max_unhealthy, which would halt the very replacement needed).
func (a *Agent) dropLostServers(ctx context.Context) error {
	// A fresh Consul has an empty KV until the mirror re-seeds it; the
	// gossip key replacements need is the one this node runs with.
	a.reseed(ctx)
	if err := a.ensureGossipKey(ctx); err != nil {
		return err
	}
	if err := a.ensureRecord(ctx); err != nil {
		return err
	}
	recs, _, err := a.inventory.List(ctx, nil)
	if err != nil {
		return err
	}
	if len(recs) == 0 {
		return errors.New("inventory empty: waiting for the mirror to re-seed it")
	}
	members, err := a.consul.Agent().Members(false)
	if err != nil {
		return err
	}
	alive := map[string]bool{}
	for _, m := range members {
		alive[m.Name] = reconcile.SerfStatus(m.Status) == reconcile.MemberAlive
	}
	p := a.Platform()
	if p == nil {
		return errors.New("no platform description loaded")
	}
	for id, r := range recs {
		mt, known := p.Machines[r.Type]
		if id == a.Config.MachineID || alive[id] || !known || !mt.ConsulServer || r.State == reconcile.StateDestroying {
			continue
		}
		r.State, r.Updated, r.Reason = reconcile.StateDestroying, a.Clock.Now(), "lost with quorum; the cluster was recovered on "+a.Config.MachineID
		if _, err := a.inventory.Put(ctx, r); err != nil {
			return err
		}
		a.Log.Info("lost server given up", telemetry.KeyMachineID, id)
	}
	select {
	case a.wake <- struct{}{}:
	default:
	}
	return nil
}

// decideRecovery decides, from evidence, whether this node recovers the
// cluster alone. A partition must never make two platforms, so it recovers
// only when the backend that owns every server the gossip pool no longer
// sees alive confirms that server's machine is gone or stopped, and when it
// is the one survivor every survivor would choose: the most up-to-date Raft
// log, then the lowest machine ID.
func (a *Agent) decideRecovery(ctx context.Context, qs *agentapi.QuorumStatus) (string, bool) {
	p := a.Platform()
	if p == nil || !a.Config.ConsulServer {
		return "not a Consul server: waiting for a server to recover", false
	}
	if !p.Policy.RecoverOnEvidence {
		return "recover_on_evidence is off: waiting for `raptiformica recover`", false
	}
	recs := a.loadMirroredInventory()
	bes := a.backends()
	lists := map[string]map[string]bool{} // backend -> machine ID -> running
	var survivors []agentapi.ServerSeen
	for _, s := range qs.Servers {
		if s.Status == reconcile.MemberAlive {
			survivors = append(survivors, s)
			continue
		}
		r, ok := recs[s.Name]
		if !ok {
			return fmt.Sprintf("no mirrored record of lost server %s: cannot ask its backend; run `raptiformica recover` if it is gone", s.Name), false
		}
		be := bes[r.Backend]
		if be == nil {
			return fmt.Sprintf("lost server %s is on backend %q, unknown here", s.Name, r.Backend), false
		}
		if lv, ok := be.(backends.LocalView); ok && lv.ListsOnlyLocal() {
			return fmt.Sprintf("backend %q cannot confirm that %s is gone (it lists only this node's machines)", r.Backend, s.Name), false
		}
		running, listed := lists[r.Backend]
		if !listed {
			lctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			insts, err := be.List(lctx)
			cancel()
			if err != nil {
				return fmt.Sprintf("backend %q cannot be asked about %s: %v", r.Backend, s.Name, err), false
			}
			running = map[string]bool{}
			for _, in := range insts {
				running[in.MachineID] = in.Running
			}
			lists[r.Backend] = running
		}
		if running[s.Name] {
			return fmt.Sprintf("lost server %s still runs on backend %q: a partition, not a death; waiting", s.Name, r.Backend), false
		}
	}
	if len(survivors) == 0 {
		return "this node does not see itself alive in the gossip pool yet", false
	}
	// Every survivor computes the same choice from the same facts; one that
	// cannot be asked stops the choice, rather than risk two recoveries.
	best, bestIndex := "", uint64(0)
	for _, s := range survivors {
		idx := qs.RaftLastIndex
		if s.Name != a.Config.MachineID {
			st, err := a.peerQuorum(ctx, s.Address)
			if err != nil || st == nil {
				return fmt.Sprintf("survivor %s cannot be asked for its Raft index (%v): waiting", s.Name, err), false
			}
			if st.Recovering {
				return fmt.Sprintf("survivor %s is recovering; this node joins it", s.Name), false
			}
			idx = st.RaftLastIndex
		}
		if best == "" || idx > bestIndex || idx == bestIndex && s.Name < best {
			best, bestIndex = s.Name, idx
		}
	}
	if best != a.Config.MachineID {
		return fmt.Sprintf("every lost server is gone by its backend's word; %s (Raft index %d) recovers, this node joins it", best, bestIndex), false
	}
	return fmt.Sprintf("every lost server is gone by its backend's word; this node has the most up-to-date Raft log (index %d) of %d survivors", bestIndex, len(survivors)), true
}

// peerQuorum asks another agent, at the same HTTP port as this one, what it
// knows of the lost quorum.
func (a *Agent) peerQuorum(ctx context.Context, addr string) (*agentapi.QuorumStatus, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	st, err := agentapi.FetchStatus(ctx, addr, a.Config.HTTPPort)
	return st.Quorum, err
}

// raftLastIndex reads the last Raft log index from this node's Consul,
// which answers without a leader.
// When Consul cannot be asked, it is the last index read: the log does not
// shrink while Consul is down.
func (a *Agent) raftLastIndex() uint64 {
	self, err := a.consul.Agent().Self()
	if err == nil {
		raft, _ := self["Stats"]["raft"].(map[string]any)
		s, _ := raft["last_log_index"].(string)
		if n, err := strconv.ParseUint(s, 10, 64); err == nil && n > 0 {
			a.lastRaftIndex.Store(n)
		}
	}
	return a.lastRaftIndex.Load()
}

func (a *Agent) serversSeen() []agentapi.ServerSeen {
	members, err := a.consul.Agent().Members(false)
	if err != nil {
		return nil
	}
	var out []agentapi.ServerSeen
	for _, m := range members {
		if m.Tags[api.MemberTagKeyRole] == api.MemberTagValueRoleServer {
			out = append(out, agentapi.ServerSeen{Name: m.Name, Address: m.Addr, Status: reconcile.SerfStatus(m.Status)})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

func (a *Agent) setQuorum(q *agentapi.QuorumStatus) {
	a.mu.Lock()
	a.quorum = q
	a.mu.Unlock()
}
