package rules

import (
	"bytes"
	"fmt"
	"net/netip"
	"net/url"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclparse"
	"github.com/hashicorp/hcl/v2/hclsyntax"
	"github.com/zclconf/go-cty/cty"
	"github.com/zclconf/go-cty/cty/convert"
	"github.com/zclconf/go-cty/cty/gocty"

	"github.com/raptiformica/raptiformica/internal/arch"
	"github.com/raptiformica/raptiformica/internal/endpoint"
	"github.com/raptiformica/raptiformica/internal/source"
)

// Problem is one thing wrong with a description, located in its source.
type Problem struct {
	File   string `json:"file"`
	Line   int    `json:"line,omitempty"`
	Column int    `json:"column,omitempty"`
	// Field is the path of the offending field, such as `machine "web" min`.
	Field   string `json:"field,omitempty"`
	Message string `json:"message"`
}

func (p Problem) String() string {
	loc := p.File
	if p.Line > 0 {
		loc = fmt.Sprintf("%s:%d,%d", p.File, p.Line, p.Column)
	}
	if p.Field == "" {
		return loc + ": " + p.Message
	}
	return fmt.Sprintf("%s: %s: %s", loc, p.Field, p.Message)
}

// Error lists every problem found in a description. Parse returns it so that
// a user fixes all of them in one round.
type Error struct {
	Problems []Problem
}

func (e *Error) Error() string {
	lines := make([]string, len(e.Problems))
	for i, p := range e.Problems {
		lines[i] = p.String()
	}
	if len(lines) == 1 {
		return "invalid platform description: " + lines[0]
	}
	return fmt.Sprintf("invalid platform description (%d problems):\n  %s", len(lines), strings.Join(lines, "\n  "))
}

// Options tune validation to what the caller can run.
type Options struct {
	// BackendTypes are the backend implementations available; a backend of
	// another type is a problem. Nil accepts any type.
	BackendTypes []string
	// CheckBackend checks a backend's settings and commands as its type
	// reads them, so that each problem is reported with the file, line and
	// field. Nil checks nothing.
	CheckBackend func(Backend) []FieldProblem
}

var topSchema = &hcl.BodySchema{
	Attributes: []hcl.AttributeSchema{{Name: "cluster"}, {Name: "mesh"}, {Name: "mesh_port"}, {Name: "mesh_peers"}, {Name: "mesh_max_links"}},
	Blocks: []hcl.BlockHeaderSchema{
		{Type: "policy"},
		{Type: "backend", LabelNames: []string{"name"}},
		{Type: "compute", LabelNames: []string{"type", "server"}},
		{Type: "machine", LabelNames: []string{"name"}},
		{Type: "hook", LabelNames: []string{"event"}},
	},
}

var policySchema = &hcl.BodySchema{Attributes: []hcl.AttributeSchema{
	{Name: "max_concurrent_spawns"}, {Name: "cooldown"}, {Name: "backoff_initial"},
	{Name: "backoff_max"}, {Name: "provision_timeout"}, {Name: "grace_period"},
	{Name: "max_unhealthy"}, {Name: "resync_interval"}, {Name: "quorum_lost_after"},
	{Name: "recover_on_evidence"},
}}

var backendSchema = &hcl.BodySchema{Attributes: []hcl.AttributeSchema{{Name: "type"}, {Name: "settings"}, {Name: "commands"}, {Name: "max_per_host"}, {Name: "min_free_memory_mb"}}}

var machineSchema = &hcl.BodySchema{
	Attributes: []hcl.AttributeSchema{
		{Name: "min", Required: true}, {Name: "max"}, {Name: "consul_server"}, {Name: "backends"}, {Name: "bootstrap"},
		{Name: "ready_after_provision"}, {Name: "priority"}, {Name: "hosts"},
		{Name: "per_host"}, {Name: "fill"}, {Name: "spares"}, {Name: "archs"},
	},
	Blocks: []hcl.BlockHeaderSchema{{Type: "provisioner", LabelNames: []string{"name"}}, {Type: "scale"}},
}

var scaleSchema = &hcl.BodySchema{Attributes: []hcl.AttributeSchema{
	{Name: "signal", Required: true}, {Name: "query"}, {Name: "prometheus"}, {Name: "token_file"}, {Name: "service"}, {Name: "check"},
	{Name: "target", Required: true}, {Name: "interval"}, {Name: "scale_up_cooldown"}, {Name: "scale_down_cooldown"}, {Name: "scale_down_after"},
}}

var provisionerSchema = &hcl.BodySchema{Attributes: []hcl.AttributeSchema{{Name: "source"}, {Name: "ref"}, {Name: "steps", Required: true}, {Name: "timeout"}}}

var hookSchema = &hcl.BodySchema{Attributes: []hcl.AttributeSchema{{Name: "command", Required: true}, {Name: "timeout"}, {Name: "predicate"}, {Name: "interval"}}}

// DefaultPolicy is the policy used for every field a description leaves out.
var DefaultPolicy = Policy{
	MaxConcurrentSpawns: 2,
	Cooldown:            2 * time.Second,
	BackoffInitial:      5 * time.Second,
	BackoffMax:          2 * time.Minute,
	ProvisionTimeout:    2 * time.Minute,
	GracePeriod:         20 * time.Second,
	ResyncInterval:      10 * time.Second,
	QuorumLostAfter:     30 * time.Second,
	RecoverOnEvidence:   true,
}

// ParseFile is Parse for a file on disk.
func ParseFile(filename string, opts Options) (*Platform, error) {
	src, err := readFile(filename)
	if err != nil {
		return nil, err
	}
	return Parse(filename, src, opts)
}

// Parse reads a description in HCL, or in JSON when the name ends in ".json"
// or the text starts with "{", and validates it. On any problem it returns an
// *Error listing all of them, and no Platform.
func Parse(filename string, src []byte, opts Options) (*Platform, error) {
	if len(src) > MaxDescriptionSize {
		return nil, &Error{Problems: []Problem{{File: filename, Message: fmt.Sprintf("the description is %d bytes, more than the %d a description may be", len(src), MaxDescriptionSize)}}}
	}
	p := hclparse.NewParser()
	var f *hcl.File
	var diags hcl.Diagnostics
	if strings.HasSuffix(filename, ".json") || bytes.HasPrefix(bytes.TrimSpace(src), []byte("{")) {
		f, diags = p.ParseJSON(src, filename)
	} else {
		f, diags = p.ParseHCL(src, filename)
	}
	d := &decoder{file: filename}
	d.addDiags(diags)
	if f == nil || diags.HasErrors() {
		return nil, d.err()
	}
	if body, ok := f.Body.(*hclsyntax.Body); ok {
		if d.literalOnly(body); len(d.problems) > 0 {
			return nil, d.err()
		}
	}
	plat := d.platform(f.Body, opts)
	if len(d.problems) > 0 {
		return nil, d.err()
	}
	plat.Source = append([]byte(nil), src...)
	plat.Filename = filename
	return plat, nil
}

// decoder collects problems while walking a description.
type decoder struct {
	file     string
	problems []Problem
}

func (d *decoder) err() error {
	if len(d.problems) == 0 {
		return nil
	}
	return &Error{Problems: d.problems}
}

func (d *decoder) at(rng hcl.Range, field, format string, args ...any) {
	file := rng.Filename
	if file == "" {
		file = d.file
	}
	d.problems = append(d.problems, Problem{File: file, Line: rng.Start.Line, Column: rng.Start.Column, Field: field, Message: fmt.Sprintf(format, args...)})
}

func (d *decoder) addDiags(diags hcl.Diagnostics) {
	for _, diag := range diags {
		if diag.Severity != hcl.DiagError {
			continue
		}
		msg := diag.Summary
		if diag.Detail != "" {
			msg += ": " + diag.Detail
		}
		if diag.Subject != nil {
			d.at(*diag.Subject, "", "%s", msg)
		} else {
			d.problems = append(d.problems, Problem{File: d.file, Message: msg})
		}
	}
}

func (d *decoder) platform(body hcl.Body, opts Options) *Platform {
	content, diags := body.Content(topSchema)
	d.addDiags(diags)
	plat := &Platform{
		Cluster:  "raptiformica",
		Policy:   DefaultPolicy,
		Backends: map[string]Backend{},
		Machines: map[string]MachineType{},
		Mesh:     Mesh{Mode: MeshNone, Port: DefaultMeshPort},
	}
	d.mesh(content.Attributes, &plat.Mesh)
	if a, ok := content.Attributes["cluster"]; ok {
		if s, ok := d.str(a, "cluster"); ok {
			d.name(a.Expr.Range(), "cluster", s)
			plat.Cluster = s
		}
	}
	policies := 0
	seen := map[string]hcl.Range{}
	unique := func(b *hcl.Block) bool {
		key := b.Type + " " + b.Labels[0]
		if prev, dup := seen[key]; dup {
			d.at(b.DefRange, fmt.Sprintf("%s %q", b.Type, b.Labels[0]), "declared twice (first at line %d)", prev.Start.Line)
			return false
		}
		seen[key] = b.DefRange
		return true
	}
	var machineRanges = map[string]*hcl.Block{}
	var serverMinRange *hcl.Range
	serverMinKnown := true
	for _, b := range content.Blocks {
		if b.Type != "hook" { // a hook's label is an event
			for i, l := range b.Labels {
				d.name(b.LabelRanges[i], b.Type, l)
			}
		}
		switch b.Type {
		case "policy":
			policies++
			if policies > 1 {
				d.at(b.DefRange, "policy", "declared twice; merge the two blocks")
				continue
			}
			d.policy(b, &plat.Policy)
		case "backend":
			if unique(b) {
				plat.Backends[b.Labels[0]] = d.backend(b, opts)
			}
		case "compute":
			be := d.compute(b, opts)
			if prev, dup := seen["backend "+be.Name]; dup {
				d.at(b.DefRange, fmt.Sprintf("compute %q %q", b.Labels[0], b.Labels[1]), "backend %q declared twice (first at line %d)", be.Name, prev.Start.Line)
				continue
			}
			seen["backend "+be.Name] = b.DefRange
			plat.Backends[be.Name] = be
		case "machine":
			if unique(b) {
				m, minRange, minOK := d.machine(b)
				plat.Machines[m.Name] = m
				machineRanges[m.Name] = b
				if m.ConsulServer {
					serverMinKnown = serverMinKnown && minOK
					if serverMinRange == nil {
						serverMinRange = &minRange
					}
				}
			}
		case "hook":
			plat.Hooks = append(plat.Hooks, d.hook(b))
		}
	}

	// Cross-references, once every block is known.
	if len(plat.Machines) == 0 {
		d.at(body.MissingItemRange(), "machine", "at least one machine type is required")
	}
	for _, name := range plat.MachineNames() {
		m := plat.Machines[name]
		for _, h := range m.Hosts {
			if _, ok := plat.Machines[h]; !ok {
				d.at(machineRanges[name].DefRange, fmt.Sprintf("machine %q hosts", name), "machine type %q is not declared (the description has %s)", h, strings.Join(plat.MachineNames(), ", "))
			}
		}
		if len(m.Backends) == 0 {
			m.Backends = []string{defaultBackend(plat)}
			plat.Machines[name] = m
		}
		for _, bn := range m.Backends {
			if _, ok := plat.Backends[bn]; ok {
				continue
			}
			if known(opts.BackendTypes, bn) {
				// A built-in backend may be named without a block of its own.
				plat.Backends[bn] = Backend{Name: bn, Type: bn, Settings: map[string]string{}}
				continue
			}
			rng, field := machineRanges[name].DefRange, fmt.Sprintf("machine %q backends", name)
			if IsModuleBackendName(bn) {
				// A compute module may provide it: modules are applied
				// after parsing (Effective), which reports it there,
				// at this line, when none does.
				file := rng.Filename
				if file == "" {
					file = d.file
				}
				plat.ModuleRefs = append(plat.ModuleRefs, ModuleRef{Backend: bn, Problem: Problem{File: file, Line: rng.Start.Line, Column: rng.Start.Column, Field: field,
					Message: fmt.Sprintf("backend %q is not declared, and no module provides it (compute.<type>.<server> in a module makes backend \"<type>/<server>\")", bn)}})
				continue
			}
			d.at(rng, field, "backend %q is not declared", bn)
		}
	}
	servers := plat.ServerCount()
	switch {
	case len(plat.Machines) == 0 || !serverMinKnown:
		// The count is unknown; the problem with min is already reported.
	case serverMinRange == nil:
		d.at(body.MissingItemRange(), "consul_server", "no machine type is a Consul server; set consul_server = true on one")
	case servers == 0:
		d.at(*serverMinRange, "consul_server", "the Consul server types ask for no servers; a cluster needs at least one")
	case servers%2 == 0:
		d.at(*serverMinRange, "consul_server", "the Consul server types ask for %d servers in all; an even count adds no fault tolerance, use an odd one", servers)
	}
	if plat.Policy.MaxUnhealthy == 0 {
		total := 0
		for _, m := range plat.Machines {
			total += m.Min
		}
		plat.Policy.MaxUnhealthy = max(1, total/2)
	}
	return plat
}

func defaultBackend(p *Platform) string {
	if len(p.Backends) == 1 {
		for n := range p.Backends {
			return n
		}
	}
	return "local"
}

func known(list []string, s string) bool {
	if list == nil {
		return s == "local"
	}
	for _, k := range list {
		if k == s {
			return true
		}
	}
	return false
}

func (d *decoder) mesh(attrs hcl.Attributes, m *Mesh) {
	if a := attrs["mesh"]; a != nil {
		if s, ok := d.str(a, "mesh"); ok {
			if s != MeshOverlay && s != MeshNone {
				d.at(a.Expr.Range(), "mesh", "must be %q (the overlay) or %q (the machines' own network), got %q", MeshOverlay, MeshNone, s)
			}
			m.Mode = s
		}
	}
	if a := attrs["mesh_port"]; a != nil {
		d.intIn(a, "mesh_port", &m.Port, 1, 65535)
	}
	if a := attrs["mesh_peers"]; a != nil {
		if d.decode(a, "mesh_peers", cty.List(cty.String), &m.Peers) {
			elems, _ := hcl.ExprList(a.Expr)
			for i, p := range m.Peers {
				u, err := endpoint.Parse(p)
				if err != nil {
					rng := a.Expr.Range()
					if len(elems) == len(m.Peers) {
						rng = elems[i].Range()
					}
					d.at(rng, fmt.Sprintf("mesh_peers[%d]", i), "%v", err)
					continue
				}
				// The spelling every node keeps the peer in.
				m.Peers[i] = u.Host
			}
		}
	}
	if a := attrs["mesh_max_links"]; a != nil {
		d.intIn(a, "mesh_max_links", &m.MaxLinks, MinMeshLinks, MaxMeshLinks)
	}
	for _, name := range []string{"mesh_port", "mesh_peers", "mesh_max_links"} {
		if a := attrs[name]; a != nil && m.Mode == MeshNone {
			d.at(a.NameRange, name, "has no effect without mesh = %q", MeshOverlay)
		}
	}
}

func (d *decoder) policy(b *hcl.Block, p *Policy) {
	content, diags := b.Body.Content(policySchema)
	d.addDiags(diags)
	attrs := content.Attributes
	d.intIn(attrs["max_concurrent_spawns"], "policy max_concurrent_spawns", &p.MaxConcurrentSpawns, 1, MaxConcurrentSpawns)
	d.intIn(attrs["max_unhealthy"], "policy max_unhealthy", &p.MaxUnhealthy, 1, MaxMachines)
	if a := attrs["recover_on_evidence"]; a != nil {
		d.decode(a, "policy recover_on_evidence", cty.Bool, &p.RecoverOnEvidence)
	}
	for _, f := range []struct {
		name string
		dst  *time.Duration
	}{
		{"cooldown", &p.Cooldown}, {"backoff_initial", &p.BackoffInitial}, {"backoff_max", &p.BackoffMax},
		{"provision_timeout", &p.ProvisionTimeout}, {"grace_period", &p.GracePeriod}, {"resync_interval", &p.ResyncInterval},
		{"quorum_lost_after", &p.QuorumLostAfter},
	} {
		d.duration(attrs[f.name], "policy "+f.name, f.dst)
	}
	if p.BackoffMax < p.BackoffInitial {
		rng := b.DefRange
		if a := attrs["backoff_max"]; a != nil {
			rng = a.Expr.Range()
		}
		d.at(rng, "policy backoff_max", "must be at least backoff_initial (%s)", p.BackoffInitial)
	}
}

func (d *decoder) backend(b *hcl.Block, opts Options) Backend {
	name := b.Labels[0]
	field := fmt.Sprintf("backend %q", name)
	be := Backend{Name: name, Type: name, Settings: map[string]string{}}
	content, diags := b.Body.Content(backendSchema)
	d.addDiags(diags)
	if a := content.Attributes["type"]; a != nil {
		if s, ok := d.str(a, field+" type"); ok {
			be.Type = s
		}
	}
	if !known(opts.BackendTypes, be.Type) {
		rng := b.DefRange
		if a := content.Attributes["type"]; a != nil {
			rng = a.Expr.Range()
		}
		d.at(rng, field+" type", "unknown backend type %q (known: %s)", be.Type, knownList(opts.BackendTypes))
	}
	if a := content.Attributes["settings"]; a != nil {
		var m map[string]string
		if d.decode(a, field+" settings", cty.Map(cty.String), &m) {
			be.Settings = m
		}
	}
	if a := content.Attributes["commands"]; a != nil {
		var m map[string][]string
		if d.decode(a, field+" commands", cty.Map(cty.List(cty.String)), &m) {
			be.Commands = m
		}
	}
	if a := content.Attributes["max_per_host"]; a != nil {
		var n int64
		if d.decode(a, field+" max_per_host", cty.Number, &n) {
			if n < 1 || n > MaxMachines {
				d.at(a.Expr.Range(), field+" max_per_host", "must be between 1 and %d, got %d", MaxMachines, n)
			}
			be.MaxPerHost = int(n)
		}
	}
	if a := content.Attributes["min_free_memory_mb"]; a != nil {
		var n int64
		if d.decode(a, field+" min_free_memory_mb", cty.Number, &n) {
			if n < 1 || n > 1<<30 {
				d.at(a.Expr.Range(), field+" min_free_memory_mb", "must be between 1 and %d (MiB), got %d", 1<<30, n)
			}
			be.MinFreeMemoryMB = int(n)
		}
	}
	d.checkBackend(be, opts, field, func(f string) hcl.Range {
		if name, _, _ := strings.Cut(f, " "); content.Attributes[name] != nil {
			return content.Attributes[name].Expr.Range()
		}
		return b.DefRange
	})
	return be
}

// compute reads a compute module in the original project's format,
// compute.<type>.<server>.<command> = "shell command": a backend of type exec
// called "<type>/<server>". Its commands were shell strings there, so a
// string runs under /bin/sh -c (the machine's data is in the environment,
// never in the string); a list is an argv list as in a backend block.
func (d *decoder) compute(b *hcl.Block, opts Options) Backend {
	be := Backend{Name: b.Labels[0] + "/" + b.Labels[1], Type: ExecType, Settings: map[string]string{}, Commands: map[string][]string{}}
	field := fmt.Sprintf("compute %q %q", b.Labels[0], b.Labels[1])
	if !known(opts.BackendTypes, ExecType) {
		d.at(b.DefRange, field, "the exec backend is not available here (known: %s)", knownList(opts.BackendTypes))
	}
	attrs, diags := b.Body.JustAttributes()
	d.addDiags(diags)
	for _, name := range sortedAttrs(attrs) {
		a := attrs[name]
		switch {
		case name == "source", name == "ref":
			if s, ok := d.str(a, field+" "+name); ok {
				be.Settings[name] = s
			}
		default:
			v, diags := a.Expr.Value(nil)
			if diags.HasErrors() {
				d.at(a.Expr.Range(), field+" "+name, "must be a constant value: %s", diags[0].Summary)
				continue
			}
			if v.Type() == cty.String {
				be.Commands[name] = []string{"/bin/sh", "-c", v.AsString()}
				continue
			}
			var argv []string
			if d.decode(a, field+" "+name, cty.List(cty.String), &argv) {
				be.Commands[name] = argv
			}
		}
	}
	// Here every attribute but source and ref is a command: a problem
	// names the attribute, as the module's author wrote it.
	probs := d.backendProblems(be, opts)
	for _, p := range probs {
		name, isCmd := strings.CutPrefix(p.Field, "commands ")
		if a := attrs[name]; isCmd && a != nil {
			d.at(a.NameRange, field+" "+name, "%s", p.Message)
			continue
		}
		if name, ok := strings.CutPrefix(p.Field, "settings "); ok && attrs[name] != nil {
			d.at(attrs[name].Expr.Range(), field+" "+name, "%s", p.Message)
			continue
		}
		d.at(b.DefRange, field, "%s", p.Message)
	}
	return be
}

// checkBackend reports what the backend's type finds wrong, each problem at
// the attribute it names (rangeOf).
func (d *decoder) checkBackend(be Backend, opts Options, field string, rangeOf func(field string) hcl.Range) {
	for _, p := range d.backendProblems(be, opts) {
		d.at(rangeOf(p.Field), field+" "+p.Field, "%s", p.Message)
	}
}

func (d *decoder) backendProblems(be Backend, opts Options) []FieldProblem {
	if opts.CheckBackend == nil || !known(opts.BackendTypes, be.Type) {
		return nil
	}
	return opts.CheckBackend(be)
}

func sortedAttrs(attrs hcl.Attributes) []string {
	names := make([]string, 0, len(attrs))
	for n := range attrs {
		names = append(names, n)
	}
	sort.Slice(names, func(i, j int) bool {
		return attrs[names[i]].NameRange.Start.Byte < attrs[names[j]].NameRange.Start.Byte
	})
	return names
}

func knownList(list []string) string {
	if list == nil {
		return "local"
	}
	s := append([]string(nil), list...)
	sort.Strings(s)
	return strings.Join(s, ", ")
}

func (d *decoder) machine(b *hcl.Block) (MachineType, hcl.Range, bool) {
	name := b.Labels[0]
	field := fmt.Sprintf("machine %q", name)
	m := MachineType{Name: name, Max: -1}
	content, diags := b.Body.Content(machineSchema)
	d.addDiags(diags)
	attrs := content.Attributes
	minRange := b.DefRange
	minOK := false
	if a := attrs["min"]; a != nil {
		minRange = a.Expr.Range()
		var v int64
		if d.decode(a, field+" min", cty.Number, &v) {
			minOK = v >= 0 && v <= MaxMachines
			if v < 0 {
				d.at(a.Expr.Range(), field+" min", "must be at least 0, got %d", v)
			}
			if v > MaxMachines {
				d.at(a.Expr.Range(), field+" min", "must be at most %d, got %d", MaxMachines, v)
				v = MaxMachines
			}
			m.Min = int(v)
		}
	}
	if a := attrs["max"]; a != nil {
		var v int64
		if d.decode(a, field+" max", cty.Number, &v) {
			if v < int64(m.Min) {
				d.at(a.Expr.Range(), field+" max", "must be at least min (%d), got %d", m.Min, v)
			}
			if v > MaxMachines {
				d.at(a.Expr.Range(), field+" max", "must be at most %d, got %d", MaxMachines, v)
			}
			m.Max = int(min(v, MaxMachines))
		}
	}
	if m.Max < 0 {
		m.Max = m.Min
	}
	if a := attrs["consul_server"]; a != nil {
		d.decode(a, field+" consul_server", cty.Bool, &m.ConsulServer)
	}
	if a := attrs["backends"]; a != nil {
		var list []string
		if d.decode(a, field+" backends", cty.List(cty.String), &list) {
			if len(list) == 0 {
				d.at(a.Expr.Range(), field+" backends", "must name at least one backend")
			}
			m.Backends = list
		}
	}
	if a := attrs["archs"]; a != nil {
		var list []string
		if d.decode(a, field+" archs", cty.List(cty.String), &list) {
			if len(list) == 0 {
				d.at(a.Expr.Range(), field+" archs", "must name at least one architecture (leave it out for any)")
			}
			for _, name := range list {
				if !arch.Valid(name) {
					d.at(a.Expr.Range(), field+" archs", "%q is not an architecture raptiformica is built for (%s, by Go's names)", name, strings.Join(arch.Known, ", "))
				}
			}
			m.Archs = list
		}
	}
	if a := attrs["bootstrap"]; a != nil {
		var steps [][]string
		if d.decode(a, field+" bootstrap", cty.List(cty.List(cty.String)), &steps) {
			for i, argv := range steps {
				if len(argv) == 0 || argv[0] == "" {
					d.at(a.Expr.Range(), field+" bootstrap", "step %d must be an argv list with the program first, such as [\"apt-get\", \"install\", \"-y\", \"nginx\"]", i+1)
				}
			}
			m.Provisioners = append(m.Provisioners, Provisioner{Name: BootstrapProvisioner, Steps: steps, Timeout: DefaultStepTimeout})
		}
	}
	if a := attrs["ready_after_provision"]; a != nil {
		d.decode(a, field+" ready_after_provision", cty.Bool, &m.ReadyAfterProvision)
	}
	if a := attrs["hosts"]; a != nil {
		var list []string
		if d.decode(a, field+" hosts", cty.List(cty.String), &list) {
			if len(list) == 0 {
				d.at(a.Expr.Range(), field+" hosts", "must name at least one machine type (leave it out for every member)")
			}
			m.Hosts = list
		}
	}
	if a := attrs["per_host"]; a != nil {
		var v int64
		if d.decode(a, field+" per_host", cty.Number, &v) {
			if v < 1 || v > MaxPerHost {
				d.at(a.Expr.Range(), field+" per_host", "must be between 1 and %d, got %d", MaxPerHost, v)
			}
			m.PerHost = int(v)
		}
	}
	if a := attrs["fill"]; a != nil {
		d.decode(a, field+" fill", cty.Bool, &m.Fill)
	}
	if a := attrs["spares"]; a != nil {
		d.intIn(a, field+" spares", &m.Spares, 0, MaxSpares)
		switch {
		case m.ConsulServer:
			d.at(a.NameRange, field+" spares", "a Consul server type keeps no spares: a spare server would vote")
		case m.Expands():
			d.at(a.NameRange, field+" spares", "a per_host or fill type keeps no spares: it grows with its hosts")
		}
	}
	if m.Expands() {
		what := "per_host"
		if m.Fill {
			what = "fill"
		}
		switch {
		case m.PerHost > 0 && m.Fill:
			d.at(b.DefRange, field, "per_host and fill exclude each other: per_host places by host, fill by room")
		case m.ConsulServer:
			d.at(b.DefRange, field, "%s is not for a Consul server type: the servers' count must be the one written, and odd", what)
		case attrs["max"] == nil:
			d.at(b.DefRange, field+" max", "%s needs max: the most machines the type may have", what)
		}
	}
	if a := attrs["priority"]; a != nil {
		var v int64
		if d.decode(a, field+" priority", cty.Number, &v) {
			if v < MinPriority || v > MaxPriority {
				d.at(a.Expr.Range(), field+" priority", "must be between %d and %d, got %d", MinPriority, MaxPriority, v)
			}
			m.Priority = int(v)
		}
	}
	seen := map[string]hcl.Range{}
	if a := attrs["bootstrap"]; a != nil {
		seen[BootstrapProvisioner] = a.NameRange
	}
	for _, pb := range content.Blocks {
		if pb.Type == "scale" {
			if m.Scale != nil {
				d.at(pb.DefRange, field+" scale", "declared twice")
				continue
			}
			m.Scale = d.scale(pb, field+" scale", m)
			continue
		}
		pname := pb.Labels[0]
		pfield := fmt.Sprintf("%s provisioner %q", field, pname)
		d.name(pb.LabelRanges[0], pfield, pname)
		if prev, dup := seen[pname]; dup {
			d.at(pb.DefRange, pfield, "declared twice (first at line %d)", prev.Start.Line)
			continue
		}
		seen[pname] = pb.DefRange
		if len(m.Provisioners) == MaxProvisioners {
			d.at(pb.DefRange, pfield, "more than the %d provisioners a machine type may have", MaxProvisioners)
			continue
		}
		m.Provisioners = append(m.Provisioners, d.provisioner(pb, pfield))
	}
	return m, minRange, minOK
}

// provisioner reads one provisioner block of a machine type. Its steps run
// as root on every machine of the type, so they are argv lists, and its
// source and ref are held to the rule for code that is cloned and run
// (package internal/source).
func (d *decoder) provisioner(b *hcl.Block, field string) Provisioner {
	p := Provisioner{Name: b.Labels[0], Timeout: DefaultStepTimeout}
	content, diags := b.Body.Content(provisionerSchema)
	d.addDiags(diags)
	d.duration(content.Attributes["timeout"], field+" timeout", &p.Timeout)
	if a := content.Attributes["source"]; a != nil {
		if s, ok := d.str(a, field+" source"); ok {
			if s != "" {
				if err := source.Check(s); err != nil {
					d.at(a.Expr.Range(), field+" source", "%v", err)
				}
			}
			p.Source = s
		}
	}
	if a := content.Attributes["ref"]; a != nil {
		if s, ok := d.str(a, field+" ref"); ok {
			if err := source.CheckRef(s); err != nil {
				d.at(a.Expr.Range(), field+" ref", "%v", err)
			} else if s != "" && p.Source == "" {
				d.at(a.Expr.Range(), field+" ref", "a ref needs a source: it names a branch, tag or commit of one")
			}
			p.Ref = s
		}
	}
	if a := content.Attributes["steps"]; a != nil {
		if d.decode(a, field+" steps", cty.List(cty.List(cty.String)), &p.Steps) {
			if len(p.Steps) == 0 {
				d.at(a.Expr.Range(), field+" steps", "must list at least one step, such as [[\"make\", \"install\"]]")
			}
			if len(p.Steps) > MaxProvisionerSteps {
				d.at(a.Expr.Range(), field+" steps", "has %d steps, more than the %d a provisioner may have", len(p.Steps), MaxProvisionerSteps)
			}
			elems, _ := hcl.ExprList(a.Expr)
			for i, argv := range p.Steps {
				if len(argv) == 0 || argv[0] == "" {
					rng := a.Expr.Range()
					if len(elems) == len(p.Steps) {
						rng = elems[i].Range()
					}
					d.at(rng, field+" steps", "step %d must be an argv list with the program first, such as [\"make\", \"install\"]", i+1)
				}
			}
		}
	}
	return p
}

func (d *decoder) hook(b *hcl.Block) Hook {
	h := Hook{Event: b.Labels[0], Timeout: 30 * time.Second}
	if h.Event == "cluster_change" {
		h.Interval = DefaultHookInterval
	}
	field := fmt.Sprintf("hook %q", h.Event)
	if !known(Events, h.Event) {
		d.at(b.LabelRanges[0], field, "unknown event (known: %s)", strings.Join(Events, ", "))
	}
	content, diags := b.Body.Content(hookSchema)
	d.addDiags(diags)
	if a := content.Attributes["command"]; a != nil {
		if d.decode(a, field+" command", cty.List(cty.String), &h.Command) && (len(h.Command) == 0 || h.Command[0] == "") {
			d.at(a.Expr.Range(), field+" command", "must be an argv list with the program first, such as [\"/usr/bin/logger\", \"-t\", \"raptiformica\"]")
		}
	}
	d.duration(content.Attributes["timeout"], field+" timeout", &h.Timeout)
	if a := content.Attributes["predicate"]; a != nil {
		if d.decode(a, field+" predicate", cty.List(cty.String), &h.Predicate) && (len(h.Predicate) == 0 || h.Predicate[0] == "") {
			d.at(a.Expr.Range(), field+" predicate", "must be an argv list with the program first, such as [\"/usr/bin/test\", \"-f\", \"/etc/role-web\"]")
		}
	}
	if a := content.Attributes["interval"]; a != nil {
		if h.Event != "cluster_change" {
			d.at(a.Expr.Range(), field+" interval", "only cluster_change hooks run at an interval; the others run once per event")
		}
		d.duration(a, field+" interval", &h.Interval)
	}
	return h
}

// scale reads a machine type's scale block.
func (d *decoder) scale(b *hcl.Block, field string, m MachineType) *Scale {
	sc := &Scale{Interval: DefaultScaleInterval, UpCooldown: DefaultScaleUpCooldown, DownCooldown: DefaultScaleDownCooldown, DownAfter: DefaultScaleDownAfter}
	content, diags := b.Body.Content(scaleSchema)
	d.addDiags(diags)
	attrs := content.Attributes
	switch {
	case m.ConsulServer:
		d.at(b.DefRange, field, "a Consul server type never scales on a signal: its count is the quorum's")
	case m.Expands():
		d.at(b.DefRange, field, "a per_host or fill type grows with its hosts, not on a signal")
	}
	if a := attrs["signal"]; a != nil {
		if v, ok := d.str(a, field+" signal"); ok {
			if !known(Signals, v) {
				d.at(a.Expr.Range(), field+" signal", "unknown signal %q (known: %s)", v, strings.Join(Signals, ", "))
			}
			sc.Signal = v
		}
	}
	str := func(name string, dst *string) {
		if a := attrs[name]; a != nil {
			if v, ok := d.str(a, field+" "+name); ok {
				*dst = v
			}
		}
	}
	str("query", &sc.Query)
	str("prometheus", &sc.Prometheus)
	str("token_file", &sc.TokenFile)
	str("service", &sc.Service)
	str("check", &sc.Check)
	needs := map[string][]string{SignalPrometheus: {"query", "prometheus"}, SignalConsulService: {"service"}, SignalConsulCheck: {"check"}}
	for _, name := range needs[sc.Signal] {
		if attrs[name] == nil {
			d.at(b.DefRange, field+" "+name, "signal %s needs %s", sc.Signal, name)
		}
	}
	for _, names := range needs {
		for _, name := range names {
			if a := attrs[name]; a != nil && !slices.Contains(needs[sc.Signal], name) && sc.Signal != "" {
				d.at(a.NameRange, field+" "+name, "is not read by signal %s", sc.Signal)
			}
		}
	}
	if a := attrs["token_file"]; a != nil && sc.Signal != SignalPrometheus && sc.Signal != "" {
		d.at(a.NameRange, field+" token_file", "is not read by signal %s", sc.Signal)
	}
	if a := attrs["prometheus"]; a != nil && sc.Prometheus != "" {
		u, err := url.Parse(sc.Prometheus)
		switch {
		case err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "":
			d.at(a.Expr.Range(), field+" prometheus", "must be an http:// or https:// address such as \"http://127.0.0.1:9090\", got %q", sc.Prometheus)
		case sc.TokenFile != "" && u.Scheme == "http" && !isLoopbackHost(u.Hostname()):
			d.at(a.Expr.Range(), field+" prometheus", "a token_file is sent only over https:// (or to a loopback address), not to %q", sc.Prometheus)
		}
	}
	if a := attrs["target"]; a != nil {
		if d.decode(a, field+" target", cty.Number, &sc.Target) && !(sc.Target > 0) {
			d.at(a.Expr.Range(), field+" target", "must be positive, got %v", sc.Target)
		}
	}
	d.duration(attrs["interval"], field+" interval", &sc.Interval)
	d.duration(attrs["scale_up_cooldown"], field+" scale_up_cooldown", &sc.UpCooldown)
	d.duration(attrs["scale_down_cooldown"], field+" scale_down_cooldown", &sc.DownCooldown)
	d.duration(attrs["scale_down_after"], field+" scale_down_after", &sc.DownAfter)
	return sc
}

// isLoopbackHost reports whether host names this machine's loopback.
func isLoopbackHost(host string) bool {
	if host == "localhost" {
		return true
	}
	a, err := netip.ParseAddr(host)
	return err == nil && a.IsLoopback()
}

// decode evaluates a constant attribute into dst through type ty.
func (d *decoder) decode(a *hcl.Attribute, field string, ty cty.Type, dst any) bool {
	v, diags := a.Expr.Value(nil)
	if diags.HasErrors() {
		d.at(a.Expr.Range(), field, "must be a constant value: %s", diags[0].Summary)
		return false
	}
	v, err := convert.Convert(v, ty)
	if err != nil {
		d.at(a.Expr.Range(), field, "must be %s: %v", ty.FriendlyName(), err)
		return false
	}
	if v.IsNull() {
		d.at(a.Expr.Range(), field, "must not be null")
		return false
	}
	if err := gocty.FromCtyValue(v, dst); err != nil {
		d.at(a.Expr.Range(), field, "must be %s: %v", ty.FriendlyName(), err)
		return false
	}
	return true
}

func (d *decoder) str(a *hcl.Attribute, field string) (string, bool) {
	var s string
	ok := d.decode(a, field, cty.String, &s)
	return s, ok
}

// intIn decodes a whole number from least to most into dst.
//
// Whole numbers are read as 64-bit on every architecture: a 32-bit member
// refuses a description with the same message as any other.
func (d *decoder) intIn(a *hcl.Attribute, field string, dst *int, least, most int) {
	if a == nil {
		return
	}
	var v int64
	if !d.decode(a, field, cty.Number, &v) {
		return
	}
	if v < int64(least) {
		d.at(a.Expr.Range(), field, "must be at least %d, got %d", least, v)
		return
	}
	if v > int64(most) {
		d.at(a.Expr.Range(), field, "must be at most %d, got %d", most, v)
		return
	}
	*dst = int(v)
}

func (d *decoder) duration(a *hcl.Attribute, field string, dst *time.Duration) {
	if a == nil {
		return
	}
	s, ok := d.str(a, field)
	if !ok {
		return
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		d.at(a.Expr.Range(), field, "must be a duration such as \"30s\" or \"2m\", got %q", s)
		return
	}
	if v <= 0 {
		d.at(a.Expr.Range(), field, "must be positive, got %q", s)
		return
	}
	*dst = v
}
