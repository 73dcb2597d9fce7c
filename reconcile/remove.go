package reconcile

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"

	"github.com/raptiformica/raptiformica/backends"
	"github.com/raptiformica/raptiformica/internal/clock"
	"github.com/raptiformica/raptiformica/internal/consulclient"
	"github.com/raptiformica/raptiformica/internal/nodeconfig"
	"github.com/raptiformica/raptiformica/internal/state"
	"github.com/raptiformica/raptiformica/internal/telemetry"
	"github.com/raptiformica/raptiformica/rules"
)

// unvote takes a failed server out of Raft beside the actions, not as one:
// it changes no record, and its machine must still count as failed in the
// passes meanwhile (a machine with an action in flight counts as what the
// action will make it), or replacements held back by max_unhealthy would
// go ahead. One runs per machine at a time; Wait waits for it.
func (e *Executor) unvote(ctx context.Context, a state.Action, log hclog.Logger) {
	e.startIn(e.unvoting, a.MachineID, a, func() {
		// Looked at again right before: a server back since the pass
		// keeps its seat (Consul would let it in again only at its
		// next reconcile, a minute on).
		mctx, cancel := context.WithTimeout(ctx, consulCallTimeout)
		st, ok := e.memberStatus(mctx, a.MachineID)
		cancel()
		if !ok || st != state.MemberFailed {
			e.finish(a, nil)
			log.Info("server no longer failed: left in Raft", telemetry.KeyStatus, st)
			return
		}
		removed, err := e.removeRaftPeer(ctx, a.MachineID, log)
		e.finish(a, err)
		if removed {
			log.Warn("failed server taken out of Raft", telemetry.KeyReason, a.Reason)
		}
	})
}

func (e *Executor) remove(ctx context.Context, p *rules.Platform, bes map[string]backends.Backend, obs Observed, a state.Action, log hclog.Logger) error {
	rec, hasRecord := obs.Records[a.MachineID]
	log = log.With(telemetry.KeyBackend, a.Backend)
	if hasRecord && rec.State != StateDestroying {
		// Announce the removal before doing it, so that an interrupted
		// removal is finished by whoever leads next.
		rec.State, rec.Updated, rec.Reason = StateDestroying, e.Clock.Now(), a.Reason
		var err error
		if rec, err = e.Inventory.Put(ctx, rec); err != nil {
			return err
		}
	}
	member, isMember := obs.Members[a.MachineID]
	if hostGone(obs, a.Host) {
		// Its host is out of the cluster for good (removed from the
		// inventory, not a member): nobody is left to destroy what
		// ran there. The machine went with its host.
		log.Warn("the machine's host is gone: forgotten, not destroyed", telemetry.KeyHost, a.Host)
		a.Host, a.Backend = "", ""
	}
	e.start(a.MachineID, a, func() { e.removing(ctx, p, bes[a.Backend], rec, hasRecord, member, isMember, a, log) })
	return nil
}

// hostGone reports whether host, a machine's host, has left the cluster
// for good: it has no inventory record and is not an alive member. A host
// that is only down keeps its record until it is reaped, and its machines'
// removals wait for it meanwhile: it may come back and destroy them. An
// observation without the members (none could be read) tells nothing.
func hostGone(obs Observed, host string) bool {
	if host == "" || host == obs.Self || obs.Members == nil {
		return false
	}
	_, recorded := obs.Records[host]
	return !recorded && obs.Members[host].Status != state.MemberAlive
}

// removing runs in the goroutine of a removal: the member leaves (a
// healthy server gracefully, a given-up one out of Raft first), its host
// destroys it, Consul forgets the member, and then its record and every
// key and credential it had go.
func (e *Executor) removing(ctx context.Context, p *rules.Platform, be backends.Backend, rec Record, hasRecord bool, member Member, isMember bool, a state.Action, log hclog.Logger) {
	if a.Kind == state.KindScaleDown && isMember && member.Status == state.MemberAlive && member.RaftVoter {
		// A healthy server leaves gracefully, so that it is taken
		// out of the Raft configuration before it stops. Asking a
		// member's Consul shows it the cluster's token, which only a
		// proven server may see (consulclient.New checks its
		// certificate too); a client needs no leave of its own: it
		// is destroyed, then forced out.
		if err := e.leave(ctx, member); err != nil {
			log.Warn("graceful leave failed; forcing", telemetry.KeyError, err)
		}
	}
	// Consul sessions favour liveness: look again right before the
	// destructive step, and stop if leadership is gone.
	if ctx.Err() != nil {
		return
	}
	if a.Kind == state.KindReap && isMember && member.Server && member.Status == state.MemberFailed {
		// Given up, and Consul has it failed: out of Raft first.
		// The destroy may wait on a host that is down or a
		// backend that fails for as long as they last, and the
		// dead server would count toward quorum all that time.
		_, _ = e.removeRaftPeer(ctx, a.MachineID, log)
	}
	destroyed, ok := e.destroy(ctx, p, be, a, log)
	if !ok {
		return
	}
	if isMember {
		e.forceLeave(ctx, a.MachineID, member, destroyed, log)
	}
	if hasRecord {
		if err := e.deleteRecord(ctx, rec); err != nil {
			e.finish(a, err)
			log.Error("delete record", telemetry.KeyError, err)
			return
		}
	}
	e.forget(ctx, a.MachineID, cmp.Or(rec.Host, a.Host), log)
	e.finish(a, nil)
	log.Info("machine removed", telemetry.KeyReason, a.Reason)
	event := "after_destroy"
	if a.Kind == state.KindReap {
		event = "after_reap"
	}
	e.Hooks.Fire(ctx, p, event, a)
}

// destroy has the machine's host destroy it: another member through a
// work order, the leader's own backend in process. destroyed says whether
// a backend destroyed it (only then is it known gone); ok false means the
// removal stops here, its outcome finished, for a later pass to retry.
func (e *Executor) destroy(ctx context.Context, p *rules.Platform, be backends.Backend, a state.Action, log hclog.Logger) (destroyed, ok bool) {
	switch {
	case a.Host != "":
		// Where it was made: that host's backend holds it.
		dctx, cancel := context.WithTimeout(ctx, p.Policy.ProvisionTimeout)
		err := e.destroyElsewhere(dctx, p, a)
		cancel()
		if err == nil {
			return true, true
		}
		e.finish(a, err)
		if errors.Is(err, errHostGone) || errors.Is(err, errHostBusy) {
			// A state that lasts (a host that is down): said once,
			// not every pass.
			if e.sayOnce(a.MachineID, err.Error()) {
				log.Warn("destroy waits for its host", telemetry.KeyHost, a.Host, telemetry.KeyError, err)
			}
			return false, false
		}
		e.backendFailed(hostKey(a.Host, a.Backend), p, err)
		log.Error("destroy on another host failed", telemetry.KeyHost, a.Host, telemetry.KeyError, err)
		return false, false
	case be != nil:
		// As long as a spawn may take: destroying is as slow as
		// creating on some providers, and no slower.
		begin := time.Now()
		_, err := RunOrder(ctx, be, state.WorkOrder{Kind: state.WorkDestroy, MachineID: a.MachineID, Backend: a.Backend, Timeout: p.Policy.ProvisionTimeout})
		e.observeCall(a.Backend, "destroy", begin)
		if err != nil {
			e.backendFailed(a.Backend, p, err)
			e.finish(a, err)
			log.Error("destroy failed", telemetry.KeyError, err)
			return false, false
		}
		return true, true
	case a.Backend != "":
		log.Warn("backend not configured; removing the record only")
	}
	return false, true
}

// forceLeave has Consul forget the removed member id.
//
// A member the failure detector still has alive (its backend said first
// that it is gone) is not pruned now: Consul's prune of a member it has
// alive sleeps its broadcast timeout and leave delay (8 s) holding the
// member list, and every read of the members (the next pass's, the
// replacement's node config) waits on it. It is marked leaving at once
// and pruned once it is failed. Asked again now: a member that left
// gracefully (a scale down) or failed meanwhile is pruned at once, and the
// prune is what takes a left server out of Raft for sure.
func (e *Executor) forceLeave(ctx context.Context, id string, member Member, destroyed bool, log hclog.Logger) {
	fctx, cancel := context.WithTimeout(ctx, consulCallTimeout)
	prune := prunable(member.Status)
	if st, ok := e.memberStatus(fctx, id); ok {
		prune = prunable(st)
	}
	err := e.Consul.Agent().ForceLeaveOptions(id, api.ForceLeaveOpts{Prune: prune}, (&api.QueryOptions{}).WithContext(fctx))
	cancel()
	if err != nil {
		log.Warn("force-leave failed", telemetry.KeyError, err)
		return
	}
	if !prune {
		if member.Server && destroyed {
			// Consul takes a leaving server out of Raft only
			// once it has it failed: until then the dead
			// server still counts toward quorum, and one more
			// death would lose it. Out now, as a prune did.
			_, _ = e.removeRaftPeer(ctx, id, log)
		}
		e.pruneWhenDown(ctx, id, log)
	}
}

// forget removes what a removed machine leaves besides its record: every
// key it or its host wrote (kvschema.ForgetMachine), and its credentials
// (Forget). It is the one way out for every removal, a reap, a scale-down,
// a destroy by hand or a spawn never started, whoever runs it. A failure
// is logged, not returned: the machine is gone, and what is left behind is
// a key or a token of a machine that no longer exists.
func (e *Executor) forget(ctx context.Context, id, host string, log hclog.Logger) {
	ctx, cancel := context.WithTimeout(ctx, consulCallTimeout)
	defer cancel()
	if err := e.Inventory.Store.ForgetMachine(ctx, id, host); err != nil {
		log.Warn("remove the machine's keys", telemetry.KeyError, err)
	}
	if e.Forget != nil {
		if err := e.Forget(ctx, id); err != nil {
			log.Warn("remove the machine's token", telemetry.KeyError, err)
		}
	}
}

// prunable says whether a member in status st may be pruned at once: one
// that left or failed. Consul's prune of a member it has alive or leaving
// sleeps its broadcast timeout and leave delay (8 s) holding the member
// list; a reap that finishes the removal of a member an earlier reap made
// leave finds it leaving, and pruned it then: every read of the members
// waited 8 s (seen as an 8 s pass at 103 machines).
func prunable(st state.MemberStatus) bool { return st == state.MemberLeft || st == state.MemberFailed }

// pruneWhenDown erases a member that was made to leave while Consul still
// had it alive from the member list, once Consul has it left or failed:
// looked for every pruneEvery, for at most pruneWithin (a member that
// never goes down is left as it is, leaving; Consul drops it in time). It runs beside the actions,
// not as one (Wait does not wait for it), and ends with ctx.
func (e *Executor) pruneWhenDown(ctx context.Context, id string, log hclog.Logger) {
	go func() {
		ctx, cancel := context.WithTimeout(ctx, pruneWithin)
		defer cancel()
		_ = clock.Poll(ctx, e.Clock, pruneEvery, func() (bool, error) {
			mctx, mcancel := context.WithTimeout(ctx, consulCallTimeout)
			defer mcancel()
			members, err := consulclient.Members(mctx, e.Consul)
			if err != nil {
				return false, nil
			}
			for _, m := range members {
				if m.Name != id {
					continue
				}
				if !prunable(SerfStatus(m.Status)) {
					return false, nil
				}
				if err := e.Consul.Agent().ForceLeaveOptions(id, api.ForceLeaveOpts{Prune: true}, (&api.QueryOptions{}).WithContext(mctx)); err != nil {
					log.Debug("prune a member that left", telemetry.KeyError, err)
					return false, nil
				}
			}
			return true, nil
		})
	}()
}

// memberStatus is what Consul says of member id now; ok is false when it
// cannot tell.
func (e *Executor) memberStatus(ctx context.Context, id string) (state.MemberStatus, bool) {
	members, err := consulclient.Members(ctx, e.Consul)
	if err != nil {
		return "", false
	}
	for _, m := range members {
		if m.Name == id {
			return SerfStatus(m.Status), true
		}
	}
	return "", false
}

// removeRaftPeer takes the server id out of the Raft configuration, if it
// is in it, and says whether it did. The peer is named by its node ID: the
// one derived from its name (consulclient.NodeID), found in the
// configuration itself, or, for a server whose Consul made its own, the
// catalog's. Never by the configuration's node names: Consul finds those
// by address, and a replacement may already listen on the dead server's
// address (it then carried the dead one's name, and the replacement was
// removed). Failures are logged once per machine and returned.
func (e *Executor) removeRaftPeer(ctx context.Context, id string, log hclog.Logger) (removed bool, err error) {
	ctx, cancel := context.WithTimeout(ctx, consulCallTimeout)
	defer cancel()
	defer func() {
		if err != nil && e.sayOnce(id, err.Error()) {
			// Until it is out, it counts toward quorum; the prune
			// once Consul has it failed, or the next pass, tries again.
			log.Warn("take a server out of Raft", telemetry.KeyError, err)
		}
	}()
	cfg, err := e.Consul.Operator().RaftGetConfiguration((&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return false, fmt.Errorf("read the Raft configuration: %w", err)
	}
	in := func(peer string) bool {
		return slices.ContainsFunc(cfg.Servers, func(s *api.RaftServer) bool { return s.ID == peer })
	}
	peer := consulclient.NodeID(id)
	if !in(peer) {
		node, _, err := e.Consul.Catalog().Node(id, (&api.QueryOptions{}).WithContext(ctx))
		if err != nil {
			return false, fmt.Errorf("find its node ID in the catalog: %w", err)
		}
		if node == nil || node.Node == nil || !in(node.Node.ID) {
			return false, nil // not in Raft (or not known at all)
		}
		peer = node.Node.ID
	}
	if err := e.Consul.Operator().RaftRemovePeerByID(peer, (&api.WriteOptions{}).WithContext(ctx)); err != nil {
		return false, fmt.Errorf("remove it from Raft: %w", err)
	}
	return true, nil
}

// deleteRecord removes a removed machine's record. A server that just left
// takes Raft through a new configuration, and for a few seconds the KV has
// no leader to write through: the delete is tried again for up to 30 s. A
// record changed meanwhile is not retried: whoever changed it decides.
func (e *Executor) deleteRecord(ctx context.Context, rec Record) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var err error
	if perr := clock.Poll(ctx, e.Clock, 500*time.Millisecond, func() (bool, error) {
		err = e.Inventory.Delete(ctx, rec)
		return err == nil || errors.Is(err, state.ErrConflict), nil
	}); perr != nil && err == nil {
		err = perr
	}
	return err
}

// leave asks the member's own Consul agent to leave the cluster, on the
// HTTPS port the member publishes (a machine may have been given another
// than the default).
func (e *Executor) leave(ctx context.Context, m Member) error {
	ctx, cancel := context.WithTimeout(ctx, consulCallTimeout)
	defer cancel()
	t, err := memberTarget(ctx, e.Consul, m.Name, m.Address)
	if err != nil {
		return err
	}
	t.Token, t.CACert = e.Token, e.CACert
	c, err := consulclient.New(t)
	if err != nil {
		return err
	}
	_, err = c.Raw().Write("/v1/agent/leave", nil, nil, (&api.WriteOptions{}).WithContext(ctx))
	return err
}

// memberTarget is where a member's Consul HTTP API is: its address, and the
// ports it publishes in its node meta (the defaults when it publishes none,
// as a machine of an older version does).
func memberTarget(ctx context.Context, consul *api.Client, node, addr string) (consulclient.Target, error) {
	t := consulclient.Target{Host: addr}
	n, _, err := consul.Catalog().Node(node, (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return t, fmt.Errorf("read member %s from the catalog: %w", node, err)
	}
	if n == nil || n.Node == nil {
		return t, nil
	}
	if v, ok := n.Node.Meta[nodeconfig.MetaHTTPSPort]; ok {
		port, err := strconv.Atoi(v)
		if err != nil || port < 1 || port > 65535 {
			return t, fmt.Errorf("member %s publishes HTTPS port %q: not a port", node, v)
		}
		t.HTTPSPort = port
	}
	return t, nil
}

// How pruneWhenDown looks for a member to go down.
const (
	pruneEvery  = 2 * time.Second
	pruneWithin = 3 * time.Minute
)
