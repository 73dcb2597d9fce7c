package daemon

import (
	"context"
	"encoding/json"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/raptiformica/raptiformica/internal/clock"
	"github.com/raptiformica/raptiformica/internal/kvschema"
	"github.com/raptiformica/raptiformica/internal/telemetry"
	"github.com/raptiformica/raptiformica/reconcile"
)

// Leader election settings. The session is tied to this node's serfHealth
// check as well as to its TTL, so a node that dies loses the lock when Consul
// notices, and a node cut off loses it when the TTL runs out.
const (
	sessionTTL     = "10s"
	lockDelay      = 3 * time.Second
	monitorRetries = 5
)

// campaign competes for the leader lock until ctx ends. While it holds the
// lock it runs the control loop; the moment the lock is lost the loop's
// context is cancelled, which stops every action in flight.
func (a *Agent) campaign(ctx context.Context) {
	if a.Config.NeverLead {
		a.Log.Info("not campaigning for leader: never_lead is set in the node config")
		return
	}
	// Only a node that has a description can lead.
	if clock.Poll(ctx, a.Clock, 250*time.Millisecond, func() (bool, error) { return a.Platform() != nil, nil }) != nil {
		return
	}
	for attempt := 1; ctx.Err() == nil; attempt++ {
		lock, err := a.consul.LockOpts(&api.LockOptions{
			Key:            kvschema.Leader,
			Value:          []byte(a.Config.MachineID),
			SessionName:    "raptiformica leader " + a.Config.MachineID,
			SessionTTL:     sessionTTL,
			LockDelay:      lockDelay,
			MonitorRetries: monitorRetries,
			LockWaitTime:   10 * time.Second,
		})
		if err != nil {
			a.Log.Error("leader lock", telemetry.KeyError, err)
			return
		}
		lost, err := lock.Lock(ctx.Done())
		if err != nil {
			wait := clock.Backoff{Initial: time.Second, Max: 15 * time.Second}.Delay(attempt)
			a.Log.Warn("leader lock failed", telemetry.KeyError, err, "wait", wait)
			_ = clock.Sleep(ctx, a.Clock, wait)
			continue
		}
		if lost == nil {
			return // ctx ended while waiting
		}
		attempt = 0
		a.lead(ctx, lost)
		_ = lock.Unlock()
	}
}

func (a *Agent) lead(ctx context.Context, lost <-chan struct{}) {
	lctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-lost:
			cancel()
		case <-lctx.Done():
		}
	}()
	// A KV that lost its state (a fresh Consul after recovery) is re-seeded
	// from this node's mirror before anything is planned: planning on an
	// empty inventory would take every machine for an orphan.
	_ = clock.Poll(lctx, a.Clock, 500*time.Millisecond, func() (bool, error) { return a.reseed(lctx), nil })
	a.setLeading(true)
	a.Log.Info("became leader")
	a.executor.Hooks.Fire(lctx, a.Platform(), "leader_elected", reconcile.Action{MachineID: a.Config.MachineID, Reason: "leader elected"})
	r := &reconcile.Reconciler{
		Consul: a.consul, Inventory: a.inventory, Executor: a.executor,
		Platform: a.Platform, Backends: a.backends, Self: a.Config.MachineID,
		Clock: a.Clock, Log: a.Log.Named("reconcile"), Metrics: a.metrics,
		Wake: a.wake, Publish: a.publish,
	}
	autopilotDone := make(chan struct{})
	go func() { defer close(autopilotDone); a.watchAutopilot(lctx) }()
	_ = r.Run(lctx)
	cancel()
	<-autopilotDone // it must not set a gauge after they are forgotten
	a.setLeading(false)
	if ctx.Err() == nil {
		a.Log.Warn("lost leadership")
	}
}

func (a *Agent) setLeading(on bool) {
	a.mu.Lock()
	a.leading = on
	a.mu.Unlock()
	a.metrics.LeaderChanges.Inc()
	if on {
		a.metrics.IsLeader.Set(1)
	} else {
		a.metrics.IsLeader.Set(0)
		a.metrics.ForgetLeaderView()
	}
}

// watchAutopilot exports how many Consul servers may still fail, so that an
// alert can say quorum is at risk before it is lost. Only the leader asks:
// every server would give the same answer.
func (a *Agent) watchAutopilot(ctx context.Context) {
	clock.Every(ctx, a.Clock, 5*time.Second, func() {
		if h, err := a.consul.Operator().AutopilotServerHealth((&api.QueryOptions{}).WithContext(ctx)); err == nil {
			voters := 0
			for _, s := range h.Servers {
				if s.Voter {
					voters++
				}
			}
			a.metrics.ConsulVoters.Set(float64(voters))
			a.metrics.FailureTolerance.Set(float64(h.FailureTolerance))
		}
	})
}

// publish keeps the leader's status for /v1/status and writes it to KV for
// the other nodes and the CLI.
func (a *Agent) publish(st reconcile.Status) {
	a.mu.Lock()
	a.lastStatus = &st
	a.mu.Unlock()
	b, err := json.Marshal(st)
	if err != nil {
		return
	}
	// The pass goes on whether or not this write lands: bound it.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := a.store.PutStatus(ctx, b); err != nil {
		a.Log.Warn("publish status", telemetry.KeyError, err)
	}
}
