// Package cluster is the operator's library: what the CLI does to any
// cluster, over its Consul and its leader's agent, wherever it runs: the
// members and the leader's last pass, the description and its modules,
// join and role tokens, and the actions asked for by hand (spawn,
// destroy), which the leader places and runs. It runs no backend and no
// executor. The local cluster in a folder (`up`, `down`, the survivor of
// a lost quorum) is package localdc, built on this one; the CLI parses,
// calls one of the two and prints.
package cluster

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/raptiformica/raptiformica/backends/local"
	"github.com/raptiformica/raptiformica/daemon/agentapi"
	"github.com/raptiformica/raptiformica/internal/consulclient"
	"github.com/raptiformica/raptiformica/internal/kvschema"
	"github.com/raptiformica/raptiformica/internal/nodeconfig"
	"github.com/raptiformica/raptiformica/internal/state"
	"github.com/raptiformica/raptiformica/reconcile"
	"github.com/raptiformica/raptiformica/rules"
)

// MachineStatus asks a local machine's agent for its status, which it
// answers with or without quorum.
func MachineStatus(ctx context.Context, m local.Machine) (agentapi.AgentStatus, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	var r agentapi.Reader
	if m.Config.TLS != nil {
		r = agentapi.Reader{CACert: m.Config.TLS.CACert, Cert: m.Config.TLS.Cert, Key: m.Config.TLS.Key}
	}
	return agentapi.FetchStatus(ctx, m.Config.BindAddr, m.Config.HTTPPort, m.Config.HTTPSPort, r)
}

// alive reports whether the machine id is an alive member of the cluster c
// talks to (its local agent's view, which needs no quorum).
func alive(ctx context.Context, c *api.Client, id string) (bool, error) {
	members, err := consulclient.Members(ctx, c)
	if err != nil {
		return false, err
	}
	for _, m := range members {
		if m.Name == id && reconcile.SerfStatus(m.Status) == state.MemberAlive {
			return true, nil
		}
	}
	return false, nil
}

// LeaderAgent is the leader's machine ID and the address (host:port) where
// its agent is asked to act, as it registered itself in Consul's catalog:
// its plain port on a loopback address, else its TLS port.
func LeaderAgent(ctx context.Context, c *api.Client) (leader, addr string, err error) {
	leader = kvschema.New(c).Leader(ctx)
	if leader == "" {
		return "", "", errors.New("no machine leads now (the lock is free): try again in a few seconds")
	}
	svcs, _, err := c.Catalog().Service(kvschema.ServiceName, "", (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return leader, "", err
	}
	// The entry the leader's own node registered (only token holders may
	// register), with an address of its own.
	for _, s := range svcs {
		if s.Node == leader && s.ServiceMeta["machine_id"] == leader && s.ServiceAddress != "" && s.ServicePort > 0 {
			if consulclient.IsLoopback(s.ServiceAddress) {
				return leader, net.JoinHostPort(s.ServiceAddress, cmp.Or(s.ServiceMeta["http_port"], strconv.Itoa(nodeconfig.AgentHTTPPort))), nil
			}
			return leader, net.JoinHostPort(s.ServiceAddress, cmp.Or(s.ServiceMeta["https_port"], strconv.Itoa(nodeconfig.AgentHTTPSPort))), nil
		}
	}
	return leader, "", fmt.Errorf("the leader %s has no agent in the catalog", leader)
}

// Machines are the inventory's records, by machine ID.
func Machines(ctx context.Context, c *api.Client) (map[string]state.Record, error) {
	recs, _, _, err := state.Inventory(kvschema.New(c)).List(ctx, nil)
	return recs, err
}

// ApplyPlatform stores p, checked against what the cluster runs
// (CheckApply), as the description's next version, and returns that
// version: the leader acts on it at once.
func ApplyPlatform(ctx context.Context, c *api.Client, p *rules.Platform, opts rules.Options) (uint64, error) {
	if err := checkApply(ctx, c, p, opts); err != nil {
		return 0, err
	}
	version, err := kvschema.New(c).PutPlatform(ctx, p.Source)
	if err != nil {
		return 0, fmt.Errorf("store description: %w", err)
	}
	return version, nil
}

// StoredPlatform is the description's source as the cluster stores it.
func StoredPlatform(ctx context.Context, c *api.Client) ([]byte, error) {
	pair, _, err := kvschema.New(c).Platform(ctx, nil)
	if err != nil {
		return nil, err
	}
	if pair == nil {
		return nil, ErrNoPlatform
	}
	return pair.Value, nil
}

// lastPass is the leader's last published pass, nil before the first or
// when it cannot be read.
func lastPass(ctx context.Context, c *api.Client) *state.Status {
	b, err := kvschema.New(c).Status(ctx)
	if err != nil || b == nil {
		return nil
	}
	var st state.Status
	if json.Unmarshal(b, &st) != nil {
		return nil
	}
	return &st
}

// ErrNoPlatform is Platform's error for a KV that holds no description yet.
var ErrNoPlatform = errors.New("no platform description in KV yet")

// Platform reads the description the cluster stores and applies the
// modules it keeps: the effective platform, which the leader plans with.
func Platform(ctx context.Context, c *api.Client, opts rules.Options) (*rules.Platform, error) {
	p, err := description(ctx, c, opts)
	if err != nil {
		return nil, err
	}
	mods, _, err := Modules(ctx, c)
	if err != nil {
		return nil, err
	}
	p, _, err = rules.Effective(p, mods, opts)
	return p, err
}

// Progress says, per machine type, how many machines are alive of its min
// and how many are joining, and whether every type has its min.
func Progress(ctx context.Context, c *api.Client, plat *rules.Platform) (string, bool) {
	inv := &reconcile.Inventory{Store: kvschema.New(c)}
	recs, _, err := inv.List(ctx, nil)
	if err != nil {
		return "waiting for the inventory: " + err.Error(), false
	}
	members, err := consulclient.Members(ctx, c)
	if err != nil {
		return "waiting for members: " + err.Error(), false
	}
	alive := map[string]bool{}
	for _, m := range members {
		alive[m.Name] = reconcile.SerfStatus(m.Status) == state.MemberAlive
	}
	var parts []string
	done := true
	for _, name := range plat.MachineNames() {
		mt := plat.Machines[name]
		live, pending := 0, 0
		for _, r := range recs {
			if r.Type != name {
				continue
			}
			switch {
			case r.State == reconcile.StateJoined && alive[r.ID]:
				live++
			case r.State == reconcile.StateSpawning || r.State == reconcile.StateJoining:
				pending++
			}
		}
		if live < mt.Min {
			done = false
		}
		parts = append(parts, fmt.Sprintf("%s %d/%d alive, %d joining", name, live, mt.Min, pending))
	}
	return strings.Join(parts, "; "), done
}
