package backends

import (
	"fmt"
	"sort"

	"github.com/raptiformica/raptiformica/rules"
)

// Registry maps backend type names to factories.
type Registry map[string]Factory

// NewRegistry builds a registry from name/factory pairs and fails on a
// duplicate name, so that two plugins never silently shadow each other.
func NewRegistry(entries ...RegistryEntry) (Registry, error) {
	r := Registry{}
	for _, e := range entries {
		if _, dup := r[e.Type]; dup {
			return nil, fmt.Errorf("backend type %q registered twice", e.Type)
		}
		r[e.Type] = e.Factory
	}
	return r, nil
}

// RegistryEntry is one backend type and its factory.
type RegistryEntry struct {
	Type    string
	Factory Factory
}

// Types returns the registered type names, sorted.
func (r Registry) Types() []string {
	names := make([]string, 0, len(r))
	for n := range r {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// New builds a backend the platform description declares.
func (r Registry) New(spec rules.Backend, env Env) (Backend, error) {
	f, ok := r[spec.Type]
	if !ok {
		return nil, fmt.Errorf("backend %q: unknown type %q (known: %v)", spec.Name, spec.Type, r.Types())
	}
	cfg := Config{Name: spec.Name, Settings: spec.Settings, Commands: spec.Commands}
	b, err := f(cfg, env)
	if err != nil {
		return nil, fmt.Errorf("backend %q: %w", cfg.Name, err)
	}
	return b, nil
}
