package reconcile

import (
	"github.com/raptiformica/raptiformica/backends"
	"github.com/raptiformica/raptiformica/internal/kvschema"
	"github.com/raptiformica/raptiformica/rules"
)

// NewBackends builds every backend the description declares, by name, with
// env and, where a cluster is reachable (store is not nil), each backend's
// own folder of the KV. A backend that cannot be built is in errs instead,
// so that one wrong setting does not hide the others.
func NewBackends(reg backends.Registry, p *rules.Platform, env backends.Env, store *kvschema.Store) (bes map[string]backends.Backend, errs map[string]error) {
	bes, errs = map[string]backends.Backend{}, map[string]error{}
	for name, spec := range p.Backends {
		e := env
		if store != nil {
			e.Claims, e.HostKeys = store.PoolClaims(name), store.TrustedHostKeys()
		}
		cfg := backends.Config{Name: spec.Name, Type: spec.Type, Settings: spec.Settings, Commands: spec.Commands}
		b, err := reg.New(cfg, e)
		if err != nil {
			errs[name] = err
			continue
		}
		bes[name] = b
	}
	return bes, errs
}
