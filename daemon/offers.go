package daemon

import (
	"bytes"
	"context"
	"encoding/json"
	"runtime"
	"sort"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/raptiformica/raptiformica/backends"
	"github.com/raptiformica/raptiformica/internal/clock"
	"github.com/raptiformica/raptiformica/internal/kvschema"
	"github.com/raptiformica/raptiformica/internal/state"
	"github.com/raptiformica/raptiformica/internal/telemetry"
	"github.com/raptiformica/raptiformica/reconcile"
	"github.com/raptiformica/raptiformica/rules"
)

const (
	// offerInterval is how often a machine asks its backends again
	// without a cause (a description change asks at once): an engine
	// installed or a socket that went away shows within it.
	offerInterval = time.Minute
	// offerRefresh is how old a published offer may grow while nothing in
	// it changed: its Checked time then says the machine still asks.
	offerRefresh = 10 * time.Minute
	// offerCheckTimeout bounds asking every backend once, all at once.
	offerCheckTimeout = 30 * time.Second
)

// offerer publishes which of the description's backends this machine can
// run, asked here: the leader places machines on members that offer a
// backend, where today it could use only the backends of its own machine.
type offerer struct {
	self string
	// version is the agent's, published with the offer and its
	// architecture.
	version string
	// notHere is a backend this machine may not offer whatever its check
	// says: the one that made it, when its commands cannot run on the
	// machines it makes (an exec backend's lead = "false").
	notHere  string
	backends func() map[string]backends.Backend
	// hosting, when set, names the backends whose machines the offer
	// lists (worker.hosting); nil lists none.
	hosting  func() map[string]bool
	platform func() *rules.Platform
	store    *kvschema.Store
	clock    clock.Clock
	log      hclog.Logger
	metrics  *telemetry.Metrics
	wake     chan struct{}

	mu       sync.Mutex        // held by a check: the loop's and a worker's
	last     []byte            // the last offer published, without its time
	lastAt   time.Time         // when it was published
	lastFree map[string]uint64 // its free memory, by backend
	lastErr  string            // the last failure to publish, said once

	// listed is the machines its lists name, under a lock of its own: a
	// stop's report asks it while a check may hold mu for as long as a
	// hung backend takes (offerCheckTimeout).
	listedMu sync.Mutex
	listed   map[string]bool
}

// poke asks for a check now (the description changed); it never blocks.
func (o *offerer) poke() {
	select {
	case o.wake <- struct{}{}:
	default:
	}
}

// Run checks and publishes until ctx ends, then returns nil. A backend
// this machine holds machines of that reports one stopped makes it check
// and publish at once: the leader judges the machine by this list.
//
// A second list follows a second later, published whatever it says: the
// leader removes a machine only on two lists of its host (a restarted
// container shows running again in the second).
func (o *offerer) Run(ctx context.Context) error {
	again := make(chan struct{}, 1)
	w := &reconcile.Watches{Clock: o.clock, Log: o.log, Stopped: func(_, id string) {
		if !o.lists(id) {
			return // another member's machine: its maker says so
		}
		o.poke()
		select {
		case again <- struct{}{}:
		default:
		}
	}, Want: func(_ string, in backends.Instance) bool {
		// What its lists can name (madeBy): a hundred members on one
		// box watching every machine of it held ten thousand pidfds
		// and looked at each every second.
		return in.MadeBy == "" || in.MadeBy == o.self
	}}
	defer w.Stop()
	var confirm <-chan time.Time
	for {
		w.Follow(ctx, o.hosted())
		o.check(ctx, false)
		select {
		case <-ctx.Done():
			return nil
		case <-o.wake:
		case <-again:
			o.check(ctx, false)
			confirm = o.clock.After(stopConfirm)
		case <-confirm:
			confirm = nil
			o.publish(ctx)
		case <-o.clock.After(offerInterval):
		}
	}
}

// stopConfirm is how long after a stop its host publishes its list again.
const stopConfirm = time.Second

// publish checks and publishes at once, changed or not: after a work order
// ran here, so that a list written after its outcome is in KV.
// It returns the index the offer was written at, 0 when it was not.
func (o *offerer) publish(ctx context.Context) uint64 { return o.publishAfter(ctx, nil) }

// publishAfter runs write (a work order's outcome), then publishes at once,
// with no check in between: a check that listed this machine's backends
// before the outcome cannot publish after it, so that the last offer
// published after an outcome has what that outcome made.
func (o *offerer) publishAfter(ctx context.Context, write func()) uint64 {
	o.mu.Lock()
	defer o.mu.Unlock()
	if write != nil {
		write()
	}
	// The next check follows the watches of what this machine now
	// holds: a machine made here is watched from then on.
	defer o.poke()
	return o.checkLocked(ctx, true)
}

// check asks every backend of the description whether it can run here, and
// publishes the answer when it changed or has grown old, or when forced.
func (o *offerer) check(ctx context.Context, force bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.checkLocked(ctx, force)
}

// checkLocked is check, with o.mu held; it returns the index the offer was
// written at, 0 when it was not written.
func (o *offerer) checkLocked(ctx context.Context, force bool) uint64 {
	if o.platform() == nil {
		return 0
	}
	offer := o.ask(ctx)
	o.steadyMemory(&offer)
	stable, _ := json.Marshal(offer.Backends)
	now := o.clock.Now()
	if !force && bytes.Equal(stable, o.last) && now.Sub(o.lastAt) < offerRefresh {
		return 0
	}
	offer.Checked = now
	b, err := json.Marshal(offer)
	if err != nil {
		return 0
	}
	if len(b) > state.MaxOfferSize {
		// More machines than one value holds: offered without the
		// lists, so that placement still works; its machines are then
		// judged by Consul alone.
		o.log.Warn("this machine's lists of machines are too long to publish", telemetry.KeyBytes, len(b), telemetry.KeyMax, state.MaxOfferSize)
		for name, bo := range offer.Backends {
			bo.Listed, bo.Instances = false, nil
			offer.Backends[name] = bo
		}
		if b, err = json.Marshal(offer); err != nil {
			return 0
		}
	}
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	index, err := o.store.PutOffer(pctx, o.self, b)
	if err != nil {
		// A machine made before offers existed has a token that may not
		// write one: said once, not every minute.
		if err.Error() != o.lastErr {
			o.log.Warn("publish this machine's offer of backends", telemetry.KeyError, err)
		}
		o.lastErr = err.Error()
		return 0
	}
	o.lastErr = ""
	if !bytes.Equal(stable, o.last) {
		o.log.Info("offering backends", telemetry.KeyOffered, offer.Offered())
	}
	o.last, o.lastAt = stable, now
	o.lastFree = map[string]uint64{}
	listed := map[string]bool{}
	for name, bo := range offer.Backends {
		o.lastFree[name] = bo.FreeMemory
		for _, in := range bo.Instances {
			listed[in.MachineID] = true
		}
	}
	o.listedMu.Lock()
	o.listed = listed
	o.listedMu.Unlock()
	return index
}

// lists says whether this machine's last published lists name machine id:
// the leader judges by this machine's word only the machines these lists
// name, so only their stops make it publish at once. Members that share a
// backend's scope (one box's local machines, one Docker engine) each see
// every stop there; each publishing twice for every one was a hundred
// writes through the Raft leader at a hundred members, for one death.
func (o *offerer) lists(id string) bool {
	o.listedMu.Lock()
	defer o.listedMu.Unlock()
	return o.listed[id]
}

// listMine lists be's machines this member made, and those whose maker be
// cannot tell (madeBy): with the backend's own filter where it has one.
func (o *offerer) listMine(ctx context.Context, be backends.Backend) ([]backends.Instance, error) {
	if ml, ok := be.(backends.MakerLister); ok {
		return ml.ListMadeBy(ctx, o.self)
	}
	insts, err := be.List(ctx)
	return madeBy(o.self, insts), err
}

// madeBy keeps of insts the machines self made, and those whose maker the
// backend cannot tell. Members sharing a backend's scope (one box's local
// machines, one engine's containers) would each list all of them: a
// hundred hosts listing a hundred machines is 1.8 MB of offers the leader
// reads on every change. The leader judges a machine by its maker's list
// only, and by its own list when the maker is gone.
func madeBy(self string, insts []backends.Instance) []backends.Instance {
	out := insts[:0:0]
	for _, in := range insts {
		if in.MadeBy == "" || in.MadeBy == self {
			out = append(out, in)
		}
	}
	return out
}

// memoryShift is the least change of a backend's free memory that makes
// an offer worth publishing again: a tenth of it, and at least 64 MiB.
// MemAvailable moves a little every second; were every move a change,
// every member would publish its offer at every minute's check, each
// write waking the leader to read every offer again.
func memoryShift(last uint64) uint64 { return max(64<<20, last/10) }

// steadyMemory keeps in offer the free memory last published for each
// backend unless it moved by memoryShift or more, or crossed the backend's
// free-memory floor: placement compares that floor with this figure, so a
// crossing is always news (a host back above it may take the heal's spawn,
// one gone below it must not).
func (o *offerer) steadyMemory(offer *state.Offer) {
	var floors map[string]rules.Backend
	if p := o.platform(); p != nil {
		floors = p.Backends
	}
	for name, bo := range offer.Backends {
		last, ok := o.lastFree[name]
		if !ok || bo.FreeMemory == last {
			continue
		}
		floor := uint64(floors[name].MinFreeMemoryMB) << 20
		crossed := floor > 0 && (last < floor) != (bo.FreeMemory < floor)
		diff := max(bo.FreeMemory, last) - min(bo.FreeMemory, last)
		if last != 0 && bo.FreeMemory != 0 && diff < memoryShift(last) && !crossed {
			bo.FreeMemory = last
			offer.Backends[name] = bo
		}
	}
}

// ask calls every backend's Available, and List where it is available, at
// once: one that hangs costs the check its deadline, not the others their
// answers.
func (o *offerer) ask(ctx context.Context) state.Offer {
	bes := o.backends()
	var hosting map[string]bool
	if o.hosting != nil {
		hosting = o.hosting()
	}
	ctx, cancel := context.WithTimeout(ctx, offerCheckTimeout)
	defer cancel()
	offer := state.Offer{Machine: o.self, Arch: runtime.GOOS + "/" + runtime.GOARCH, Version: o.version, Backends: make(map[string]state.BackendOffer, len(bes))}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for name, be := range bes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			bo := state.BackendOffer{Available: true}
			if name == o.notHere {
				bo = state.BackendOffer{Reason: "this machine was made by it and cannot run its commands (lead = false)"}
			} else if err := be.Available(ctx); err != nil {
				bo = state.BackendOffer{Reason: err.Error()}
			}
			if sc, ok := be.(backends.Scoped); ok && bo.Available {
				bo.Scope, _ = sc.Scope(ctx)
			}
			if d, ok := be.(backends.Detailer); ok && bo.Available {
				bo.Detail = d.Detail(ctx)
			}
			if ar, ok := be.(backends.Archer); ok && bo.Available {
				bo.Arch = ar.MachineArch()
			}
			if mr, ok := be.(backends.MemoryReporter); ok && bo.Available {
				bo.FreeMemory, _ = mr.FreeMemory(ctx)
			}
			if bo.Available && hosting[name] {
				if insts, err := o.listMine(ctx, be); err == nil {
					bo.Listed, bo.Instances = true, insts
					if lv, ok := be.(backends.LocalView); ok {
						bo.LocalOnly = lv.ListsOnlyLocal()
					}
				}
			}
			mu.Lock()
			offer.Backends[name] = bo
			mu.Unlock()
		}()
	}
	wg.Wait()
	if o.metrics != nil {
		o.metrics.BackendOffered.Reset()
		names := make([]string, 0, len(offer.Backends))
		for name := range offer.Backends {
			names = append(names, name)
		}
		sort.Strings(names)
		for _, name := range names {
			v := 0.0
			if offer.Backends[name].Available {
				v = 1
			}
			o.metrics.BackendOffered.WithLabelValues(name).Set(v)
		}
	}
	return offer
}

// hosted returns the backends of the description whose machines this
// machine's offer lists.
func (o *offerer) hosted() map[string]backends.Backend {
	if o.hosting == nil || o.platform() == nil {
		return nil
	}
	names := o.hosting()
	out := map[string]backends.Backend{}
	for name, be := range o.backends() {
		if names[name] {
			out[name] = be
		}
	}
	return out
}
