package daemon

import (
	"context"
	"sync"

	"github.com/hashicorp/go-hclog"

	"github.com/raptiformica/raptiformica/backends"
	"github.com/raptiformica/raptiformica/internal/kvschema"
	"github.com/raptiformica/raptiformica/internal/telemetry"
	"github.com/raptiformica/raptiformica/reconcile"
	"github.com/raptiformica/raptiformica/rules"
)

// backendSet holds the backends of the current description, built once per
// description, for the control loop and the quorum watch.
type backendSet struct {
	registry backends.Registry
	platform func() *rules.Platform
	// env is what every backend is given; its Cluster is the description's.
	env   backends.Env
	store *kvschema.Store
	log   hclog.Logger

	mu       sync.Mutex // guards bes and builtFor
	bes      map[string]backends.Backend
	builtFor *rules.Platform // the description bes were built from
}

// get returns the backends of the current description, which must be set.
func (s *backendSet) get() map[string]backends.Backend {
	p := s.platform()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.builtFor == p && s.bes != nil {
		return s.bes
	}
	env := s.env
	env.Cluster = p.Cluster
	bes, errs := reconcile.NewBackends(s.registry, p, env, s.store)
	for name, err := range errs {
		s.log.Error("backend unusable", telemetry.KeyBackend, name, telemetry.KeyError, err)
		bes[name] = brokenBackend{err: err}
	}
	s.bes, s.builtFor = bes, p
	return bes
}

// brokenBackend stands in for a backend whose settings are wrong, so that the
// planner sees it as unavailable and says why.
type brokenBackend struct{ err error }

var _ backends.Backend = brokenBackend{}

func (b brokenBackend) Available(context.Context) error { return b.err }
func (b brokenBackend) Spawn(context.Context, backends.Spec) (backends.Instance, error) {
	return backends.Instance{}, b.err
}
func (b brokenBackend) Destroy(context.Context, string) error             { return b.err }
func (b brokenBackend) List(context.Context) ([]backends.Instance, error) { return nil, b.err }
