package reconcile

import (
	"github.com/raptiformica/raptiformica/backends"
	"github.com/raptiformica/raptiformica/internal/kvschema"
	"github.com/raptiformica/raptiformica/rules"
)

// The KV's folders are what backends keep shared state in.
var _ backends.Store = (*kvschema.Folder)(nil)

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
		b, err := reg.New(BackendConfig(spec), e)
		if err != nil {
			errs[name] = err
			continue
		}
		bes[name] = b
	}
	return bes, errs
}

// ParseOptions are the options a description is parsed with where reg's
// backends run: the registered types, and each type's check of its
// declarations, so that a wrong command is refused with its file and line
// rather than when the leader builds the backend.
func ParseOptions(reg backends.Registry) rules.Options {
	return rules.Options{
		BackendTypes: reg.Types(),
		CheckBackend: func(b rules.Backend) []rules.FieldProblem {
			var out []rules.FieldProblem
			for _, p := range reg.Check(BackendConfig(b)) {
				out = append(out, rules.FieldProblem{Field: p.Field, Message: p.Message})
			}
			return out
		},
	}
}

// BackendConfig is a declared backend as its factory takes it.
func BackendConfig(b rules.Backend) backends.Config {
	return backends.Config{Name: b.Name, Type: b.Type, Settings: b.Settings, Commands: b.Commands}
}
