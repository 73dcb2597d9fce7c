package daemon

import (
	"context"
	"encoding/json"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/raptiformica/raptiformica/internal/clock"
	"github.com/raptiformica/raptiformica/internal/kvschema"
	"github.com/raptiformica/raptiformica/internal/state"
	"github.com/raptiformica/raptiformica/internal/telemetry"
	"github.com/raptiformica/raptiformica/provision"
	"github.com/raptiformica/raptiformica/reconcile"
	"github.com/raptiformica/raptiformica/rules"
)

const (
	// provisionRecheck is how often a provisioned machine looks at its
	// sources again: a new commit pushed to a provisioner's repository
	// reruns its steps within it, as a changed description does at once.
	provisionRecheck = 15 * time.Minute
	// provisionPublishRetry spaces the tries to publish a record that
	// could not be written: the leader counts the machine only once it
	// reads that record.
	provisionPublishRetry = 5 * time.Second
)

// provisioner runs this machine's provisioners on itself once the agent
// has joined, and again when the description changes them (and every
// provisionRecheck, for new commits in their sources); provision.Self
// keeps what already succeeded from running again. Each state it reaches
// is published to kvschema.Provisioned/<id>, which the leader reads for
// ready_after_provision, `status` and `members` show, and the status page
// and /v1/status show for this machine; a pass that ran steps fires the
// after_provision hooks here.
type provisioner struct {
	self        string
	machineType string
	runner      *provision.Self
	platform    func() *rules.Platform
	store       *kvschema.Store
	hooks       *reconcile.HookRunner
	clock       clock.Clock
	log         hclog.Logger
	metrics     *telemetry.Metrics
	wake        chan struct{} // a description changed
	publish     chan struct{} // a new record to publish

	mu     sync.Mutex         // guards latest
	latest *state.Provisioned // the last state reached; nil before any
}

// poke says the description changed; it never blocks.
func (p *provisioner) poke() {
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// Status returns this machine's last provisioning record, nil when its
// type has none.
func (p *provisioner) Status() *state.Provisioned {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.latest == nil {
		return nil
	}
	rec := *p.latest
	return &rec
}

// Run converges this machine on its type's provisioners until ctx ends,
// then returns nil: a pass under way is stopped (its step killed) and
// runs again at the next start.
func (p *provisioner) Run(ctx context.Context) error {
	go p.publisher(ctx)
	var (
		run     *converging // the converge under way or done; nil when none
		current string      // the checksum converged on, or being
		recheck = p.clock.After(provisionRecheck)
		again   bool // the recheck is due
	)
	defer func() { run.stop() }()
	for {
		mt, ok := p.want()
		sum := mt.ProvisionChecksum()
		switch {
		case !ok:
			// The type left the description: nothing to converge on.
		case sum != current || (again && run.finished()):
			run.stop()
			run, again, current = nil, false, sum
			if len(mt.Provisioners) == 0 {
				// Nothing to run; said once, so that a record of earlier
				// provisioners is not left saying otherwise.
				if p.Status() != nil {
					p.report(state.Provisioned{Machine: p.self, MachineType: mt.Name, State: state.ProvisionOK, Time: p.clock.Now().UTC()})
				}
				break
			}
			run = p.converge(ctx, mt)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-p.wake:
		case <-recheck:
			again, recheck = true, p.clock.After(provisionRecheck)
		}
	}
}

// converging is one provision.Self.Converge running in the background.
type converging struct {
	cancel context.CancelFunc
	done   chan struct{} // closed when it returned
}

// converge starts converging on mt's provisioners until they succeed or
// the returned run is stopped.
func (p *provisioner) converge(ctx context.Context, mt rules.MachineType) *converging {
	cctx, cancel := context.WithCancel(ctx)
	c := &converging{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(c.done)
		_ = p.runner.Converge(cctx, p.self, mt, p.report)
	}()
	return c
}

// stop ends the run, killing a step under way, and waits for it.
func (c *converging) stop() {
	if c != nil {
		c.cancel()
		<-c.done
	}
}

// finished reports whether the run has returned (or there is none).
func (c *converging) finished() bool {
	if c == nil {
		return true
	}
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

// want returns this machine's type in the description in force.
func (p *provisioner) want() (rules.MachineType, bool) {
	plat := p.platform()
	if plat == nil {
		return rules.MachineType{}, false
	}
	mt, ok := plat.Machines[p.machineType]
	return mt, ok
}

// report takes a state the provisioning reached: logged, counted, kept for
// the status, published, and after a pass that ran steps, given to the
// after_provision hooks.
func (p *provisioner) report(rec state.Provisioned) {
	ran := false
	for _, r := range rec.Provisioners {
		ran = ran || r.Ran
		if r.Warning != "" {
			p.log.Warn("provisioner source not updated", telemetry.KeyProvisioner, r.Name, telemetry.KeyError, r.Warning)
		}
	}
	switch rec.State {
	case state.ProvisionRunning:
		p.log.Info("provisioning", telemetry.KeyProvisioner, rec.Provisioner, telemetry.KeyChecksum, rec.Checksum)
	case state.ProvisionOK:
		if ran {
			p.log.Info("provisioned", telemetry.KeyChecksum, rec.Checksum)
		}
	case state.ProvisionFailed:
		p.log.Error("provisioning failed", telemetry.KeyProvisioner, rec.Provisioner, telemetry.KeyAttempt, rec.Failures, telemetry.KeyOutput, rec.Output, telemetry.KeyError, rec.Error)
	}
	if p.metrics != nil {
		for _, s := range []string{state.ProvisionRunning, state.ProvisionOK, state.ProvisionFailed} {
			v := 0.0
			if s == rec.State {
				v = 1
			}
			p.metrics.ProvisionState.WithLabelValues(s).Set(v)
		}
		if rec.State == state.ProvisionFailed || (rec.State == state.ProvisionOK && ran) {
			p.metrics.ProvisionRuns.WithLabelValues(rec.State).Inc()
		}
	}
	p.mu.Lock()
	p.latest = &rec
	p.mu.Unlock()
	select {
	case p.publish <- struct{}{}:
	default:
	}
	// The hooks hear of a pass that did something, and of the first
	// failure of a series, not of every retry.
	if (rec.State == state.ProvisionOK && ran) || (rec.State == state.ProvisionFailed && rec.Failures == 1) {
		p.hooks.FireProvisioned(context.Background(), p.platform(), rec)
	}
}

// publisher writes the latest record to KV whenever there is a new one,
// retrying a failed write until it succeeds or a newer record replaces it.
// It returns when ctx ends.
func (p *provisioner) publisher(ctx context.Context) {
	var lastErr string
	for {
		select {
		case <-ctx.Done():
			return
		case <-p.publish:
		}
		for {
			rec := p.Status()
			b, _ := json.Marshal(rec)
			pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			err := p.store.PutProvisioned(pctx, p.self, b)
			cancel()
			if err == nil || ctx.Err() != nil {
				lastErr = ""
				break
			}
			// A machine made before provisioning existed has a token
			// that may not write its record: said once, not every try.
			if err.Error() != lastErr {
				p.log.Warn("publish this machine's provisioning", telemetry.KeyError, err)
			}
			lastErr = err.Error()
			select {
			case <-ctx.Done():
				return
			case <-p.publish: // a newer record: written at once
			case <-p.clock.After(provisionPublishRetry):
			}
		}
	}
}
