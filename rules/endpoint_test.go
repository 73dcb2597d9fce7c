package rules

import (
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
