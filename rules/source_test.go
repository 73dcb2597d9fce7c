package rules

import (
	"errors"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

const pin = "0123456789abcdef0123456789abcdef01234567"

// A provisioner may pin its source with ref: a full commit pins, a
// branch or tag selects; an abbreviated commit and a ref without a source
// are refused at their line.
func TestTrustSourceProvisionerRef(t *testing.T) {
	p, err := Parse("p.hcl", []byte(`machine "web" {
  min           = 1
  consul_server = true
  provisioner "site" {
    source = "https://git.example.org/site.git"
    ref    = "`+pin+`"
    steps  = [["make"]]
  }
  provisioner "tools" {
    source = "git@git.example.org:tools.git"
    ref    = "v1.2"
    steps  = [["make"]]
  }
}
`), Options{})
	if err != nil {
		t.Fatal(err)
	}
	provs := p.Machines["web"].Provisioners
	if len(provs) != 2 || provs[0].Ref != pin || provs[1].Ref != "v1.2" {
		t.Fatalf("got %+v, want the refs", provs)
	}
	unpinned := p.Machines["web"]
	unpinned.Provisioners = []Provisioner{provs[0]}
	unpinned.Provisioners[0].Ref = ""
	pinned := unpinned
	pinned.Provisioners = []Provisioner{provs[0]}
	if unpinned.ProvisionChecksum() == pinned.ProvisionChecksum() {
		t.Error("a pin leaves the description's checksum as it was: machines would not provision it")
	}

	_, err = Parse("p.hcl", []byte(`machine "web" {
  min           = 1
  consul_server = true
  provisioner "site" {
    source = "https://git.example.org/site.git"
    ref    = "0123abcd"
    steps  = [["make"]]
  }
  provisioner "empty" {
    ref   = "`+pin+`"
    steps = [["true"]]
  }
  provisioner "plain" {
    source = "http://git.example.org/site.git"
    steps  = [["true"]]
  }
}
`), Options{})
	checkProblems(t, err, []string{
		`p.hcl:6,14: machine "web" provisioner "site" ref: "0123abcd" looks like an abbreviated commit, which pins nothing`,
		`p.hcl:10,13: machine "web" provisioner "empty" ref: a ref needs a source`,
		`p.hcl:14,14: machine "web" provisioner "plain" source: "http://git.example.org/site.git": http:// is not authenticated`,
	})
}

// An exec backend's source, in a backend block or a compute block, is held
// to the same rule as a provisioner's: refused at its line.
func TestTrustSourceBackendRefusesHTTP(t *testing.T) {
	_, err := Parse("p.hcl", []byte(`machine "web" {
  min           = 1
  consul_server = true
}
backend "vm" {
  type     = "exec"
  settings = { source = "http://example.org/vms.git" }
  commands = {
    start_instance            = ["/bin/true"]
    get_hostname              = ["/bin/true"]
    clean_up_instance_command = ["/bin/true"]
  }
}
compute "box" "web" {
  source                    = "git://example.org/box.git"
  ref                       = "`+pin+`"
  start_instance            = "true"
  get_hostname              = "true"
  clean_up_instance_command = "true"
}
compute "pinned" "web" {
  source                    = "https://example.org/box.git"
  ref                       = "`+pin+`"
  start_instance            = "true"
  get_hostname              = "true"
  clean_up_instance_command = "true"
}
`), allTypes)
	checkProblems(t, err, []string{
		`p.hcl:7,14: backend "vm" settings source: "http://example.org/vms.git": http:// is not authenticated`,
		`p.hcl:15,31: compute "box" "web" source: "git://example.org/box.git": git:// is not authenticated`,
	})
}

// A module's compute and server sources are held to the rule where the
// module is read, each problem at its file, line and field; ref pins
// them. A module stored before sources were checked still loads (so that
// it can be removed), and applying it refuses its sources.
func TestTrustSourceModuleRefusesHTTP(t *testing.T) {
	bad := `{"raptiformica_api_version": "0.1",
 "compute": {"box": {"headless": {"source": "git://example.org/box.git", "start_instance": "a", "get_hostname": "a", "clean_up_instance_command": "a"}}},
 "server": {"headless": {"web": {"source": "http://example.org/web.git", "ref": "abcdef12", "bootstrap": "./install.sh"}}}}`
	_, err := ParseModule("bad", "bad.json", []byte(bad))
	var merr *ModuleError
	if !errors.As(err, &merr) {
		t.Fatalf("got %v, want a *ModuleError", err)
	}
	want := []string{
		`bad.json:2,45: compute.box.headless.source: "git://example.org/box.git": git:// is not authenticated`,
		`bad.json:3,44: server.headless.web.source: "http://example.org/web.git": http:// is not authenticated`,
		`bad.json:3,81: server.headless.web.ref: "abcdef12" looks like an abbreviated commit`,
	}
	if len(merr.Problems) != len(want) {
		t.Fatalf("got %v, want %d problems", err, len(want))
	}
	for i, w := range want {
		if got := merr.Problems[i].String(); !strings.HasPrefix(got, w) {
			t.Errorf("problem %d: got %q, want %q", i, got, w)
		}
	}

	desc, err := Parse("p.hcl", []byte(headlessPlatform), allTypes)
	if err != nil {
		t.Fatal(err)
	}
	stored, err := DecodeModules("kv", EncodeModules([]*Module{{Name: "bad", File: "bad.json", Source: []byte(bad)}}))
	if err != nil {
		t.Fatalf("a stored module with http:// sources: %v, want it loaded", err)
	}
	_, _, err = Effective(desc, stored, allTypes)
	if !errors.As(err, &merr) || len(merr.Problems) != len(want) {
		t.Fatalf("applying it: got %v, want its %d sources refused", err, len(want))
	}
	for i, w := range want {
		if got := merr.Problems[i].String(); !strings.HasPrefix(got, w) {
			t.Errorf("applied, problem %d: got %q, want %q", i, got, w)
		}
	}

	good := parseModules(t, `{"raptiformica_api_version": "0.1",
 "compute": {"box": {"headless": {"source": "https://example.org/box.git", "ref": "`+pin+`", "package": "make", "start_instance": "a", "get_hostname": "a", "clean_up_instance_command": "a"}}},
 "server": {"headless": {"web": {"source": "ssh://example.org/web.git", "ref": "main", "bootstrap": "./install.sh"}}}}`)
	got, _, err := Effective(desc, good, allTypes)
	if err != nil {
		t.Fatal(err)
	}
	if s := got.Backends["box/headless"].Settings; s["source"] != "https://example.org/box.git" || s["ref"] != pin {
		t.Errorf("box/headless settings: got %v, want its source and ref", s)
	}
	wantProv := []Provisioner{{Name: "web", Source: "ssh://example.org/web.git", Ref: "main", Steps: [][]string{{"/bin/sh", "-c", "./install.sh"}}}}
	if diff := cmp.Diff(wantProv, got.Machines["headless"].Provisioners); diff != "" {
		t.Errorf("provisioners (-want +got):\n%s", diff)
	}
	if _, src, ref, _ := Merge(good).Package("box/headless"); src != "https://example.org/box.git" || ref != pin {
		t.Errorf("package source: got %q at %q", src, ref)
	}
}
