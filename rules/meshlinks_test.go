package rules

import (
	"testing"

	"github.com/raptiformica/raptiformica/mesh/peering"
)

// mesh_max_links caps a machine's mesh links: the default when unset, the
// value given, and a bad value named by file, line and field.
func TestMeshMaxLinks(t *testing.T) {
	const machine = "machine \"s\" {\n  min           = 1\n  consul_server = true\n}\n"
	for _, tc := range []struct {
		name string
		src  string
		want int
	}{
		{name: "unset", src: "mesh = \"yggdrasil\"\n" + machine, want: peering.DefaultMaxLinks},
		{name: "set", src: "mesh = \"yggdrasil\"\nmesh_max_links = 12\n" + machine, want: 12},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := Parse("p.hcl", []byte(tc.src), Options{})
			if err != nil {
				t.Fatal(err)
			}
			if got := p.Mesh.Links(); got != tc.want {
				t.Errorf("got %d links, want %d", got, tc.want)
			}
		})
	}
	for _, tc := range []struct {
		name string
		file string
		src  string
		want []string
	}{
		{name: "too few", file: "p.hcl", src: "mesh = \"yggdrasil\"\nmesh_max_links = 1\n" + machine,
			want: []string{`p.hcl:2,18: mesh_max_links: must be at least 2, got 1`}},
		{name: "too many", file: "p.hcl", src: "mesh = \"yggdrasil\"\nmesh_max_links = 1000\n" + machine,
			want: []string{`p.hcl:2,18: mesh_max_links: must be at most 64, got 1000`}},
		{name: "not a number", file: "p.hcl", src: "mesh = \"yggdrasil\"\nmesh_max_links = \"many\"\n" + machine,
			want: []string{`p.hcl:2,18: mesh_max_links:`}},
		{name: "without the mesh", file: "p.hcl", src: "mesh_max_links = 8\n" + machine,
			want: []string{`p.hcl:1,1: mesh_max_links: has no effect without mesh = "yggdrasil"`}},
		{name: "json names its line", file: "p.json", src: "{\n  \"mesh\": \"yggdrasil\",\n  \"mesh_max_links\": 0,\n  \"machine\": {\"s\": {\"min\": 1, \"consul_server\": true}}\n}\n",
			want: []string{`p.json:3,21: mesh_max_links: must be at least 2, got 0`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := Parse(tc.file, []byte(tc.src), Options{})
			if p != nil {
				t.Errorf("got a platform from a bad description")
			}
			checkProblems(t, err, tc.want)
		})
	}
}
