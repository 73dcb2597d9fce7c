package daemon

import (
	"context"
	"sort"
	"time"

	"github.com/hashicorp/consul/api"

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
	lost := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-a.Clock.After(time.Second):
		}
		leader, err := a.consul.Status().Leader()
		now := a.Clock.Now()
		if err == nil && leader != "" {
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
	}
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
