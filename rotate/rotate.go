// Package rotate replaces a live cluster's shared secrets without losing a
// member: the gossip key (Gossip) and the mesh secret (Mesh). Both are
// what `raptiformica rotate` runs; the CLI only parses and prints.
//
// Both go through steps that each leave the cluster whole, and take the
// next step only once every member has taken the last one: a member that
// has not is named and the rotation stops, leaving the cluster at a step
// from which it runs as long as needed, and from which running the
// rotation again carries on. Both first wait for the cluster to be
// settled (settle): every machine of the inventory joined and alive, no
// member failed. A machine that is down during a rotation would come back
// with the old secret only, which nobody accepts any longer.
//
// A rotation holds no lock: run one at a time.
package rotate

import (
	"context"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/raptiformica/raptiformica/internal/clock"
	"github.com/raptiformica/raptiformica/internal/consulclient"
	"github.com/raptiformica/raptiformica/internal/kvschema"
	"github.com/raptiformica/raptiformica/internal/state"
	"github.com/raptiformica/raptiformica/reconcile"
)

// Options are how a rotation runs.
type Options struct {
	// Out receives a line per step; nil discards them.
	Out io.Writer
	// Timeout bounds each wait for the members to take a step (and for
	// the cluster to settle first); default 2 minutes.
	Timeout time.Duration
	// CallTimeout bounds each call to Consul; default 30 s.
	CallTimeout time.Duration
	// IdentityDir, when set, is a folder keeping the cluster's identity
	// (a local cluster's, which `up` re-creates the cluster from): its
	// gossip key is replaced too.
	IdentityDir string
	// Clock paces the waits; nil is the wall clock.
	Clock clock.Clock
}

func (o Options) timeout() time.Duration {
	if o.Timeout > 0 {
		return o.Timeout
	}
	return 2 * time.Minute
}

func (o Options) call(ctx context.Context) (context.Context, context.CancelFunc) {
	d := o.CallTimeout
	if d <= 0 {
		d = 30 * time.Second
	}
	return context.WithTimeout(ctx, d)
}

func (o Options) printf(format string, args ...any) {
	if o.Out != nil {
		fmt.Fprintf(o.Out, format+"\n", args...)
	}
}

// pollEvery is how often a wait looks at the members again.
const pollEvery = time.Second

// waitFor calls check until it reports no laggard, or opts' timeout
// passes: then it returns an error saying what was waited for and who
// had not got there, from the last look.
func waitFor(ctx context.Context, opts Options, what string, check func(context.Context) ([]string, error)) error {
	ctx, cancel := context.WithTimeout(ctx, opts.timeout())
	defer cancel()
	var lagging []string
	var lastErr error
	err := clock.Poll(ctx, clock.Or(opts.Clock), pollEvery, func() (bool, error) {
		lagging, lastErr = check(ctx)
		return lastErr == nil && len(lagging) == 0, nil
	})
	if err == nil {
		return nil
	}
	why := strings.Join(lagging, "; ")
	if lastErr != nil {
		why = lastErr.Error()
	}
	return fmt.Errorf("waited %s for %s: %s", opts.timeout(), what, why)
}

// cluster is one look at who must take a rotation's steps.
type cluster struct {
	records map[string]reconcile.Record
	members []*api.AgentMember
}

// look reads the inventory and the members.
func look(ctx context.Context, opts Options, c *api.Client) (cluster, error) {
	cctx, cancel := opts.call(ctx)
	defer cancel()
	recs, _, err := (&reconcile.Inventory{Store: kvschema.New(c)}).List(cctx, nil)
	if err != nil {
		return cluster{}, fmt.Errorf("read the inventory: %w", err)
	}
	ms, err := consulclient.Members(cctx, c)
	if err != nil {
		return cluster{}, err
	}
	return cluster{records: recs, members: ms}, nil
}

// unsettled says, for each machine that keeps the cluster from being
// settled, why: a machine of the inventory (not being destroyed) that is
// not joined or not an alive member, and a member that failed. Sorted.
func (cl cluster) unsettled() []string {
	status := map[string]state.MemberStatus{}
	for _, m := range cl.members {
		status[m.Name] = reconcile.SerfStatus(m.Status)
	}
	var out []string
	for id, r := range cl.records {
		st, member := status[id]
		switch {
		case r.State == reconcile.StateDestroying:
		case r.State != reconcile.StateJoined:
			out = append(out, fmt.Sprintf("machine %s is %s", id, r.State))
		case !member:
			out = append(out, fmt.Sprintf("machine %s is not a member", id))
		case st != state.MemberAlive:
			out = append(out, fmt.Sprintf("machine %s is a %s member", id, st))
		}
	}
	for id, st := range status {
		if _, recorded := cl.records[id]; !recorded && (st == state.MemberFailed || st == state.MemberLeaving) {
			out = append(out, fmt.Sprintf("member %s is %s", id, st))
		}
	}
	sort.Strings(out)
	return out
}

// ids are the machines that must take every step: the alive members and
// the machines of the inventory not being destroyed. Sorted.
func (cl cluster) ids() []string {
	set := map[string]bool{}
	for _, m := range cl.members {
		if reconcile.SerfStatus(m.Status) == state.MemberAlive {
			set[m.Name] = true
		}
	}
	for id, r := range cl.records {
		if r.State != reconcile.StateDestroying {
			set[id] = true
		}
	}
	out := make([]string, 0, len(set))
	for id := range set {
		out = append(out, id)
	}
	sort.Strings(out)
	return out
}

// settle waits until the cluster is settled and returns that look.
func settle(ctx context.Context, opts Options, c *api.Client) (cluster, error) {
	var cl cluster
	err := waitFor(ctx, opts, "every machine to be an alive member (one that is down would come back with the old secret only, and be shut out)",
		func(ctx context.Context) ([]string, error) {
			var err error
			cl, err = look(ctx, opts, c)
			return cl.unsettled(), err
		})
	return cl, err
}
