package rules

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// TestHostileMeshPeers: an endpoint that no machine can dial, or whose
// spelling does not parse again, is refused where it is written, by line,
// in HCL and in JSON; the ones taken are kept in their one spelling, the
// one the mesh mirror and new machines' configs hold.
func TestHostileMeshPeers(t *testing.T) {
	for _, tc := range []struct {
		name, file, src string
		want            []string
	}{
		{
			name: "hcl",
			file: "p.hcl",
			src: `mesh = "yggdrasil"
mesh_peers = [
  "vps1.example.org:9651",
  "vps 1:9651",
  "vps1:+9651",
  "tcp://[fe80::1%25eth0]:9651",
]
machine "s" {
  min           = 1
  consul_server = true
}
`,
			want: []string{
				`p.hcl:4,3: mesh_peers[1]: endpoint "vps 1:9651": "vps 1" is neither an IP address nor a host name`,
				`p.hcl:5,3: mesh_peers[2]: endpoint "vps1:+9651": port must be 1 to 65535`,
				`p.hcl:6,3: mesh_peers[3]: endpoint "tcp://[fe80::1%25eth0]:9651": address "fe80::1%25eth0" has a zone`,
			},
		},
		{
			name: "json",
			file: "p.json",
			src:  "{\n  \"mesh\": \"yggdrasil\",\n  \"mesh_peers\": [\n    \"vps 1:9651\",\n    \"vps1:+9651\"\n  ],\n  \"machine\": {\"s\": {\"min\": 1, \"consul_server\": true}}\n}\n",
			want: []string{
				`p.json:4,5: mesh_peers[0]: endpoint "vps 1:9651"`,
				`p.json:5,5: mesh_peers[1]: endpoint "vps1:+9651"`,
			},
		},
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

func TestMeshPeersCanonical(t *testing.T) {
	p, err := Parse("p.hcl", []byte(`mesh       = "yggdrasil"
mesh_peers = ["VPS1.example.org:09651", "tcp://[2001:db8:0::1]:7000"]
machine "s" {
  min           = 1
  consul_server = true
}
`), Options{})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"vps1.example.org:9651", "[2001:db8::1]:7000"}, p.Mesh.Peers); diff != "" {
		t.Errorf("peers (-want +got):\n%s", diff)
	}
}

// TestHostileCounts: a count is a number of machines someone will pay for
// and the planner makes one action per machine it spawns in a pass, so a
// min or a max_concurrent_spawns of 2^63-1 made a leader build actions
// until it ran out of memory. Counts have a ceiling, by line.
func TestHostileCounts(t *testing.T) {
	src := `policy {
  max_concurrent_spawns = 9223372036854775807
  max_unhealthy         = 1000001
}
machine "server" {
  min           = 9223372036854775807
  consul_server = true
}
machine "worker" {
  min = 1
  max = 100001
}
`
	_, err := Parse("p.hcl", []byte(src), Options{})
	checkProblems(t, err, []string{
		`p.hcl:2,27: policy max_concurrent_spawns: must be at most 1000, got 9223372036854775807`,
		`p.hcl:3,27: policy max_unhealthy: must be at most 100000, got 1000001`,
		`p.hcl:6,19: machine "server" min: must be at most 100000, got 9223372036854775807`,
		`p.hcl:11,9: machine "worker" max: must be at most 100000, got 100001`,
	})
}

// TestHostilePlacementLimits: a backend's per-host cap and free-memory
// floor are bounded and named with their line.
func TestHostilePlacementLimits(t *testing.T) {
	src := `backend "local" {
  max_per_host       = 0
  min_free_memory_mb = 9223372036854775807
}
machine "server" {
  min           = 1
  consul_server = true
}
`
	_, err := Parse("p.hcl", []byte(src), Options{BackendTypes: []string{"local"}})
	checkProblems(t, err, []string{
		`p.hcl:2,24: backend "local" max_per_host: must be between 1 and 100000, got 0`,
		`p.hcl:3,24: backend "local" min_free_memory_mb: must be between 1 and 1073741824 (MiB), got 9223372036854775807`,
	})
	p, err := Parse("p.hcl", []byte(strings.NewReplacer("= 0", "= 3", "9223372036854775807", "512").Replace(src)), Options{BackendTypes: []string{"local"}})
	if err != nil {
		t.Fatal(err)
	}
	if be := p.Backends["local"]; be.MaxPerHost != 3 || be.MinFreeMemoryMB != 512 {
		t.Errorf("backend: %+v", be)
	}
}
