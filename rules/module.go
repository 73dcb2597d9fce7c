package rules

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"slices"
	"strings"

	"github.com/raptiformica/raptiformica/internal/source"
)

// A module is a file in the original project's format (raptiformica.json),
// loaded as its users wrote it:
//
//	{
//	  "raptiformica_api_version": "0.1",
//	  "compute":  {"<compute type>": {"<server type>": {"start_instance": "shell", ...}}},
//	  "server":   {"<server type>": {"<provisioner>": {"source": "git url", "bootstrap": "shell"}}},
//	  "platform": {"<platform type>": {"hooks": {"<event>": {"<handler>": {"predicate": "shell", "command": "shell"}}}}}
//	}
//
// ParseModule checks one file against that schema (every problem with file,
// line and the field's path, such as compute.docker.headless.start_instance);
// Merge joins modules key by key in the order they were added, later ones
// overriding earlier ones, as the original did with its JSON trees; Effective
// applies the merge to a description.

// ModuleAPIVersion is the only raptiformica_api_version the original's
// module files carry, and the only one read.
const ModuleAPIVersion = "0.1"

// MaxModuleSize caps a module file, in bytes: the original's are under
// 2 KiB, and modules are kept in one KV value together.
const MaxModuleSize = 64 << 10

// The fields of each section, as the original read them.
var (
	computeFields  = []string{"available", "source", "ref", "start_instance", "get_hostname", "get_port", "detect_stale_instance", "clean_up_instance_command", "package"}
	serverFields   = []string{"source", "ref", "bootstrap"}
	handlerFields  = []string{"predicate", "command"}
	topFields      = []string{"raptiformica_api_version", "compute", "server", "platform"}
	platformFields = []string{"hooks"}
)

// ModuleEvents maps the original's hook events onto ours (Events). The
// original fired after_slave once it had installed itself on a machine over
// SSH and after_assimilate once that machine had the mesh's config: here
// both are a machine joining the cluster, seen by the leader.
var ModuleEvents = map[string]string{
	"after_start_instance": "after_spawn",
	"after_slave":          "after_join",
	"after_assimilate":     "after_join",
	"after_mesh":           "after_mesh",
	"cluster_change":       "cluster_change",
}

// ModulePlatformType is the platform type whose hooks run: the original
// read only platform.default.hooks.
const ModulePlatformType = "default"

// provisionerName is what a provisioner's name may be: it names a folder.
var provisionerName = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]{0,62}$`)

// Module is one validated module file.
type Module struct {
	// Name is what the module is kept and removed under.
	Name string
	// File is where it was read from, for messages.
	File string
	// Source is the file's text, kept so that the same bytes are stored
	// and mirrored.
	Source []byte

	root *mnode
}

// ModuleError lists every problem found in a module file, or in the merge
// of modules applied to a description.
type ModuleError struct {
	Problems []Problem
}

func (e *ModuleError) Error() string {
	lines := make([]string, len(e.Problems))
	for i, p := range e.Problems {
		lines[i] = p.String()
	}
	if len(lines) == 1 {
		return "invalid module: " + lines[0]
	}
	return fmt.Sprintf("invalid module (%d problems):\n  %s", len(lines), strings.Join(lines, "\n  "))
}

// mnode is a module's JSON tree with positions: an object (kids, in the
// order written) or a string leaf. Merge joins trees from several files, so
// each node keeps the file it came from.
type mnode struct {
	value string
	kids  map[string]*mnode // nil for a leaf
	order []string
	file  string
	position
}

func (n *mnode) leaf() bool { return n.kids == nil }

// jv is a JSON value as read, before the schema: kind is "object",
// "string" or the name of another JSON type.
type jv struct {
	kind  string
	str   string
	keys  []string
	lines []position // each key's
	vals  []*jv
	position
}

// position is where a token starts in a file.
type position struct{ line, col int }

// ParseModuleFile is ParseModule for a file on disk.
func ParseModuleFile(name, file string) (*Module, error) {
	f, err := openLimited(file)
	if err != nil {
		return nil, err
	}
	return ParseModule(name, file, f)
}

// openLimited reads a file, at most one byte past MaxModuleSize so that
// ParseModule names the size.
func openLimited(file string) ([]byte, error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, fmt.Errorf("read module: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, MaxModuleSize+1))
	if err != nil {
		return nil, fmt.Errorf("read module: %w", err)
	}
	return b, nil
}

// ParseModule reads and validates a module file. On any problem it
// returns a *ModuleError listing all of them, and no Module. Each source
// and ref is held to the rule for code that is cloned and run (package
// internal/source).
func ParseModule(name, file string, src []byte) (*Module, error) {
	return parseModule(name, file, src, true)
}

// parseModule is ParseModule, checking sources only when checkSources is
// set.
func parseModule(name, file string, src []byte, checkSources bool) (*Module, error) {
	if len(src) > MaxModuleSize {
		return nil, &ModuleError{Problems: []Problem{{File: file, Message: fmt.Sprintf("the module is %d bytes, more than the %d a module may be", len(src), MaxModuleSize)}}}
	}
	v, err := readJSON(src)
	if err != nil {
		var se *jsonSyntax
		if errors.As(err, &se) {
			return nil, &ModuleError{Problems: []Problem{{File: file, Line: se.line, Column: se.col, Message: se.msg}}}
		}
		return nil, &ModuleError{Problems: []Problem{{File: file, Message: err.Error()}}}
	}
	c := &mchecker{file: file, sources: checkSources}
	root := c.top(v)
	if len(c.problems) > 0 {
		return nil, &ModuleError{Problems: c.problems}
	}
	return &Module{Name: name, File: file, Source: append([]byte(nil), src...), root: root}, nil
}

// jsonSyntax is a JSON syntax error at a position.
type jsonSyntax struct {
	position
	msg string
}

func (e *jsonSyntax) Error() string { return fmt.Sprintf("line %d: %s", e.line, e.msg) }

// readJSON reads one JSON value with the line of every member, which
// encoding/json's decoding into maps loses (and duplicates with it).
func readJSON(src []byte) (*jv, error) {
	dec := json.NewDecoder(bytes.NewReader(src))
	dec.UseNumber()
	// lineAt is the position of the byte before off, where the decoder
	// found a problem; at the end of the file, the end.
	lineAt := func(off int64) position {
		i := max(0, min(int(off), len(src))-1)
		return position{line: 1 + bytes.Count(src[:i], []byte("\n")), col: 1 + i - (bytes.LastIndexByte(src[:i], '\n') + 1)}
	}
	// start is where the token that ends at off began: the decoder's
	// offset is just past the token it read.
	start := func(off int64) position {
		i := min(int(off), len(src)) - 1
		switch {
		case i < 0:
			i = 0
		case src[i] == '"':
			for i--; i > 0; i-- {
				if src[i] == '"' && (len(src[:i])-len(bytes.TrimRight(src[:i], "\\")))%2 == 0 {
					break
				}
			}
		case src[i] != '{' && src[i] != '[':
			for i > 0 && !bytes.ContainsRune([]byte(" \t\r\n,:[{"), rune(src[i-1])) {
				i--
			}
		}
		return position{line: 1 + bytes.Count(src[:i], []byte("\n")), col: 1 + i - (bytes.LastIndexByte(src[:i], '\n') + 1)}
	}
	syntax := func(err error) error {
		var se *json.SyntaxError
		if errors.As(err, &se) {
			return &jsonSyntax{position: lineAt(se.Offset), msg: "not valid JSON: " + se.Error()}
		}
		if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
			return &jsonSyntax{position: lineAt(int64(len(src))), msg: "not valid JSON: unexpected end of the file"}
		}
		return &jsonSyntax{position: lineAt(dec.InputOffset()), msg: "not valid JSON: " + err.Error()}
	}
	var value func(depth int) (*jv, error)
	value = func(depth int) (*jv, error) {
		if depth > 32 {
			return nil, &jsonSyntax{position: lineAt(dec.InputOffset()), msg: "nested more than 32 deep"}
		}
		tok, err := dec.Token()
		if err != nil {
			return nil, syntax(err)
		}
		v := &jv{position: start(dec.InputOffset())}
		switch t := tok.(type) {
		case json.Delim:
			switch t {
			case '{':
				v.kind = "object"
				for dec.More() {
					kt, err := dec.Token()
					if err != nil {
						return nil, syntax(err)
					}
					v.keys = append(v.keys, kt.(string))
					v.lines = append(v.lines, start(dec.InputOffset()))
					child, err := value(depth + 1)
					if err != nil {
						return nil, err
					}
					v.vals = append(v.vals, child)
				}
			case '[':
				v.kind = "a list"
				for dec.More() {
					if _, err := value(depth + 1); err != nil {
						return nil, err
					}
				}
			}
			if _, err := dec.Token(); err != nil { // the closing delimiter
				return nil, syntax(err)
			}
		case string:
			v.kind, v.str = "string", t
		case json.Number:
			v.kind = "a number"
		case bool:
			v.kind = "a boolean"
		case nil:
			v.kind = "null"
		}
		return v, nil
	}
	v, err := value(0)
	if err != nil {
		return nil, err
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, &jsonSyntax{position: lineAt(dec.InputOffset()), msg: "not valid JSON: more than one value in the file"}
	}
	return v, nil
}

// mchecker walks a module's JSON against the schema, collecting problems.
type mchecker struct {
	file     string
	sources  bool // check sources and refs (ParseModule)
	problems []Problem
}

func (c *mchecker) at(at position, field, format string, args ...any) {
	c.problems = append(c.problems, Problem{File: c.file, Line: at.line, Column: at.col, Field: field, Message: fmt.Sprintf(format, args...)})
}

// object checks that v is an object without duplicate keys and returns
// its node; each member goes to member(key, line, value) for its own
// checks, which returns the member's node or nil to leave it out.
func (c *mchecker) object(v *jv, field string, member func(key string, at position, val *jv) *mnode) *mnode {
	if v.kind != "object" {
		c.at(v.position, field, "must be an object, got %s", v.kind)
		return nil
	}
	n := &mnode{kids: map[string]*mnode{}, file: c.file, position: v.position}
	first := map[string]position{}
	for i, k := range v.keys {
		if p, dup := first[k]; dup {
			c.at(v.lines[i], join(field, k), "declared twice (first at line %d)", p.line)
			continue
		}
		first[k] = v.lines[i]
		if kid := member(k, v.lines[i], v.vals[i]); kid != nil {
			n.kids[k] = kid
			n.order = append(n.order, k)
		}
	}
	return n
}

// fields checks an object whose members are the strings in known.
func (c *mchecker) fields(v *jv, field string, known []string) *mnode {
	return c.object(v, field, func(k string, at position, val *jv) *mnode {
		f := join(field, k)
		if !slices.Contains(known, k) {
			c.at(at, f, "unknown field (known: %s)", strings.Join(known, ", "))
			return nil
		}
		return c.str(val, f)
	})
}

func (c *mchecker) str(v *jv, field string) *mnode {
	if v.kind != "string" {
		c.at(v.position, field, "must be a string, got %s", v.kind)
		return nil
	}
	return &mnode{value: v.str, file: c.file, position: v.position}
}

// named checks an object of named members, each named by rule and
// checked by member.
func (c *mchecker) named(v *jv, field, what string, rule *regexp.Regexp, member func(val *jv, field string) *mnode) *mnode {
	return c.object(v, field, func(k string, at position, val *jv) *mnode {
		f := join(field, k)
		if !rule.MatchString(k) {
			c.at(at, f, "%q is not a %s name (%s)", k, what, ruleText[rule])
			return nil
		}
		return member(val, f)
	})
}

var (
	anyName = regexp.MustCompile(`^[^\x00-\x1f]{1,100}$`)
	// originalName is what the original took as a compute or server type
	// name in practice (x86_32, Headless, debian.12): a folder name. Ours
	// are DNS labels; MachineName maps one to the other.
	originalName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$`)
	ruleText     = map[*regexp.Regexp]string{
		nameRule:        "lower-case letters, digits and hyphens, 1 to 63, starting and ending with a letter or digit",
		originalName:    "letters, digits, _, . and -, 1 to 100, starting with a letter or digit",
		provisionerName: "letters, digits, _, . and -, 1 to 63, not starting with . or -",
		anyName:         "1 to 100 printable characters",
	}
)

func (c *mchecker) top(v *jv) *mnode {
	if v.kind != "object" {
		c.at(v.position, "", "a module must be a JSON object, got %s", v.kind)
		return nil
	}
	n := c.object(v, "", func(k string, at position, val *jv) *mnode {
		switch k {
		case "raptiformica_api_version":
			s := c.str(val, k)
			if s != nil && s.value != ModuleAPIVersion {
				c.at(val.position, k, "must be %q, the only version there is, got %q", ModuleAPIVersion, s.value)
			}
			return s
		case "compute":
			return c.named(val, k, "compute type", originalName, func(v *jv, f string) *mnode {
				return c.named(v, f, "server type", originalName, func(v *jv, f string) *mnode {
					return c.source(c.fields(v, f, computeFields), f)
				})
			})
		case "server":
			return c.named(val, k, "server type", originalName, func(v *jv, f string) *mnode {
				return c.named(v, f, "provisioner", provisionerName, func(v *jv, f string) *mnode {
					return c.source(c.fields(v, f, serverFields), f)
				})
			})
		case "platform":
			return c.named(val, k, "platform type", anyName, func(v *jv, f string) *mnode {
				return c.object(v, f, func(k string, at position, val *jv) *mnode {
					hf := join(f, k)
					if k != "hooks" {
						c.at(at, hf, "unknown field (known: %s)", strings.Join(platformFields, ", "))
						return nil
					}
					return c.object(val, hf, func(ev string, at position, val *jv) *mnode {
						ef := join(hf, ev)
						if _, ok := ModuleEvents[ev]; !ok {
							c.at(at, ef, "unknown event (known: %s)", strings.Join(sortedKeys(ModuleEvents), ", "))
							return nil
						}
						return c.named(val, ef, "handler", anyName, func(v *jv, f string) *mnode {
							return c.fields(v, f, handlerFields)
						})
					})
				})
			})
		}
		c.at(at, k, "unknown section (known: %s)", strings.Join(topFields, ", "))
		return nil
	})
	if n != nil {
		if _, ok := n.kids["raptiformica_api_version"]; !ok {
			c.at(position{1, 1}, "raptiformica_api_version", "missing: a module file says which format it is in, \"raptiformica_api_version\": %q", ModuleAPIVersion)
		}
	}
	return n
}

// source checks the source and ref of n, an object of compute or server
// fields, and returns n.
func (c *mchecker) source(n *mnode, field string) *mnode {
	if n == nil || !c.sources {
		return n
	}
	for _, p := range sourceProblems(n) {
		c.at(p.at.position, join(field, p.field), "%v", p.err)
	}
	return n
}

// sourceProblem is what is wrong with a module's source or ref field.
type sourceProblem struct {
	at    *mnode
	field string // "source" or "ref"
	err   error
}

// sourceProblems is what the rule for code that is cloned and run
// (package internal/source) finds wrong in the source and ref of n: the
// one check of a module's sources, where it is parsed and where it is
// applied.
func sourceProblems(n *mnode) []sourceProblem {
	var out []sourceProblem
	src := n.get("source")
	if src != nil && src.value != "" {
		if err := source.Check(src.value); err != nil {
			out = append(out, sourceProblem{src, "source", err})
		}
	}
	if ref := n.get("ref"); ref != nil {
		if err := source.CheckRef(ref.value); err != nil {
			out = append(out, sourceProblem{ref, "ref", err})
		} else if ref.value != "" && (src == nil || src.value == "") {
			out = append(out, sourceProblem{ref, "ref", errors.New("a ref needs a source: it names a branch, tag or commit of one")})
		}
	}
	return out
}

func join(field, key string) string {
	if field == "" {
		return key
	}
	return field + "." + key
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// MaxModules caps how many modules a cluster keeps.
const MaxModules = 32

// MaxStoredModules caps the stored form of a cluster's modules, in bytes:
// they are one KV value, and Consul takes at most 512 KiB.
const MaxStoredModules = 500 << 10

// storedModule is a module as kept in KV and in mirrors: its text as it
// was written, so that it is checked again whenever it is read.
type storedModule struct {
	Name   string `json:"name"`
	File   string `json:"file"`
	Source string `json:"source"`
}

// EncodeModules is the stored form of modules, in order.
func EncodeModules(mods []*Module) []byte {
	out := make([]storedModule, len(mods))
	for i, m := range mods {
		out[i] = storedModule{Name: m.Name, File: m.File, Source: string(m.Source)}
	}
	b, _ := json.MarshalIndent(out, "", "  ")
	return b
}

// DecodeModules reads modules stored by EncodeModules (where names the
// copy in messages), checking each again as ParseModule does but for its
// sources, which Apply checks.
func DecodeModules(where string, b []byte) ([]*Module, error) {
	if len(b) > MaxStoredModules {
		return nil, fmt.Errorf("%s: %d bytes of modules, more than the %d kept", where, len(b), MaxStoredModules)
	}
	var stored []storedModule
	if err := json.Unmarshal(b, &stored); err != nil {
		return nil, fmt.Errorf("%s: not a list of modules: %w", where, err)
	}
	if len(stored) > MaxModules {
		return nil, fmt.Errorf("%s: %d modules, more than the %d a cluster keeps", where, len(stored), MaxModules)
	}
	mods := make([]*Module, 0, len(stored))
	for _, s := range stored {
		// A module stored before its sources were checked still loads,
		// so that it can be removed; Apply refuses to run its sources.
		m, err := parseModule(s.Name, s.File, []byte(s.Source), false)
		if err != nil {
			return nil, fmt.Errorf("%s: module %q: %w", where, s.Name, err)
		}
		mods = append(mods, m)
	}
	return mods, nil
}

// WithModule is mods with m added last; a module of the same name is
// replaced, and moves last: it is the newest, so it overrides the others.
func WithModule(mods []*Module, m *Module) ([]*Module, error) {
	out := WithoutModule(mods, m.Name)
	if len(out) >= MaxModules {
		return nil, fmt.Errorf("a cluster keeps at most %d modules; remove one first", MaxModules)
	}
	return append(out, m), nil
}

// WithoutModule is mods without the module called name.
func WithoutModule(mods []*Module, name string) []*Module {
	return slices.DeleteFunc(slices.Clone(mods), func(m *Module) bool { return m.Name == name })
}

// ModuleName is the name a module is kept under when added from path (a
// folder, a file, a git URL or the original's owner/repo): the folder's or
// repository's name, or the file's without .json.
func ModuleName(path string) string {
	p := strings.TrimRight(path, "/")
	base := p[strings.LastIndexAny(p, "/:")+1:]
	if base == "raptiformica.json" {
		return ModuleName(p[:len(p)-len(base)])
	}
	base = strings.TrimSuffix(strings.TrimSuffix(base, ".git"), ".json")
	return strings.Trim(strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9', r == '-':
			return r
		case r >= 'A' && r <= 'Z':
			return r - 'A' + 'a'
		}
		return '-'
	}, base), "-")
}

// Summary says what a module holds, for `module list`: each section with
// its entries, such as "compute docker/headless; platform default".
func (m *Module) Summary() string {
	var parts []string
	for _, sec := range topFields[1:] {
		var names []string
		m.root.get(sec).each(func(k string, n *mnode) {
			if sec == "platform" {
				names = append(names, k)
				return
			}
			n.each(func(k2 string, _ *mnode) { names = append(names, k+"/"+k2) })
		})
		if len(names) > 0 {
			parts = append(parts, sec+" "+strings.Join(names, ", "))
		}
	}
	if len(parts) == 0 {
		return "empty"
	}
	return strings.Join(parts, "; ")
}
