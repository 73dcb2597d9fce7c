package rules

import (
	"maps"
	"slices"
	"strings"
	"testing"
)

// TestArchModuleNamesMapped: a module of the original for 32-bit hosts,
// spelled as the original allowed (x86_32, with an underscore our names
// refuse), loads; its compute and server types go by valid names here,
// with a notice saying so, and a description's machine type of that name
// gets the module's backend, provisioner and package.
func TestArchModuleNamesMapped(t *testing.T) {
	const mod = `{
  "raptiformica_api_version": "0.1",
  "compute": {
    "Docker_Legacy": {
      "x86_32": {
        "start_instance": "true",
        "get_hostname": "echo h",
        "clean_up_instance_command": "true",
        "package": "make i386"
      }
    }
  },
  "server": {
    "x86_32": {
      "tools": {"bootstrap": "apt-get install -y busybox"}
    }
  }
}`
	m, err := ParseModule("i386", "i386.json", []byte(mod))
	if err != nil {
		t.Fatalf("the original's spelling is refused: %v", err)
	}
	desc, err := Parse("p.hcl", []byte(`
machine "server" {
  min           = 1
  consul_server = true
}
machine "x86-32" {
  min = 1
}
`), allTypes)
	if err != nil {
		t.Fatal(err)
	}
	got, notices, err := Effective(desc, []*Module{m}, allTypes)
	if err != nil {
		t.Fatalf("Effective: %v", err)
	}
	be, ok := got.Backends["docker-legacy/x86-32"]
	if !ok || be.Type != ExecType {
		t.Fatalf("backend docker-legacy/x86-32: %+v (backends %v)", be, slices.Sorted(maps.Keys(got.Backends)))
	}
	mt := got.Machines["x86-32"]
	if !slices.Contains(mt.Backends, "docker-legacy/x86-32") {
		t.Errorf("machine type x86-32 backends %v, want the module's", mt.Backends)
	}
	if len(mt.Provisioners) != 1 || mt.Provisioners[0].Name != "tools" {
		t.Errorf("machine type x86-32 provisioners %+v, want the module's tools", mt.Provisioners)
	}
	if cmd, _, _, ok := Merge([]*Module{m}).Package("docker-legacy/x86-32"); !ok || cmd != "make i386" {
		t.Errorf("Package of the mapped backend: %q %v", cmd, ok)
	}
	var said []string
	for _, n := range notices {
		said = append(said, n.File+": "+n.Field+": "+n.Message)
	}
	all := strings.Join(said, "\n")
	for _, want := range []string{
		`i386.json: compute.Docker_Legacy.x86_32: compute type "Docker_Legacy" is named "docker-legacy" here`,
		`server type "x86_32" is named "x86-32" here`,
	} {
		if !strings.Contains(all, want) {
			t.Errorf("no notice %q in:\n%s", want, all)
		}
	}
	// Once per name, not once per place it appears.
	if n := strings.Count(all, `server type "x86_32" is named`); n != 1 {
		t.Errorf("the server type's notice said %d times:\n%s", n, all)
	}
}

// TestArchModuleNamesCollide: two of a module's types that would go by one
// name are refused, naming both, rather than one silently replacing the
// other; a name with nothing to keep is refused too.
func TestArchModuleNamesCollide(t *testing.T) {
	m, err := ParseModule("m", "m.json", []byte(`{
  "raptiformica_api_version": "0.1",
  "server": {
    "x86_32": {"a": {"bootstrap": "true"}},
    "X86.32": {"b": {"bootstrap": "true"}}
  }
}`))
	if err != nil {
		t.Fatal(err)
	}
	desc, err := Parse("p.hcl", []byte("machine \"x86-32\" {\n  min = 1\n  consul_server = true\n}\n"), allTypes)
	if err != nil {
		t.Fatal(err)
	}
	_, _, err = Effective(desc, []*Module{m}, allTypes)
	if err == nil || !strings.Contains(err.Error(), `server type "x86_32" and "X86.32" would both be named "x86-32" here`) {
		t.Fatalf("colliding names: %v", err)
	}
	if got := MachineName("___"); got != "" {
		t.Errorf("MachineName(___) = %q", got)
	}
	for in, want := range map[string]string{"x86_32": "x86-32", "Headless": "headless", "debian.12__arm": "debian-12-arm", strings.Repeat("a", 62) + "_b": strings.Repeat("a", 62)} {
		if got := MachineName(in); got != want {
			t.Errorf("MachineName(%q) = %q, want %q", in, got, want)
		}
	}
}
