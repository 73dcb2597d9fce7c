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
	"strings"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/raptiformica/raptiformica/internal/fsutil"
	"github.com/raptiformica/raptiformica/internal/telemetry"
	"github.com/raptiformica/raptiformica/reconcile"
)

// QuorumStatus is what a node knows while its Consul has no leader: with
// most servers gone there is no KV, no lock and no control loop, so every
// node says so itself, from its own view of the gossip pool.
type QuorumStatus struct {
	// Lost is set once the leader has been missing for longer than the
	// policy's quorum_lost_after.
	Lost bool `json:"lost"`
	// LeaderlessSince is when this node last saw a leader, or when it
	// started looking.
	LeaderlessSince time.Time `json:"leaderless_since"`
	// Servers are the Consul servers in this node's gossip pool, as it
	// sees them now.
	Servers []ServerSeen `json:"servers"`
}

// ServerSeen is one Consul server as this node's gossip pool sees it.
type ServerSeen struct {
	Name    string                 `json:"name"`
	Address string                 `json:"address"`
	Status  reconcile.MemberStatus `json:"status"`
}

// watchQuorum polls this node's Consul for a leader. The poll is the local
// agent's status endpoint, which answers without quorum, so it keeps
// working exactly when everything else stops.
func (a *Agent) watchQuorum(ctx context.Context) {
	since := a.Clock.Now()
	lost, recovering := false, false
	for {
		select {
		case <-ctx.Done():
			return
		case <-a.Clock.After(time.Second):
		}
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
		qs := &QuorumStatus{LeaderlessSince: since, Lost: missing >= after, Servers: a.serversSeen()}
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

// RecoverFile, in a node's data folder while its Consul has lost quorum,
// asks the node to recover the cluster alone; `raptiformica recover` writes
// it. A file rather than an HTTP call, so that only who may write the
// node's folder may do it.
const RecoverFile = "recover"

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
	if err != nil {
		return fmt.Errorf("read consul node id: %w", err)
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
	recs, _, err := a.inventory.List(ctx, nil)
	if err != nil {
		return err
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

func (a *Agent) serversSeen() []ServerSeen {
	members, err := a.consul.Agent().Members(false)
	if err != nil {
		return nil
	}
	var out []ServerSeen
	for _, m := range members {
		if m.Tags[api.MemberTagKeyRole] == api.MemberTagValueRoleServer {
			out = append(out, ServerSeen{Name: m.Name, Address: m.Addr, Status: reconcile.SerfStatus(m.Status)})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

func (a *Agent) setQuorum(q *QuorumStatus) {
	a.mu.Lock()
	a.quorum = q
	a.mu.Unlock()
}
