package rules

import (
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strings"
	"time"
)

// Merged is modules joined in the order they were added: at every level of
// the JSON tree a later module's member replaces an earlier one's string or
// merges into its object, as the original merged its module files. Keys
// keep the order in which they first appeared. Removing a module is merging
// the rest again, which restores whatever it had overridden.
type Merged struct {
	// Modules are the names merged, in order.
	Modules []string
	root    *mnode
}

// Merge joins mods in order, later ones overriding earlier ones.
func Merge(mods []*Module) *Merged {
	m := &Merged{root: &mnode{kids: map[string]*mnode{}}}
	for _, mod := range mods {
		m.Modules = append(m.Modules, mod.Name)
		if mod.root != nil {
			mergeInto(m.root, mod.root)
		}
	}
	return m
}

// mergeInto merges src into dst (both objects), copying what it takes so
// that no module's tree is shared with the merge.
func mergeInto(dst, src *mnode) {
	dst.file, dst.position = src.file, src.position
	for _, k := range src.order {
		s := src.kids[k]
		d, ok := dst.kids[k]
		if !ok {
			dst.order = append(dst.order, k)
		}
		if ok && !d.leaf() && !s.leaf() {
			mergeInto(d, s)
			continue
		}
		dst.kids[k] = clone(s)
	}
}

func clone(n *mnode) *mnode {
	c := &mnode{value: n.value, file: n.file, position: n.position, order: slices.Clone(n.order)}
	if n.kids != nil {
		c.kids = make(map[string]*mnode, len(n.kids))
		for k, v := range n.kids {
			c.kids[k] = clone(v)
		}
	}
	return c
}

// each calls fn for every member of n's object at key path, in order.
func (n *mnode) each(fn func(key string, kid *mnode)) {
	if n == nil {
		return
	}
	for _, k := range n.order {
		fn(k, n.kids[k])
	}
}

func (n *mnode) get(path ...string) *mnode {
	for _, k := range path {
		if n == nil || n.kids == nil {
			return nil
		}
		n = n.kids[k]
	}
	return n
}

func (n *mnode) str(key string) (string, bool) {
	k := n.get(key)
	if k == nil {
		return "", false
	}
	return k.value, true
}

// Package returns the package command of the compute module that makes
// backend (named "<compute type>/<server type>") with its source and ref,
// ok false when no module has one. The source and ref are not checked
// here: the clone that fetches them does.
func (m *Merged) Package(backend string) (command, src, ref string, ok bool) {
	ct, st, _ := strings.Cut(backend, "/")
	var n *mnode
	m.root.get("compute").each(func(mct string, types *mnode) {
		types.each(func(mst string, kid *mnode) {
			if MachineName(mct) == ct && MachineName(mst) == st {
				n = kid
			}
		})
	})
	if command, ok = n.str("package"); !ok {
		return "", "", "", false
	}
	src, _ = n.str("source")
	ref, _ = n.str("ref")
	return command, src, ref, true
}

// Effective is the description p with modules mods applied: what the
// leader plans with and what status shows. The description wins where
// both say something: its own backends and provisioners stay, and the
// modules add what it lacks:
//
//   - compute.<ct>.<st> becomes a backend of type exec named "<ct>/<st>",
//     each command run as ["/bin/sh", "-c", command] in a clone of source
//     (at ref),
//     in the original's contract (setting contract = "ssh": the machine
//     start_instance makes is adopted over SSH);
//     the machine type <st>, when the description has it, may be made on
//     it, after its own backends.
//   - server.<st>.<name> becomes provisioner name of machine type <st>,
//     one step ["/bin/sh", "-c", bootstrap] run in a clone of source (at
//     ref). The
//     original's own provisioner, which installs the Python tool, is
//     skipped.
//   - platform.default.hooks.<event>.<handler> becomes a hook on the event
//     ModuleEvents maps it to, after the description's own hooks, its
//     predicate and command run under /bin/sh -c.
//
// A machine type may name a module's backend ("<ct>/<st>") in its
// backends: it stays where the description put it, and when no module
// provides it the error is a *Error naming the machine type's line.
//
// Notices say what was left out and why; an error (a *ModuleError) lists
// what the merge lacks to be run, such as a compute type without
// start_instance, naming the file and field. p is not changed.
func Effective(p *Platform, mods []*Module, opts Options) (*Platform, []Problem, error) {
	if len(mods) == 0 {
		if err := p.unprovided(); err != nil {
			return nil, nil, err
		}
		return p, nil, nil
	}
	return Merge(mods).Apply(p, opts)
}

// unprovided is the error for the backends p's machine types name for a
// module to provide (see IsModuleBackendName) that no module does: a
// *Error naming the line of each machine type, nil when all are there.
func (p *Platform) unprovided() error {
	var problems []Problem
	for _, ref := range p.ModuleRefs {
		if _, ok := p.Backends[ref.Backend]; !ok {
			problems = append(problems, ref.Problem)
		}
	}
	if len(problems) > 0 {
		return &Error{Problems: problems}
	}
	return nil
}

// Apply is Effective for modules already merged.
func (m *Merged) Apply(p *Platform, opts Options) (*Platform, []Problem, error) {
	out := *p
	out.Backends = maps.Clone(p.Backends)
	out.Machines = maps.Clone(p.Machines)
	out.Hooks = slices.Clone(p.Hooks)
	a := &applier{out: &out, opts: opts}
	m.root.get("compute").each(func(ct string, types *mnode) {
		types.each(func(st string, n *mnode) { a.compute(ct, st, n) })
	})
	m.root.get("server").each(func(st string, provs *mnode) {
		provs.each(func(name string, n *mnode) { a.server(st, name, n) })
	})
	m.root.get("platform").each(func(pt string, n *mnode) {
		if pt != ModulePlatformType {
			a.notice(n, "platform."+pt, "not used: only the hooks of platform type %q run, as in the original", ModulePlatformType)
			return
		}
		n.get("hooks").each(func(ev string, handlers *mnode) {
			handlers.each(func(name string, h *mnode) { a.hook(ev, name, h) })
		})
	})
	if len(a.problems) > 0 {
		return nil, a.notices, &ModuleError{Problems: a.problems}
	}
	if err := out.unprovided(); err != nil {
		return nil, a.notices, err
	}
	return &out, a.notices, nil
}

type applier struct {
	out      *Platform
	opts     Options
	notices  []Problem
	problems []Problem
	// named is each name a module's type goes by here, by what kind of
	// type it is, and the original name it came from.
	named map[string]string
}

// MachineName is the name a module's compute or server type goes by here.
// The original took folder names (x86_32, Headless, debian.12); ours are
// DNS labels, because they name machines, Consul nodes and backends. It is
// lower-cased, each run of other characters becomes one hyphen, with none
// at either end, cut to 63 characters; "" when nothing is left.
func MachineName(s string) string {
	var b strings.Builder
	dash := false
	for _, r := range strings.ToLower(s) {
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' {
			if dash && b.Len() > 0 {
				b.WriteByte('-')
			}
			dash = false
			b.WriteRune(r)
			continue
		}
		dash = true
	}
	out := b.String()
	if len(out) > 63 {
		out = strings.TrimRight(out[:63], "-")
	}
	return out
}

// name is the name a module's type of the given kind goes by here
// (MachineName), with a notice when it is not the module's own; ok false
// when it cannot have one, or when another type of the kind already has it
// (a problem each).
func (a *applier) name(n *mnode, field, kind, orig string) (string, bool) {
	m := MachineName(orig)
	if m == "" {
		a.problem(n, field, "%s %q has no letter or digit to name a machine type by", kind, orig)
		return "", false
	}
	if a.named == nil {
		a.named = map[string]string{}
	}
	key := kind + "\x00" + m
	prev, seen := a.named[key]
	switch {
	case seen && prev != orig:
		a.problem(n, field, "%s %q and %q would both be named %q here: rename one of them", kind, prev, orig, m)
		return "", false
	case !seen && m != orig:
		a.notice(n, field, "%s %q is named %q here: machine types and backends are named by DNS labels", kind, orig, m)
	}
	a.named[key] = orig
	return m, true
}

func (a *applier) notice(n *mnode, field, format string, args ...any) {
	a.notices = append(a.notices, Problem{File: n.file, Line: n.line, Column: n.col, Field: field, Message: fmt.Sprintf(format, args...)})
}

func (a *applier) problem(n *mnode, field, format string, args ...any) {
	a.problems = append(a.problems, Problem{File: n.file, Line: n.line, Column: n.col, Field: field, Message: fmt.Sprintf(format, args...)})
}

// sh is how the original ran its shell strings.
func sh(s string) []string { return []string{"/bin/sh", "-c", s} }

func (a *applier) compute(ct, st string, n *mnode) {
	field := "compute." + ct + "." + st
	ct, okC := a.name(n, field, "compute type", ct)
	st, okS := a.name(n, field, "server type", st)
	if !okC || !okS {
		return
	}
	name := ct + "/" + st
	if _, ok := a.out.Backends[name]; ok {
		a.notice(n, field, "the description's backend %q wins over the module's", name)
		return
	}
	if !known(a.opts.BackendTypes, ExecType) {
		a.problem(n, field, "the exec backend is not available here (known: %s)", knownList(a.opts.BackendTypes))
		return
	}
	if a.sources(n, field) {
		return
	}
	// Every original compute module makes a machine root can SSH into,
	// which the backend adopts: the exec backend's "ssh" contract.
	be := Backend{Name: name, Type: ExecType, Settings: map[string]string{"contract": "ssh"}, Commands: map[string][]string{}}
	n.each(func(k string, v *mnode) {
		switch k {
		case "source", "ref":
			be.Settings[k] = v.value
		case "package":
			// Run by `raptiformica package`, not by the backend.
		default:
			be.Commands[k] = sh(v.value)
		}
	})
	bad := false
	if a.opts.CheckBackend != nil {
		for _, fp := range a.opts.CheckBackend(be) {
			bad = true
			at, sub := n, ""
			name, ok := strings.CutPrefix(fp.Field, "commands ")
			if !ok {
				name, ok = strings.CutPrefix(fp.Field, "settings ")
			}
			if ok {
				sub = "." + name
				if kid := n.get(name); kid != nil {
					at = kid
				}
			}
			a.problem(at, field+sub, "%s", fp.Message)
		}
	}
	if bad {
		return
	}
	a.out.Backends[name] = be
	mt, ok := a.out.Machines[st]
	if !ok {
		a.notice(n, field, "no machine type %q in the description: backend %q is added but no machine type is made on it", st, name)
		return
	}
	if !slices.Contains(mt.Backends, name) {
		mt.Backends = append(slices.Clone(mt.Backends), name)
		a.out.Machines[st] = mt
	}
}

// sources reports, as problems, what is wrong with the source and ref of
// n, and whether anything is: a module stored before sources were checked
// is refused here, when it would run.
func (a *applier) sources(n *mnode, field string) bool {
	probs := sourceProblems(n)
	for _, p := range probs {
		a.problem(p.at, field+"."+p.field, "%v", p.err)
	}
	return len(probs) > 0
}

// isOriginalSelf reports whether a provisioner is the original's own,
// which installed the Python raptiformica on every machine: the agent is
// this program now.
func isOriginalSelf(name string, n *mnode) bool {
	if name != "raptiformica" {
		return false
	}
	src, _ := n.str("source")
	boot, _ := n.str("bootstrap")
	return strings.Contains(src, "vdloo/raptiformica") || src == "" && strings.Contains(boot, "deploy.py")
}

func (a *applier) server(st, name string, n *mnode) {
	field := "server." + st + "." + name
	if isOriginalSelf(name, n) {
		a.notice(n, field, "skipped: it installs the original Python raptiformica, which this agent replaces")
		return
	}
	st, ok := a.name(n, field, "server type", st)
	if !ok {
		return
	}
	boot, ok := n.str("bootstrap")
	if !ok || strings.TrimSpace(boot) == "" {
		a.problem(n, field+".bootstrap", "missing: a provisioner needs the shell command that installs it")
		return
	}
	mt, ok := a.out.Machines[st]
	if !ok {
		a.notice(n, field, "no machine type %q in the description: the provisioner applies to no machine", st)
		return
	}
	if slices.ContainsFunc(mt.Provisioners, func(p Provisioner) bool { return p.Name == name }) {
		a.notice(n, field, "the description's provisioner %q of machine type %q wins over the module's", name, st)
		return
	}
	if a.sources(n, field) {
		return
	}
	src, _ := n.str("source")
	ref, _ := n.str("ref")
	mt.Provisioners = append(slices.Clone(mt.Provisioners), Provisioner{Name: name, Source: src, Ref: ref, Steps: [][]string{sh(boot)}})
	a.out.Machines[st] = mt
}

// originalScript finds a command that runs one of the original Python
// tool's own scripts, as its built-in platform hooks did.
var originalScript = regexp.MustCompile(`\bbin/raptiformica_[a-z_]+\.py\b`)

func (a *applier) hook(ev, name string, n *mnode) {
	field := "platform." + ModulePlatformType + ".hooks." + ev + "." + name
	cmd, ok := n.str("command")
	if !ok || strings.TrimSpace(cmd) == "" {
		a.problem(n, field+".command", "missing: a handler needs the shell command it runs")
		return
	}
	if script := originalScript.FindString(cmd); script != "" {
		a.notice(n, field, "skipped: it runs the original Python tool's %s, whose work this agent does itself (reaping gone machines, rejoining members)", script)
		return
	}
	h := Hook{Event: ModuleEvents[ev], Command: sh(cmd), Timeout: 30 * time.Second}
	if h.Event == "cluster_change" {
		h.Interval = DefaultHookInterval
	}
	if pred, ok := n.str("predicate"); ok && strings.TrimSpace(pred) != "" {
		h.Predicate = sh(pred)
	}
	a.out.Hooks = append(a.out.Hooks, h)
}
