package rules

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// originalModules are the original project's built-in module files, byte
// for byte (a copy of ../shared/original-modules).
func originalModules(t *testing.T) []string {
	t.Helper()
	var files []string
	err := filepath.WalkDir("testdata/original-modules", func(path string, d os.DirEntry, err error) error {
		if err == nil && strings.HasSuffix(path, ".json") {
			files = append(files, path)
		}
		return err
	})
	if err != nil || len(files) != 6 {
		t.Fatalf("original modules: %v, %d files, want 6", err, len(files))
	}
	return files
}

func TestModuleOriginalFilesValidate(t *testing.T) {
	for _, f := range originalModules(t) {
		t.Run(f, func(t *testing.T) {
			m, err := ParseModuleFile("m", f)
			if err != nil {
				t.Fatalf("ParseModuleFile: %v", err)
			}
			if m.root == nil || len(m.root.kids) < 2 {
				t.Errorf("got a tree of %v, want the version and a section", m.root)
			}
		})
	}
}

func TestModuleProblems(t *testing.T) {
	cases := []struct {
		name, src string
		want      []Problem // Message is a substring
	}{
		{
			name: "version",
			src:  `{"raptiformica_api_version": "0.2"}`,
			want: []Problem{{Line: 1, Field: "raptiformica_api_version", Message: `must be "0.1"`}},
		},
		{
			name: "no version",
			src:  "{\n\"server\": {}}",
			want: []Problem{{Line: 1, Field: "raptiformica_api_version", Message: "missing"}},
		},
		{
			name: "number command",
			src: `{"raptiformica_api_version": "0.1",
 "compute": {"docker": {"headless": {
    "start_instance": 3}}}}`,
			want: []Problem{{Line: 3, Field: "compute.docker.headless.start_instance", Message: "must be a string, got a number"}},
		},
		{
			name: "unknown section and field",
			src: `{"raptiformica_api_version": "0.1",
 "computes": {},
 "server": {"headless": {"web": {"source": "file:///srv/web.git", "boostrap": "y"}}}}`,
			want: []Problem{
				{Line: 2, Field: "computes", Message: "unknown section (known: raptiformica_api_version, compute, server, platform)"},
				{Line: 3, Field: "server.headless.web.boostrap", Message: "unknown field (known: source, ref, bootstrap)"},
			},
		},
		{
			name: "duplicate key",
			src: `{"raptiformica_api_version": "0.1",
 "server": {"headless": {"web": {"bootstrap": "a",
    "bootstrap": "b"}}}}`,
			want: []Problem{{Line: 3, Field: "server.headless.web.bootstrap", Message: "declared twice (first at line 2)"}},
		},
		{
			name: "unknown event",
			src: `{"raptiformica_api_version": "0.1", "platform": {"default": {"hooks": {
   "after_lunch": {}}}}}`,
			want: []Problem{{Line: 2, Field: "platform.default.hooks.after_lunch", Message: "unknown event"}},
		},
		{
			name: "platform field",
			src:  `{"raptiformica_api_version": "0.1", "platform": {"default": {"hook": {}}}}`,
			want: []Problem{{Line: 1, Field: "platform.default.hook", Message: "unknown field (known: hooks)"}},
		},
		{
			name: "bad names",
			src: `{"raptiformica_api_version": "0.1",
 "compute": {"dock er": {}},
 "server": {"headless": {"../etc": {"bootstrap": "x"}}}}`,
			want: []Problem{
				{Line: 2, Field: "compute.dock er", Message: "not a compute type name"},
				{Line: 3, Field: "server.headless.../etc", Message: "not a provisioner name"},
			},
		},
		{
			name: "section not object",
			src:  `{"raptiformica_api_version": "0.1", "server": ["a"]}`,
			want: []Problem{{Line: 1, Field: "server", Message: "must be an object, got a list"}},
		},
		{
			name: "not an object",
			src:  `"0.1"`,
			want: []Problem{{Line: 1, Message: "must be a JSON object, got string"}},
		},
		{
			name: "syntax",
			src:  "{\"raptiformica_api_version\": \"0.1\",\n\"server\": {,}}",
			want: []Problem{{Line: 2, Message: "not valid JSON"}},
		},
		{
			name: "truncated",
			src:  "{\"raptiformica_api_version\": \"0.1\",\n\"server\": {",
			want: []Problem{{Line: 2, Message: "unexpected end"}},
		},
		{
			name: "trailing",
			src:  `{"raptiformica_api_version": "0.1"} {}`,
			want: []Problem{{Line: 1, Message: "more than one value"}},
		},
		{
			name: "too big",
			src:  `{"raptiformica_api_version": "0.1", "x": "` + strings.Repeat("a", MaxModuleSize) + `"}`,
			want: []Problem{{Message: "more than the 65536 a module may be"}},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			m, err := ParseModule("m", "mod.json", []byte(tc.src))
			var merr *ModuleError
			if !errors.As(err, &merr) {
				t.Fatalf("got module %v and error %v, want a *ModuleError", m, err)
			}
			if len(merr.Problems) != len(tc.want) {
				t.Fatalf("got %d problems, want %d:\n%v", len(merr.Problems), len(tc.want), err)
			}
			for i, w := range tc.want {
				g := merr.Problems[i]
				if g.File != "mod.json" || g.Line != w.Line || g.Field != w.Field || !strings.Contains(g.Message, w.Message) {
					t.Errorf("problem %d: got %s, want mod.json:%d %s: …%s…", i, g, w.Line, w.Field, w.Message)
				}
			}
		})
	}
}

func parseModules(t *testing.T, srcs ...string) []*Module {
	t.Helper()
	var mods []*Module
	for i, src := range srcs {
		name := string(rune('a' + i))
		m, err := ParseModule(name, name+".json", []byte(src))
		if err != nil {
			t.Fatalf("module %s: %v", name, err)
		}
		mods = append(mods, m)
	}
	return mods
}

const headlessPlatform = `
machine "headless" {
  min           = 1
  consul_server = true
}
`

func TestModuleEffectiveOriginal(t *testing.T) {
	desc, err := Parse("p.hcl", []byte(headlessPlatform), allTypes)
	if err != nil {
		t.Fatal(err)
	}
	var mods []*Module
	for _, f := range originalModules(t) {
		if strings.Contains(f, "vagrant") {
			continue // the same compute type name as docker's server: one is enough
		}
		m, err := ParseModuleFile(filepath.Base(filepath.Dir(f)), f)
		if err != nil {
			t.Fatal(err)
		}
		mods = append(mods, m)
	}
	got, notices, err := Effective(desc, mods, allTypes)
	if err != nil {
		t.Fatalf("Effective: %v", err)
	}
	be := got.Backends["docker/headless"]
	if be.Type != ExecType || be.Settings["source"] != "https://github.com/vdloo/raptiformica" || be.Settings["contract"] != "ssh" {
		t.Errorf("docker/headless: got %+v", be)
	}
	if c := be.Commands["get_port"]; !cmp.Equal(c, []string{"/bin/sh", "-c", "echo 22"}) {
		t.Errorf("get_port: got %q", c)
	}
	if _, ok := be.Commands["package"]; ok {
		t.Errorf("package became a backend command: %q", be.Commands["package"])
	}
	if cmd, src, ref, ok := Merge(mods).Package("docker/headless"); !ok || cmd != "cd modules/compute/docker && sh package.sh" || src == "" || ref != "" {
		t.Errorf("Package: got %q %q %q %v", cmd, src, ref, ok)
	}
	if got, want := got.Machines["headless"].Backends, []string{"local", "docker/headless"}; !cmp.Equal(got, want) {
		t.Errorf("headless backends: got %q want %q", got, want)
	}
	if p := got.Machines["headless"].Provisioners; len(p) != 0 {
		t.Errorf("the original's own provisioner was not skipped: %+v", p)
	}
	var events []string
	for _, h := range got.Hooks {
		events = append(events, h.Event)
		if h.Command[0] != "/bin/sh" || h.Predicate[0] != "/bin/sh" || h.Timeout != 30*time.Second {
			t.Errorf("hook %+v: want shell command and predicate, 30s", h)
		}
	}
	// In the order the files were walked: compute, platform/{consensus,
	// garbage_collection, notifications}, server. The hooks that run the
	// Python tool's scripts are skipped: consensus's one, and one of
	// garbage_collection's two.
	wantEvents := []string{"cluster_change", "after_spawn", "after_join", "after_join"}
	if !cmp.Equal(events, wantEvents) {
		t.Errorf("hook events: got %q want %q", events, wantEvents)
	}
	var skipped []string
	for _, n := range notices {
		if strings.Contains(n.Message, "skipped") {
			skipped = append(skipped, n.Field)
		}
	}
	wantSkipped := []string{"server.headless.raptiformica", "platform.default.hooks.cluster_change.rejoin_peers", "platform.default.hooks.cluster_change.clean_up_gone_resources"}
	slices.Sort(skipped)
	slices.Sort(wantSkipped)
	if !cmp.Equal(skipped, wantSkipped) {
		t.Errorf("skipped with a notice: got %q want %q (notices %v)", skipped, wantSkipped, notices)
	}
	if got := got.HooksFor("cluster_change"); len(got) != 1 || !strings.Contains(got[0].Command[2], "consul force-leave") {
		t.Errorf("cluster_change hooks: got %+v, want evict_gone_machines", got)
	}
	// The description is left as it was.
	if len(desc.Hooks) != 0 || len(desc.Backends) != 1 || len(desc.Machines["headless"].Backends) != 1 {
		t.Errorf("Effective changed the description: %+v", desc)
	}
}

func TestModuleMergeOverridesAndRemoval(t *testing.T) {
	desc, err := Parse("p.hcl", []byte(headlessPlatform+`
compute "docker" "web" {
  start_instance            = "desc"
  get_hostname              = "desc"
  clean_up_instance_command = "desc"
}
hook "after_join" {
  command = ["/bin/true"]
}
`), allTypes)
	if err != nil {
		t.Fatal(err)
	}
	base := `{"raptiformica_api_version": "0.1",
 "compute": {"box": {"headless": {"start_instance": "a-start", "get_hostname": "a-host", "clean_up_instance_command": "a-clean"}},
             "docker": {"web": {"start_instance": "x", "get_hostname": "x", "clean_up_instance_command": "x"}}},
 "server": {"headless": {"web": {"source": "file:///srv/web.git", "bootstrap": "./install.sh"}}}}`
	override := `{"raptiformica_api_version": "0.1",
 "compute": {"box": {"headless": {"start_instance": "b-start"}}},
 "server": {"headless": {"web": {"bootstrap": "./install.sh --v2"}, "cache": {"bootstrap": "./cache.sh"}}},
 "platform": {"default": {"hooks": {"after_slave": {"tell": {"command": "logger slaved"}}}},
              "other": {"hooks": {}}}}`
	mods := parseModules(t, base, override)

	got, notices, err := Effective(desc, mods, allTypes)
	if err != nil {
		t.Fatalf("Effective: %v", err)
	}
	box := got.Backends["box/headless"].Commands
	if !cmp.Equal(box["start_instance"], sh("b-start")) || !cmp.Equal(box["get_hostname"], sh("a-host")) {
		t.Errorf("box/headless: got %q, want b's start_instance over a's, a's get_hostname kept", box)
	}
	wantProv := []Provisioner{
		{Name: "web", Source: "file:///srv/web.git", Steps: [][]string{sh("./install.sh --v2")}},
		{Name: "cache", Steps: [][]string{sh("./cache.sh")}},
	}
	if diff := cmp.Diff(wantProv, got.Machines["headless"].Provisioners); diff != "" {
		t.Errorf("provisioners (-want +got):\n%s", diff)
	}
	if c := got.Backends["docker/web"].Commands["start_instance"]; !cmp.Equal(c, sh("desc")) {
		t.Errorf("the module replaced the description's backend docker/web: %+v", got.Backends["docker/web"])
	}
	wantHooks := []Hook{
		{Event: "after_join", Command: []string{"/bin/true"}, Timeout: 30 * time.Second},
		{Event: "after_join", Command: sh("logger slaved"), Timeout: 30 * time.Second},
	}
	if diff := cmp.Diff(wantHooks, got.Hooks); diff != "" {
		t.Errorf("hooks (-want +got):\n%s", diff)
	}
	var fields []string
	for _, n := range notices {
		fields = append(fields, n.Field)
	}
	if want := []string{"compute.docker.web", "platform.other"}; !cmp.Equal(fields, want) {
		t.Errorf("notices: got %v want fields %q", notices, want)
	}

	// Removing the later module restores what it overrode.
	got, _, err = Effective(desc, mods[:1], allTypes)
	if err != nil {
		t.Fatal(err)
	}
	if c := got.Backends["box/headless"].Commands["start_instance"]; !cmp.Equal(c, sh("a-start")) {
		t.Errorf("after removal: start_instance %q, want a's", c)
	}
	if p := got.Machines["headless"].Provisioners; len(p) != 1 || !cmp.Equal(p[0].Steps, [][]string{sh("./install.sh")}) {
		t.Errorf("after removal: provisioners %+v, want a's web only", p)
	}
	if len(got.Hooks) != 1 {
		t.Errorf("after removal: hooks %+v, want the description's only", got.Hooks)
	}
	// The modules' own trees are not changed by merging.
	again, _, _ := Effective(desc, mods, allTypes)
	if c := again.Backends["box/headless"].Commands["start_instance"]; !cmp.Equal(c, sh("b-start")) {
		t.Errorf("merging again: start_instance %q", c)
	}
}

func TestModuleEffectiveProblems(t *testing.T) {
	desc, err := Parse("p.hcl", []byte(headlessPlatform), allTypes)
	if err != nil {
		t.Fatal(err)
	}
	mods := parseModules(t, `{"raptiformica_api_version": "0.1",
 "compute": {"box": {"headless": {
   "get_hostname": "x", "clean_up_instance_command": "x"}}},
 "server": {"headless": {"web": {
   "source": "file:///x"}}},
 "platform": {"default": {"hooks": {"cluster_change": {"h": {
   "predicate": "true"}}}}}}`)
	_, _, err = Effective(desc, mods, allTypes)
	var merr *ModuleError
	if !errors.As(err, &merr) {
		t.Fatalf("got %v, want a *ModuleError", err)
	}
	want := []string{
		`a.json:2,34: compute.box.headless: an exec backend needs the command "start_instance"`,
		`a.json:4,33: server.headless.web.bootstrap: missing: a provisioner needs the shell command that installs it`,
		`a.json:6,61: platform.default.hooks.cluster_change.h.command: missing: a handler needs the shell command it runs`,
	}
	var got []string
	for _, p := range merr.Problems {
		got = append(got, p.String())
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("problems (-want +got):\n%s", diff)
	}
}

func TestModuleStoredForm(t *testing.T) {
	mods := parseModules(t, `{"raptiformica_api_version": "0.1"}`, `{"raptiformica_api_version": "0.1", "server": {}}`)
	again, err := DecodeModules("kv", EncodeModules(mods))
	if err != nil {
		t.Fatal(err)
	}
	if len(again) != 2 || again[0].Name != "a" || again[1].File != "b.json" || string(again[1].Source) != string(mods[1].Source) {
		t.Errorf("round trip: got %+v", again)
	}
	// A stored module is checked again as any file is.
	bad := strings.Replace(string(EncodeModules(mods)), `0.1`, `0.9`, 1)
	if _, err := DecodeModules("kv", []byte(bad)); err == nil || !strings.Contains(err.Error(), `kv: module "a": invalid module: a.json:1,`) {
		t.Errorf("a stored module of another version: got %v", err)
	}
	// Adding again replaces the module and makes it the newest.
	re, err := WithModule(mods, mods[0])
	if err != nil || len(re) != 2 || re[0].Name != "b" || re[1].Name != "a" {
		t.Errorf("WithModule again: got %v, %v; want b, a", re, err)
	}
	if got := WithoutModule(mods, "a"); len(got) != 1 || got[0].Name != "b" || len(mods) != 2 {
		t.Errorf("WithoutModule: got %v (mods %v)", got, mods)
	}
}

func TestModuleName(t *testing.T) {
	for src, want := range map[string]string{
		"/srv/modules/compute/docker":                   "docker",
		"/srv/modules/compute/docker/":                  "docker",
		"modules/compute/docker/raptiformica.json":      "docker",
		"modules/platform/garbage_collection.json":      "garbage-collection",
		"https://github.com/vdloo/raptiformica-map.git": "raptiformica-map",
		"vdloo/Raptiformica_Map":                        "raptiformica-map",
		"git@example.org:mods/web.git":                  "web",
		"raptiformica.json":                             "",
		"/":                                             "",
	} {
		if got := ModuleName(src); got != want {
			t.Errorf("ModuleName(%q): got %q want %q", src, got, want)
		}
	}
}

// FuzzParseModule: no module text makes the reader panic or accept
// something that does not load again from its stored form, and every
// problem names the file and a line within it.
func FuzzParseModule(f *testing.F) {
	files, _ := filepath.Glob("testdata/original-modules/*/*.json")
	more, _ := filepath.Glob("testdata/original-modules/*/*/*.json")
	for _, file := range append(files, more...) {
		b, _ := os.ReadFile(file)
		f.Add(b)
	}
	f.Add([]byte(`{"raptiformica_api_version": "0.1", "server": {"a": {"b": {"bootstrap": "\"\\\""}}}}`))
	f.Fuzz(func(t *testing.T, src []byte) {
		m, err := ParseModule("m", "m.json", src)
		var merr *ModuleError
		if err != nil {
			if !errors.As(err, &merr) {
				t.Fatalf("got %T, want a *ModuleError", err)
			}
			lines := 1 + strings.Count(string(src), "\n")
			for _, p := range merr.Problems {
				if p.File != "m.json" || p.Line < 0 || p.Line > lines || (p.Line > 0 && p.Column < 1) {
					t.Fatalf("problem out of the file: %+v (%d lines)", p, lines)
				}
			}
			return
		}
		if _, err := DecodeModules("kv", EncodeModules([]*Module{m})); err != nil {
			t.Fatalf("accepted, but not once stored: %v", err)
		}
		_, _, _ = Effective(Default(), []*Module{m}, allTypes)
	})
}

func TestModuleBackendNamedByDescription(t *testing.T) {
	const desc = `
machine "headless" {
  min           = 1
  consul_server = true
  backends      = ["docker/headless", "local"]
}
machine "worker" {
  min      = 0
  backends = ["docker/headles"]
}
`
	p, err := Parse("p.hcl", []byte(desc), allTypes)
	if err != nil {
		t.Fatalf("Parse refused a module's backend name: %v", err)
	}
	if got, want := p.ModuleBackends(), []string{"docker/headless", "docker/headles"}; !cmp.Equal(got, want) {
		t.Errorf("ModuleBackends: got %q want %q", got, want)
	}
	mods := parseModules(t, `{"raptiformica_api_version": "0.1",
 "compute": {"docker": {"headless": {
   "start_instance": "x", "get_hostname": "x", "clean_up_instance_command": "x"}}}}`)

	wantErr := []string{`p.hcl:7,1: machine "worker" backends: backend "docker/headles" is not declared, and no module provides it (compute.<type>.<server> in a module makes backend "<type>/<server>")`}
	for _, tc := range []struct {
		name string
		mods []*Module
		want []string
	}{
		{name: "a module provides one, not the other", mods: mods, want: wantErr},
		{name: "no modules", want: []string{
			`p.hcl:2,1: machine "headless" backends: backend "docker/headless" is not declared, and no module provides it (compute.<type>.<server> in a module makes backend "<type>/<server>")`,
			wantErr[0],
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := Effective(p, tc.mods, allTypes)
			var perr *Error
			if !errors.As(err, &perr) {
				t.Fatalf("got %v, want a *Error", err)
			}
			var got []string
			for _, pr := range perr.Problems {
				got = append(got, pr.String())
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("problems (-want +got):\n%s", diff)
			}
		})
	}

	// Without the misspelt type, the module's backend is used where the
	// description put it, first, not appended after the type's own.
	ok, err := Parse("p.hcl", []byte(desc[:strings.Index(desc, `machine "worker"`)]), allTypes)
	if err != nil {
		t.Fatal(err)
	}
	got, _, err := Effective(ok, mods, allTypes)
	if err != nil {
		t.Fatalf("Effective: %v", err)
	}
	if got, want := got.Machines["headless"].Backends, []string{"docker/headless", "local"}; !cmp.Equal(got, want) {
		t.Errorf("headless backends: got %q want %q", got, want)
	}
	if be := got.Backends["docker/headless"]; be.Type != ExecType {
		t.Errorf("docker/headless: got %+v, want the module's exec backend", be)
	}

	// A name of another shape is still refused when parsing.
	_, err = Parse("p.hcl", []byte(`machine "m" {
  min           = 1
  consul_server = true
  backends      = ["dockr"]
}`), allTypes)
	if err == nil || !strings.Contains(err.Error(), `p.hcl:1,1: machine "m" backends: backend "dockr" is not declared`) {
		t.Errorf("got %v, want dockr refused at p.hcl:1,1", err)
	}
}
