package backends

import (
	"fmt"
	"sort"
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
func (r Registry) New(cfg Config, env Env) (Backend, error) {
	f, ok := r[cfg.Type]
	if !ok {
		return nil, fmt.Errorf("backend %q: unknown type %q (known: %v)", cfg.Name, cfg.Type, r.Types())
	}
	b, err := f(cfg, env)
	if err != nil {
		return nil, fmt.Errorf("backend %q: %w", cfg.Name, err)
	}
	return b, nil
}
