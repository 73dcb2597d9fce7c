package backends

import (
	"fmt"
	"sort"
)

// Registry maps backend type names to their entries.
type Registry map[string]RegistryEntry

// NewRegistry builds a registry and fails on a duplicate name, so that two
// plugins never silently shadow each other.
func NewRegistry(entries ...RegistryEntry) (Registry, error) {
	r := Registry{}
	for _, e := range entries {
		if _, dup := r[e.Type]; dup {
			return nil, fmt.Errorf("backend type %q registered twice", e.Type)
		}
		r[e.Type] = e
	}
	return r, nil
}

// RegistryEntry is one backend type: its factory and, for a type that
// takes more than settings, the check of what it takes.
type RegistryEntry struct {
	Type    string
	Factory Factory
	// Check reports what is wrong in a declaration of this type without
	// building the backend, so that the description's parser can name the
	// file, line and field. Nil: the type takes settings only, which its
	// factory checks.
	Check func(Config) []Problem
}

// Problem is one thing wrong in a backend's declaration: the field under
// the backend ("commands start_instance") and why.
type Problem struct {
	Field, Message string
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

// Check reports what is wrong in a declaration, as far as its type can
// tell without building it. An unknown type is the caller's to report.
func (r Registry) Check(cfg Config) []Problem {
	e, ok := r[cfg.Type]
	if !ok {
		return nil
	}
	if e.Check != nil {
		return e.Check(cfg)
	}
	if len(cfg.Commands) > 0 {
		return []Problem{{Field: "commands", Message: fmt.Sprintf("a backend of type %q runs no commands; it takes settings only", cfg.Type)}}
	}
	return nil
}

// New builds a backend the platform description declares.
func (r Registry) New(cfg Config, env Env) (Backend, error) {
	e, ok := r[cfg.Type]
	if !ok {
		return nil, fmt.Errorf("backend %q: unknown type %q (known: %v)", cfg.Name, cfg.Type, r.Types())
	}
	b, err := e.Factory(cfg, env)
	if err != nil {
		return nil, fmt.Errorf("backend %q: %w", cfg.Name, err)
	}
	return b, nil
}
