package daemon

import (
	"context"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"

	"github.com/raptiformica/raptiformica/internal/clock"
	"github.com/raptiformica/raptiformica/internal/state"
	"github.com/raptiformica/raptiformica/internal/telemetry"
	"github.com/raptiformica/raptiformica/internal/watch"
	"github.com/raptiformica/raptiformica/reconcile"
	"github.com/raptiformica/raptiformica/rules"
)

// clusterChangeSettle is how long a change of membership is left to settle
// before the hooks run: the joins of a burst land together.
const clusterChangeSettle = time.Second

// clusterChange runs the description's cluster_change hooks on this
// machine when the membership changes (a member joins, fails, recovers or
// leaves), as the original did on every node: a load balancer's config is
// rewritten where it runs. A burst is one change, and the hooks run at most
// once per interval: membership churns, and its author warned that hooks
// "might fire very often".
type clusterChange struct {
	self     string
	consul   *api.Client
	platform func() *rules.Platform
	hooks    *reconcile.HookRunner
	clock    clock.Clock
	log      hclog.Logger
	// wake is poked when the description changes (poke): whether it has
	// cluster_change hooks is looked at then, not on a timer, which woke
	// every machine of the cluster every few seconds to find nothing.
	wake chan struct{}
}

// poke says the description changed; it never blocks.
func (c *clusterChange) poke() {
	select {
	case c.wake <- struct{}{}:
	default: // one pending look stands for many changes
	}
}

// Run watches the membership and fires until ctx ends, then returns nil.
// It watches only while the description has a cluster_change hook: the
// watch reads every member's failure detector check on every change, a
// cost that grows with the cluster, on every machine; with no hook to run
// it is paid for nothing. Its reads are stale, answered by whichever
// server the node asks rather than all by the Raft leader.
func (c *clusterChange) Run(ctx context.Context) error {
	for {
		if !c.wanted() {
			select {
			case <-ctx.Done():
				return nil
			case <-c.wake:
				continue
			}
		}
		wctx, cancel := context.WithCancel(ctx)
		go func() {
			for {
				select {
				case <-wctx.Done():
					return
				case <-c.wake:
					if !c.wanted() {
						cancel()
						return
					}
				}
			}
		}()
		c.watch(wctx)
		cancel()
		if ctx.Err() != nil {
			return nil
		}
	}
}

// wanted says whether the description has cluster_change hooks.
func (c *clusterChange) wanted() bool {
	p := c.platform()
	return p != nil && len(p.HooksFor("cluster_change")) > 0
}

// watch watches the membership and fires until ctx ends.
func (c *clusterChange) watch(ctx context.Context) {
	members := reconcile.MembershipQuery(c.consul)
	stale := func(q *api.QueryOptions) (uint64, bool, error) {
		q.AllowStale = true
		return members(q)
	}
	changed := make(chan struct{}, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = watch.Loop(ctx, 5*time.Minute, stale, func() {
			select {
			case changed <- struct{}{}:
			default: // one pending change stands for many
			}
		}, func(err error) { c.log.Debug("watch membership", telemetry.KeyError, err) })
	}()
	c.fireOnChanges(ctx, changed)
	<-done
}

// fireOnChanges fires cluster_change for the changes on changed, whose
// first is the membership as it was found, not a change. A change waits
// clusterChangeSettle, and until the interval since the last run has
// passed; the changes meanwhile are part of the same run.
func (c *clusterChange) fireOnChanges(ctx context.Context, changed <-chan struct{}) {
	first := true
	var last time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-changed:
		}
		if first {
			first = false
			continue
		}
		p := c.platform()
		if p == nil {
			continue
		}
		hooks := p.HooksFor("cluster_change")
		if len(hooks) == 0 {
			continue
		}
		wait := clusterChangeSettle
		if !last.IsZero() {
			wait = max(wait, interval(hooks)-c.clock.Now().Sub(last))
		}
		if clock.Sleep(ctx, c.clock, wait) != nil {
			return
		}
		select {
		case <-changed: // came while waiting: this run covers it
		default:
		}
		last = c.clock.Now()
		c.hooks.Fire(ctx, c.platform(), "cluster_change", state.Action{MachineID: c.self, Reason: "the cluster's membership changed"})
	}
}

// interval is the least time between two runs of the cluster_change hooks
// on one machine: the longest any of them asks for, so that each runs at
// most once per its own interval.
func interval(hooks []rules.Hook) time.Duration {
	d := time.Duration(0)
	for _, h := range hooks {
		d = max(d, h.Interval)
	}
	return d
}
