package rules

import (
	"slices"
	"strings"
	"testing"
)

// TestElasticPriorityParsed: a type's priority is read within its bounds,
// a value outside them is refused with its place, and the types are
// served servers first, then by priority, then by name.
func TestElasticPriorityParsed(t *testing.T) {
	src := `
machine "server" {
  min = 1
  consul_server = true
  priority = -5
}
machine "batch" {
  min = 1
}
machine "web" {
  min = 1
  priority = 10
}
machine "api" {
  min = 1
  priority = 10
}
`
	p, err := Parse("p.hcl", []byte(src), Options{})
	if err != nil {
		t.Fatal(err)
	}
	if p.Machines["web"].Priority != 10 || p.Machines["batch"].Priority != 0 {
		t.Errorf("priorities web %d, batch %d; want 10 and 0", p.Machines["web"].Priority, p.Machines["batch"].Priority)
	}
	if got := p.ByPriority(); !slices.Equal(got, []string{"server", "api", "web", "batch"}) {
		t.Errorf("order %q, want server, api, web, batch", got)
	}
	_, err = Parse("p.hcl", []byte(strings.Replace(src, "priority = 10\n}\nmachine \"api\"", "priority = 1001\n}\nmachine \"api\"", 1)), Options{})
	if err == nil || !strings.Contains(err.Error(), `p.hcl:12,14: machine "web" priority: must be between -1000 and 1000, got 1001`) {
		t.Errorf("priority 1001: %v", err)
	}
}

// TestElasticHostsMustBeTypes: hosts names declared machine types.
func TestElasticHostsMustBeTypes(t *testing.T) {
	src := "machine \"s\" {\n  min = 1\n  consul_server = true\n}\nmachine \"w\" {\n  min = 1\n  hosts = [\"s\", \"nope\"]\n}\n"
	_, err := Parse("p.hcl", []byte(src), Options{})
	if err == nil || !strings.Contains(err.Error(), `p.hcl:5,1: machine "w" hosts: machine type "nope" is not declared (the description has s, w)`) {
		t.Errorf("hosts naming no type: %v", err)
	}
	p, err := Parse("p.hcl", []byte(strings.Replace(src, `, "nope"`, "", 1)), Options{})
	if err != nil || !slices.Equal(p.Machines["w"].Hosts, []string{"s"}) {
		t.Errorf("hosts = [\"s\"]: %v %v", p, err)
	}
}

// TestElasticExpandingTypesParsed: per_host and fill are read with their
// bounds, need max, exclude each other, and are not for servers.
func TestElasticExpandingTypesParsed(t *testing.T) {
	head := "machine \"s\" {\n  min = 1\n  consul_server = true\n}\n"
	p, err := Parse("p.hcl", []byte(head+"machine \"w\" {\n  min = 0\n  max = 8\n  per_host = 2\n}\nmachine \"f\" {\n  min = 1\n  max = 9\n  fill = true\n}\n"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	if w, f := p.Machines["w"], p.Machines["f"]; w.PerHost != 2 || !w.Expands() || !f.Fill || !f.Expands() || p.Machines["s"].Expands() {
		t.Errorf("w %+v, f %+v", w, f)
	}
	for _, tc := range []struct{ src, want string }{
		{"machine \"w\" {\n  min = 0\n  per_host = 1\n}\n", `p.hcl:5,1: machine "w" max: per_host needs max`},
		{"machine \"w\" {\n  min = 0\n  max = 3\n  per_host = 0\n}\n", `machine "w" per_host: must be between 1 and 1000, got 0`},
		{"machine \"w\" {\n  min = 0\n  max = 3\n  per_host = 1\n  fill = true\n}\n", `machine "w": per_host and fill exclude each other`},
		{"machine \"w\" {\n  min = 1\n  max = 3\n  consul_server = true\n  fill = true\n}\n", `machine "w": fill is not for a Consul server type`},
	} {
		if _, err := Parse("p.hcl", []byte(head+tc.src), Options{}); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: %v, want %q", tc.src, err, tc.want)
		}
	}
}

// TestElasticScaleBlockParsed: a scale block is read with its defaults;
// what a signal needs is required, what it does not read is refused, and
// a server type never scales on a signal.
func TestElasticScaleBlockParsed(t *testing.T) {
	head := "machine \"s\" {\n  min = 1\n  consul_server = true\n}\n"
	src := head + `machine "w" {
  min = 1
  max = 10
  scale {
    signal     = "prometheus"
    prometheus = "http://127.0.0.1:9090"
    query      = "sum(redis_key_size{key=\"jobs\"})"
    target     = 5
    scale_down_after = "2m"
  }
}
`
	p, err := Parse("p.hcl", []byte(src), Options{})
	if err != nil {
		t.Fatal(err)
	}
	sc := p.Machines["w"].Scale
	if sc == nil || sc.Signal != SignalPrometheus || sc.Target != 5 || sc.DownAfter.String() != "2m0s" || sc.Interval != DefaultScaleInterval || sc.UpCooldown != DefaultScaleUpCooldown {
		t.Errorf("scale %+v", sc)
	}
	for _, tc := range []struct{ src, want string }{
		{strings.Replace(src, "    query      = \"sum(redis_key_size{key=\\\"jobs\\\"})\"\n", "", 1), `machine "w" scale query: signal prometheus needs query`},
		{strings.Replace(src, "target     = 5", "target     = 0", 1), `machine "w" scale target: must be positive, got 0`},
		{strings.Replace(src, `"http://127.0.0.1:9090"`, `"127.0.0.1:9090"`, 1), `machine "w" scale prometheus: must be an http:// or https:// address`},
		{strings.Replace(src, `signal     = "prometheus"`, `signal     = "consul_service"`, 1), `machine "w" scale service: signal consul_service needs service`},
		{strings.Replace(src, `signal     = "prometheus"`, `signal     = "vibes"`, 1), `unknown signal "vibes"`},
		{strings.Replace(src, "min = 1\n  max = 10\n", "min = 1\n  max = 10\n  consul_server = true\n", 1), `a Consul server type never scales on a signal`},
		{strings.Replace(src, `"http://127.0.0.1:9090"`, "\"http://10.0.0.5:9090\"\n    token_file = \"/etc/t\"", 1), `a token_file is sent only over https://`},
	} {
		if _, err := Parse("p.hcl", []byte(tc.src), Options{}); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v, want %q", err, tc.want)
		}
	}
}

// TestElasticSparesParsed: spares are read within their bounds and
// refused for a server type and a type that grows with its hosts.
func TestElasticSparesParsed(t *testing.T) {
	head := "machine \"s\" {\n  min = 1\n  consul_server = true\n}\n"
	p, err := Parse("p.hcl", []byte(head+"machine \"w\" {\n  min = 2\n  spares = 1\n}\n"), Options{})
	if err != nil || p.Machines["w"].Spares != 1 {
		t.Fatalf("spares = 1: %v %v", p, err)
	}
	for src, want := range map[string]string{
		"machine \"w\" {\n  min = 2\n  spares = 101\n}\n":                         `machine "w" spares: must be at most 100`,
		"machine \"w\" {\n  min = 1\n  consul_server = true\n  spares = 1\n}\n":   `a Consul server type keeps no spares`,
		"machine \"w\" {\n  min = 0\n  max = 3\n  fill = true\n  spares = 1\n}\n": `a per_host or fill type keeps no spares`,
	} {
		if _, err := Parse("p.hcl", []byte(head+src), Options{}); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v, want %q", src, err, want)
		}
	}
}
