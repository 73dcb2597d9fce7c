package rules

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestProvisionerParse(t *testing.T) {
	hclSrc := `machine "web" {
  min                   = 1
  consul_server         = true
  ready_after_provision = true
  provisioner "nginx" {
    source  = "file:///srv/git/nginx.git"
    steps   = [["make", "install"], ["systemctl", "reload", "nginx"]]
    timeout = "30m"
  }
  provisioner "motd" {
    steps = [["/bin/cp", "motd", "/etc/motd"]]
  }
}
`
	jsonSrc := `{
  "machine": {
    "web": {
      "min": 1, "consul_server": true, "ready_after_provision": true,
      "provisioner": {
        "nginx": {"source": "file:///srv/git/nginx.git", "steps": [["make", "install"], ["systemctl", "reload", "nginx"]], "timeout": "30m"},
        "motd": {"steps": [["/bin/cp", "motd", "/etc/motd"]]}
      }
    }
  }
}`
	want := MachineType{
		Name: "web", Min: 1, Max: 1, ConsulServer: true, Backends: []string{"local"}, ReadyAfterProvision: true,
		Provisioners: []Provisioner{
			{Name: "nginx", Source: "file:///srv/git/nginx.git", Steps: [][]string{{"make", "install"}, {"systemctl", "reload", "nginx"}}, Timeout: 30 * time.Minute},
			{Name: "motd", Steps: [][]string{{"/bin/cp", "motd", "/etc/motd"}}, Timeout: DefaultStepTimeout},
		},
	}
	for _, tc := range []struct{ file, src string }{{"p.hcl", hclSrc}, {"p.json", jsonSrc}} {
		t.Run(tc.file, func(t *testing.T) {
			p, err := Parse(tc.file, []byte(tc.src), Options{})
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(want, p.Machines["web"]); diff != "" {
				t.Errorf("machine type mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

func TestProvisionerProblems(t *testing.T) {
	const head = "machine \"s\" {\n  min = 1\n  consul_server = true\n"
	for _, tc := range []struct {
		name, file, src string
		want            []string
	}{
		{
			name: "steps are required",
			file: "p.hcl",
			src:  head + "  provisioner \"a\" {\n    source = \"file:///x\"\n  }\n}\n",
			want: []string{`p.hcl:4,19: Missing required argument: The argument "steps" is required`},
		},
		{
			name: "no steps",
			file: "p.hcl",
			src:  head + "  provisioner \"a\" {\n    steps = []\n  }\n}\n",
			want: []string{`p.hcl:5,13: machine "s" provisioner "a" steps: must list at least one step`},
		},
		{
			name: "an empty step and a shell string",
			file: "p.hcl",
			src:  head + "  provisioner \"a\" {\n    steps = [[\"make\"], []]\n  }\n  provisioner \"b\" {\n    steps = [\"make install\"]\n  }\n}\n",
			want: []string{
				`p.hcl:5,24: machine "s" provisioner "a" steps: step 2 must be an argv list with the program first`,
				`p.hcl:8,13: machine "s" provisioner "b" steps: must be list of list of string`,
			},
		},
		{
			name: "bad name and duplicate",
			file: "p.hcl",
			src:  head + "  provisioner \"Web_1\" {\n    steps = [[\"true\"]]\n  }\n  provisioner \"w\" {\n    steps = [[\"true\"]]\n  }\n  provisioner \"w\" {\n    steps = [[\"true\"]]\n  }\n}\n",
			want: []string{
				`p.hcl:4,15: machine "s" provisioner "Web_1": "Web_1" is not a name`,
				`p.hcl:10,3: machine "s" provisioner "w": declared twice (first at line 7)`,
			},
		},
		{
			name: "sources",
			file: "p.hcl",
			src: head + "  provisioner \"a\" {\n    source = \"http://example.org/r.git\"\n    steps = [[\"true\"]]\n  }\n" +
				"  provisioner \"b\" {\n    source = \"--upload-pack=touch /tmp/x\"\n    steps = [[\"true\"]]\n  }\n" +
				"  provisioner \"c\" {\n    source = \"ext::sh\"\n    steps = [[\"true\"]]\n  }\n" +
				"  provisioner \"d\" {\n    source = \"file://relative/path\"\n    steps = [[\"true\"]]\n  }\n" +
				"  provisioner \"e\" {\n    source = 42\n    steps = [[\"true\"]]\n  }\n}\n",
			want: []string{
				`p.hcl:5,14: machine "s" provisioner "a" source: "http://example.org/r.git": http:// is not authenticated`,
				`p.hcl:9,14: machine "s" provisioner "b" source: "--upload-pack=touch /tmp/x" starts with "-"`,
				`p.hcl:13,14: machine "s" provisioner "c" source: "ext::sh": scheme "ext" is not taken`,
				`p.hcl:17,14: machine "s" provisioner "d" source: "file://relative/path": a file URL names an absolute path`,
				`p.hcl:21,14: machine "s" provisioner "e" source: "42" is not a git URL`,
			},
		},
		{
			name: "ready_after_provision is a bool",
			file: "p.hcl",
			src:  head + "  ready_after_provision = \"yes\"\n}\n",
			want: []string{`p.hcl:4,27: machine "s" ready_after_provision: must be bool`},
		},
		{
			name: "json names the line",
			file: "p.json",
			src:  "{\"machine\": {\"s\": {\"min\": 1, \"consul_server\": true,\n  \"provisioner\": {\"a\": {\"steps\": [[]]}}}}}\n",
			want: []string{`p.json:2,35: machine "s" provisioner "a" steps: step 1 must be an argv list`},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse(tc.file, []byte(tc.src), Options{})
			checkProblems(t, err, tc.want)
		})
	}
}

func TestProvisionChecksum(t *testing.T) {
	base := MachineType{Name: "web", Provisioners: []Provisioner{
		{Name: "nginx", Source: "file:///srv/git/nginx.git", Steps: [][]string{{"make", "install"}}, Timeout: time.Minute},
	}}
	sum := base.ProvisionChecksum()
	if len(sum) != 64 {
		t.Fatalf("checksum %q: want 64 hex digits", sum)
	}
	if got := (MachineType{Name: "bare"}).ProvisionChecksum(); got != "" {
		t.Errorf("no provisioners: got %q want empty", got)
	}
	same := base
	same.Min, same.Provisioners = 7, []Provisioner{base.Provisioners[0]}
	same.Provisioners[0].Timeout = time.Hour
	if got := same.ProvisionChecksum(); got != sum {
		t.Errorf("count and timeout changed the checksum: got %s want %s", got, sum)
	}
	for name, change := range map[string]func(p *Provisioner){
		"step":   func(p *Provisioner) { p.Steps = [][]string{{"make", "install", "V=1"}} },
		"split":  func(p *Provisioner) { p.Steps = [][]string{{"make"}, {"install"}} },
		"source": func(p *Provisioner) { p.Source = "file:///srv/git/other.git" },
		"name":   func(p *Provisioner) { p.Name = "nginx2" },
	} {
		m := base
		m.Provisioners = []Provisioner{base.Provisioners[0]}
		change(&m.Provisioners[0])
		if m.ProvisionChecksum() == sum {
			t.Errorf("changing the %s kept the checksum", name)
		}
	}
}

// A type's bootstrap steps, once run over SSH on adopted machines only,
// are its first provisioner, which every machine of the type runs on
// itself; a provisioner block may not take its name.
func TestBootstrapIsAProvisioner(t *testing.T) {
	p, err := Parse("p.hcl", []byte(`machine "s" {
  min           = 1
  consul_server = true
  provisioner "site" {
    steps = [["make"]]
  }
  bootstrap = [["apt-get", "update"], ["apt-get", "install", "-y", "git"]]
}
`), Options{})
	if err != nil {
		t.Fatal(err)
	}
	want := []Provisioner{
		{Name: BootstrapProvisioner, Steps: [][]string{{"apt-get", "update"}, {"apt-get", "install", "-y", "git"}}, Timeout: DefaultStepTimeout},
		{Name: "site", Steps: [][]string{{"make"}}, Timeout: DefaultStepTimeout},
	}
	if diff := cmp.Diff(want, p.Machines["s"].Provisioners); diff != "" {
		t.Errorf("provisioners (-want +got):\n%s", diff)
	}
	_, err = Parse("p.hcl", []byte("machine \"s\" {\n  min = 1\n  consul_server = true\n  bootstrap = [[\"true\"]]\n  provisioner \"bootstrap\" {\n    steps = [[\"true\"]]\n  }\n}\n"), Options{})
	checkProblems(t, err, []string{`p.hcl:5,3: machine "s" provisioner "bootstrap": declared twice (first at line 4)`})
}
