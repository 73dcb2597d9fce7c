package rules

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/raptiformica/raptiformica/backends"
	"github.com/raptiformica/raptiformica/backends/exec"
)

func TestParseExamples(t *testing.T) {
	want := &Platform{
		Cluster: "example",
		Policy: Policy{
			MaxConcurrentSpawns: 2, Cooldown: 2 * time.Second, BackoffInitial: 5 * time.Second,
			BackoffMax: 2 * time.Minute, ProvisionTimeout: 2 * time.Minute, GracePeriod: 20 * time.Second,
			MaxUnhealthy: 2, ResyncInterval: 10 * time.Second, QuorumLostAfter: 30 * time.Second, RecoverOnEvidence: true,
		},
		Backends: map[string]Backend{"local": {Name: "local", Type: "local", Settings: map[string]string{}}},
		Machines: map[string]MachineType{
			"server": {Name: "server", Min: 3, Max: 3, ConsulServer: true, Backends: []string{"local"}},
			"worker": {Name: "worker", Min: 2, Max: 4, Backends: []string{"local"}},
		},
		Hooks: []Hook{{Event: "after_join", Command: []string{"/usr/bin/logger", "-t", "raptiformica"}, Timeout: 10 * time.Second}},
		Mesh:  Mesh{Mode: MeshNone, Port: DefaultMeshPort},
	}
	for _, file := range []string{"../deploy/examples/platform.hcl", "testdata/good.json"} {
		t.Run(file, func(t *testing.T) {
			got, err := ParseFile(file, Options{})
			if err != nil {
				t.Fatalf("ParseFile: %v", err)
			}
			if diff := cmp.Diff(want, got, cmpopts.IgnoreFields(Platform{}, "Source", "Filename")); diff != "" {
				t.Errorf("platform mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

func TestDefault(t *testing.T) {
	p := Default()
	if got, want := p.ServerCount(), 3; got != want {
		t.Errorf("servers: got %d want %d", got, want)
	}
	if got := p.Backends["local"].Type; got != "local" {
		t.Errorf("implicit local backend: got type %q", got)
	}
	if got, want := p.Policy.MaxUnhealthy, 1; got != want {
		t.Errorf("max unhealthy: got %d want %d", got, want)
	}
}

func TestParseProblems(t *testing.T) {
	cases := []struct {
		name string
		file string
		src  string
		// want are substrings, each of which must appear in its own problem, in order.
		want []string
	}{
		{
			name: "bootstrap steps are argv lists",
			file: "p.hcl",
			src: `machine "s" {
  min           = 1
  consul_server = true
  bootstrap     = [["apt-get", "update"], [], "reboot"]
}
`,
			want: []string{`p.hcl:4,`},
		},
		{
			name: "an empty bootstrap step",
			file: "p.hcl",
			src: `machine "s" {
  min           = 1
  consul_server = true
  bootstrap     = [["apt-get", "update"], []]
}
`,
			want: []string{`p.hcl:4,19: machine "s" bootstrap: step 2 must be an argv list with the program first`},
		},
		{
			name: "syntax error names the line",
			file: "p.hcl",
			src:  "machine \"a\" {\n  min = \n}\n",
			want: []string{"p.hcl:2,"},
		},
		{
			name: "every problem reported at once",
			file: "p.hcl",
			src: `machine "s" {
  min = 2
  consul_server = true
}
machine "w" {
  min = 3
  max = 1
  backends = ["nowhere"]
}
policy {
  cooldown = "soon"
}
`,
			want: []string{
				`p.hcl:7,9: machine "w" max: must be at least min (3), got 1`,
				`p.hcl:11,14: policy cooldown: must be a duration`,
				`p.hcl:5,1: machine "w" backends: backend "nowhere" is not declared`,
				`p.hcl:2,9: consul_server: the Consul server types ask for 2 servers`,
			},
		},
		{
			name: "unknown field",
			file: "p.hcl",
			src:  "machine \"s\" {\n  min = 1\n  consul_server = true\n  mni = 3\n}\n",
			want: []string{`p.hcl:4,3: Unsupported argument`},
		},
		{
			name: "wrong type",
			file: "p.hcl",
			src:  "machine \"s\" {\n  min = \"three\"\n  consul_server = true\n}\n",
			want: []string{`p.hcl:2,9: machine "s" min: must be number`},
		},
		{
			name: "no server",
			file: "p.hcl",
			src:  "machine \"w\" {\n  min = 1\n}\n",
			want: []string{`consul_server: no machine type is a Consul server`},
		},
		{
			name: "duplicate machine type",
			file: "p.hcl",
			src:  "machine \"s\" {\n  min = 1\n  consul_server = true\n}\nmachine \"s\" {\n  min = 1\n}\n",
			want: []string{`p.hcl:5,1: machine "s": declared twice (first at line 1)`},
		},
		{
			name: "hook as a shell string",
			file: "p.hcl",
			src:  "machine \"s\" {\n  min = 1\n  consul_server = true\n}\nhook \"after_join\" {\n  command = \"logger joined\"\n}\n",
			want: []string{`p.hcl:6,13: hook "after_join" command: must be list of string`},
		},
		{
			name: "hook predicate as a shell string, interval on an event that has none",
			file: "p.hcl",
			src:  "machine \"s\" {\n  min = 1\n  consul_server = true\n}\nhook \"after_join\" {\n  command = [\"true\"]\n  predicate = \"test -f x\"\n  interval = \"5s\"\n}\n",
			want: []string{`p.hcl:7,15: hook "after_join" predicate: must be list of string`, `p.hcl:8,14: hook "after_join" interval: only cluster_change hooks run at an interval; the others run once per event`},
		},
		{
			name: "unknown event and backend type",
			file: "p.hcl",
			src:  "backend \"b\" {\n  type = \"cloud9\"\n}\nmachine \"s\" {\n  min = 1\n  consul_server = true\n}\nhook \"after_lunch\" {\n  command = [\"true\"]\n}\n",
			want: []string{`p.hcl:2,10: backend "b" type: unknown backend type "cloud9"`, `p.hcl:8,6: hook "after_lunch": unknown event`},
		},
		{
			name: "json names its line too",
			file: "p.json",
			src:  "{\n  \"machine\": {\n    \"s\": {\"min\": -1, \"consul_server\": true}\n  }\n}\n",
			want: []string{`p.json:3,18: machine "s" min: must be at least 0, got -1`},
		},
		{
			name: "mesh mode, port and peers",
			file: "p.hcl",
			src: `mesh       = "cjdns"
mesh_port  = 70000
mesh_peers = ["vps1.example.org", "tcp://[2001:db8::1]:9651", "udp://x:1"]
machine "s" {
  min           = 1
  consul_server = true
}
`,
			want: []string{
				`p.hcl:1,14: mesh: must be "yggdrasil" (the overlay) or "none" (the machines' own network), got "cjdns"`,
				`p.hcl:2,14: mesh_port: must be at most 65535, got 70000`,
				`p.hcl:3,15: mesh_peers[0]: endpoint "vps1.example.org": want host:port`,
				`p.hcl:3,63: mesh_peers[2]: endpoint "udp://x:1": scheme "udp" (only tcp)`,
			},
		},
		{
			name: "mesh settings without the mesh",
			file: "p.hcl",
			src:  "mesh_port = 7000\nmachine \"s\" {\n  min = 1\n  consul_server = true\n}\n",
			want: []string{`p.hcl:1,1: mesh_port: has no effect without mesh = "yggdrasil"`},
		},
		{
			name: "empty",
			file: "p.hcl",
			src:  "",
			want: []string{`machine: at least one machine type is required`},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p, err := Parse(tc.file, []byte(tc.src), Options{})
			if p != nil {
				t.Errorf("got a platform from a bad description")
			}
			checkProblems(t, err, tc.want)
		})
	}
}

// allTypes parses as a node with the built-in backend types does: exec's own
// check of its commands included, so that a wrong one is named by line.
var allTypes = func() Options {
	reg, err := backends.NewRegistry(
		backends.RegistryEntry{Type: "local"}, backends.RegistryEntry{Type: "docker"},
		backends.RegistryEntry{Type: exec.Type, Check: exec.Check}, backends.RegistryEntry{Type: "ssh"},
	)
	if err != nil {
		panic(err)
	}
	return Options{BackendTypes: reg.Types(), CheckBackend: func(b Backend) []FieldProblem {
		var out []FieldProblem
		for _, p := range reg.Check(backends.Config{Name: b.Name, Type: b.Type, Settings: b.Settings, Commands: b.Commands}) {
			out = append(out, FieldProblem{Field: p.Field, Message: p.Message})
		}
		return out
	}}
}()

// The original project's compute modules, compute.<type>.<server>.<command>
// with shell strings, load as exec backends named "<type>/<server>".
func TestMesh(t *testing.T) {
	p, err := Parse("p.hcl", []byte(`mesh       = "yggdrasil"
mesh_peers = ["vps1.example.org:9651", "tcp://[2001:db8::1]:7000"]
machine "s" {
  min           = 1
  consul_server = true
}
`), Options{})
	if err != nil {
		t.Fatal(err)
	}
	want := Mesh{Mode: MeshOverlay, Port: DefaultMeshPort, Peers: []string{"vps1.example.org:9651", "[2001:db8::1]:7000"}}
	if diff := cmp.Diff(want, p.Mesh); diff != "" || !p.Mesh.Enabled() {
		t.Errorf("mesh mismatch (-want +got):\n%s", diff)
	}
}

func TestComputeModules(t *testing.T) {
	src := `{
  "compute": {
    "vagrant": {
      "headless": {
        "available": "vagrant -v",
        "source": "https://example.invalid/vagrantfiles.git",
        "start_instance": "cd headless && vagrant up",
        "get_hostname": "cd headless && vagrant ssh-config | grep HostName | awk '{print $NF}'",
        "get_port": ["/bin/echo", "22"],
        "detect_stale_instance": "cd headless && vagrant status | grep running",
        "clean_up_instance_command": "cd headless && vagrant destroy -f"
      }
    }
  },
  "machine": {"headless": {"min": 1, "consul_server": true, "backends": ["vagrant/headless"]}}
}`
	p, err := Parse("m.json", []byte(src), allTypes)
	if err != nil {
		t.Fatal(err)
	}
	want := Backend{
		Name: "vagrant/headless", Type: ExecType,
		Settings: map[string]string{"source": "https://example.invalid/vagrantfiles.git"},
		Commands: map[string][]string{
			exec.CmdAvailable: {"/bin/sh", "-c", "vagrant -v"},
			exec.CmdStart:     {"/bin/sh", "-c", "cd headless && vagrant up"},
			exec.CmdHostname:  {"/bin/sh", "-c", "cd headless && vagrant ssh-config | grep HostName | awk '{print $NF}'"},
			exec.CmdPort:      {"/bin/echo", "22"},
			exec.CmdRunning:   {"/bin/sh", "-c", "cd headless && vagrant status | grep running"},
			exec.CmdCleanUp:   {"/bin/sh", "-c", "cd headless && vagrant destroy -f"},
		},
	}
	if diff := cmp.Diff(want, p.Backends["vagrant/headless"]); diff != "" {
		t.Errorf("backend mismatch (-want +got):\n%s", diff)
	}
}

func TestExecProblems(t *testing.T) {
	const machine = "machine \"s\" {\n  min = 1\n  consul_server = true\n}\n"
	for _, tc := range []struct {
		name, src string
		want      []string
	}{
		{
			name: "missing commands",
			src:  "backend \"vm\" {\n  type = \"exec\"\n  commands = { start_instance = [\"vagrant\", \"up\"] }\n}\n" + machine,
			want: []string{`p.hcl:3,14: backend "vm" commands: an exec backend needs the command "get_hostname"`, `backend "vm" commands: an exec backend needs the command "clean_up_instance_command"`},
		},
		{
			name: "commands on another type",
			src:  "backend \"d\" {\n  type = \"docker\"\n  commands = { start_instance = [\"x\"] }\n}\n" + machine,
			want: []string{`p.hcl:3,14: backend "d" commands: a backend of type "docker" runs no commands; it takes settings only`},
		},
		{
			name: "empty argv and unknown command",
			src:  "backend \"vm\" {\n  type = \"exec\"\n  commands = {\n    start_instance = []\n    get_hostname = [\"hostname\"]\n    clean_up_instance_command = [\"true\"]\n    stop = [\"x\"]\n  }\n}\n" + machine,
			want: []string{`backend "vm" commands start_instance: must be an argv list`, `backend "vm" commands stop: unknown command`},
		},
		{
			name: "unknown key in a compute module",
			src:  "compute \"docker\" \"headless\" {\n  start_instance = \"docker run x\"\n  get_hostname = \"echo h\"\n  clean_up_instance_command = \"true\"\n  stop_instance = \"x\"\n}\n" + machine,
			want: []string{`p.hcl:5,3: compute "docker" "headless" stop_instance: unknown command`},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("p.hcl", []byte(tc.src), allTypes)
			checkProblems(t, err, tc.want)
		})
	}
}

// Every description shipped under deploy/examples is valid.
func TestShippedExamples(t *testing.T) {
	files, _ := filepath.Glob("../deploy/examples/*")
	n := 0
	for _, f := range files {
		if filepath.Base(f) == "agent.json" || !(strings.HasSuffix(f, ".hcl") || strings.HasSuffix(f, ".json")) {
			continue
		}
		n++
		if _, err := ParseFile(f, allTypes); err != nil {
			t.Errorf("%v", err)
		}
	}
	if n < 3 {
		t.Errorf("found %d example descriptions, want platform, docker and exec ones", n)
	}
}

// checkProblems checks that err lists one problem per want, in order, each
// containing its want.
func checkProblems(t *testing.T, err error, want []string) {
	t.Helper()
	var perr *Error
	if !errors.As(err, &perr) {
		t.Fatalf("got error %v, want *Error", err)
	}
	if len(perr.Problems) != len(want) {
		t.Fatalf("got %d problems, want %d:\n%v", len(perr.Problems), len(want), err)
	}
	for i, w := range want {
		if got := perr.Problems[i].String(); !strings.Contains(got, w) {
			t.Errorf("problem %d: got %q want it to contain %q", i, got, w)
		}
	}
}

// TestHooksClusterChangeAndPredicate: a cluster_change hook has an interval
// (10 s unless given), and any hook may have a predicate.
func TestHooksClusterChangeAndPredicate(t *testing.T) {
	p, err := Parse("p.hcl", []byte(`
machine "s" {
  min = 1
  consul_server = true
}
hook "cluster_change" {
  command   = ["/usr/local/bin/reload-haproxy"]
  predicate = ["/usr/bin/test", "-f", "/etc/role-lb"]
}
hook "cluster_change" {
  command  = ["/bin/true"]
  interval = "1m"
}
`), Options{})
	if err != nil {
		t.Fatal(err)
	}
	hs := p.HooksFor("cluster_change")
	if len(hs) != 2 || hs[0].Interval != DefaultHookInterval || strings.Join(hs[0].Predicate, " ") != "/usr/bin/test -f /etc/role-lb" || hs[1].Interval != time.Minute {
		t.Errorf("cluster_change hooks: %+v", hs)
	}
}
