package daemon

import (
	"bytes"
	"context"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"

	"github.com/raptiformica/raptiformica/internal/fsutil"
	"github.com/raptiformica/raptiformica/internal/kvschema"
	"github.com/raptiformica/raptiformica/internal/telemetry"
	"github.com/raptiformica/raptiformica/internal/watch"
	"github.com/raptiformica/raptiformica/rules"
)

// moduleWatch follows the modules the cluster keeps (`module add`) with a
// blocking query and gives the mirror the effective platform: the
// description with them applied (rules.Effective), which every component
// plans and runs hooks with. It keeps the modules on disk beside the
// mirrored description (modules.json), so that a restarted node, or the
// last one standing, runs with them and writes them back into a KV that
// lost them.
//
// Modules that do not load (stored by other means than `module add`) are
// reported and ignored: the node keeps the last good ones. A merge that
// cannot be applied to the description leaves the description as it is.
type moduleWatch struct {
	path  string // modules.json in the mirror's folder
	store *kvschema.Store
	parse rules.Options
	log   hclog.Logger
	// changed is called when the modules change, so that the control
	// loop looks again at once.
	changed func()
	// leading, when set, says whether this node leads: the leader reads
	// the modules consistently (forwardKey).
	leading func() bool

	keyOnce sync.Once
	fwd     *forwardKey // see key

	mu       sync.Mutex // guards the fields below
	mods     []*rules.Module
	src      []byte // mods' stored form, as KV holds it
	seq      uint64 // raised on every change of mods
	cacheFor *rules.Platform
	cacheSeq uint64
	cache    *rules.Platform
	said     string // the last merge problem logged, so that it is said once
}

const modulesFile = "modules.json"

// load reads the modules this node last mirrored, if any.
func (w *moduleWatch) load() {
	b, err := readMirrorFile(w.path)
	if b == nil || err != nil {
		if err != nil {
			w.log.Error("modules mirror unusable; running without modules until KV's arrive", telemetry.KeyError, err)
		}
		return
	}
	mods, err := rules.DecodeModules(w.path, b)
	if err != nil {
		w.log.Error("modules mirror unusable; running without modules until KV's arrive", telemetry.KeyError, err)
		return
	}
	w.set(mods, b)
}

func (w *moduleWatch) set(mods []*rules.Module, src []byte) {
	w.mu.Lock()
	w.mods, w.src = mods, src
	w.seq++
	w.mu.Unlock()
}

// Run watches the modules in KV, read stale but only ever moving forward
// (forwardKey); it blocks until ctx ends and returns nil.
func (w *moduleWatch) Run(ctx context.Context) error {
	key := w.key()
	query := func(q *api.QueryOptions) (uint64, bool, error) {
		return key.read(ctx, q, w.take, func() { w.reseed(ctx) })
	}
	_ = watch.Loop(ctx, 5*time.Minute, query, func() {}, func(err error) {
		w.log.Warn("watch modules", telemetry.KeyError, err)
	})
	return nil
}

// key is the modules' forwardKey, made on first use.
func (w *moduleWatch) key() *forwardKey {
	w.keyOnce.Do(func() {
		w.fwd = &forwardKey{what: kvschema.Modules, get: w.store.Modules, leading: w.leading, log: w.log}
	})
	return w.fwd
}

// confirm reads the modules from the Raft leader and takes them when they
// are not the ones applied: a new leader calls it before its first plan.
func (w *moduleWatch) confirm(ctx context.Context) {
	if _, err := w.key().confirm(ctx, w.take); err != nil {
		w.log.Debug("confirm modules", telemetry.KeyError, err)
	}
}

// take applies the modules of pair, an answer newer than the ones applied
// (forwardKey), unless they are the same or do not load.
func (w *moduleWatch) take(pair *api.KVPair) {
	w.mu.Lock()
	same := bytes.Equal(pair.Value, w.src)
	w.mu.Unlock()
	if same {
		return
	}
	mods, err := rules.DecodeModules(kvschema.ModulesSource, pair.Value)
	if err != nil {
		w.log.Error("modules in KV rejected; keeping the last good ones", telemetry.KeyError, err)
		return
	}
	if err := fsutil.WriteFileAtomic(w.path, pair.Value, 0o600); err != nil {
		w.log.Error("mirror modules", telemetry.KeyError, err)
	}
	w.set(mods, pair.Value)
	w.log.Info("modules loaded", telemetry.KeyModules, len(mods))
	if w.changed != nil {
		w.changed()
	}
}

// reseed writes this node's modules into a KV that has none: it lost its
// state (a removal stores an empty list, never deletes the key). A node
// whose token may not write them leaves it to one that may.
func (w *moduleWatch) reseed(ctx context.Context) {
	w.mu.Lock()
	src, n := w.src, len(w.mods)
	w.mu.Unlock()
	if n == 0 {
		return
	}
	if ok, err := w.store.CASModules(ctx, src, 0); err != nil {
		w.log.Debug("re-seed modules", telemetry.KeyError, err)
	} else if ok {
		w.log.Info("seeded an empty KV with this node's modules")
	}
}

// apply is p with the modules applied, p itself when there are none or
// they cannot be applied (said once in the log). The result is kept until
// p or the modules change: every pass and every hook asks for it.
func (w *moduleWatch) apply(p *rules.Platform) *rules.Platform {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.mods) == 0 || p == nil {
		return p
	}
	if w.cacheFor == p && w.cacheSeq == w.seq {
		return w.cache
	}
	eff, notices, err := rules.Effective(p, w.mods, w.parse)
	said := ""
	if err != nil {
		said = err.Error()
		eff = p
	}
	if said != w.said && said != "" {
		w.log.Error("modules cannot be applied to the description; running it without them", telemetry.KeyError, err)
	}
	if err == nil && (w.cacheFor != p || w.cacheSeq != w.seq) {
		for _, n := range notices {
			w.log.Info("module notice", telemetry.KeyNotice, n.String())
		}
	}
	w.said = said
	w.cacheFor, w.cacheSeq, w.cache = p, w.seq, eff
	return eff
}
