package nodeconfig

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const minimal = `"machine_id": "m1", "machine_type": "server", "data_dir": "/d", "bind_addr": "10.0.0.1", "consul_binary": "/c"`

// TestHostileNodeConfig: what a config must not hold is refused with the
// file and the field: an endpoint that no other machine could dial or
// whose spelling does not parse again (the mesh keeps and spreads what it
// is given), a second document after the first (which was dropped
// silently), a file too large to be a config.
func TestHostileNodeConfig(t *testing.T) {
	for _, tc := range []struct{ name, src, want string }{
		{"zone in a peer", `{` + minimal + `, "mesh": {"secret": "s", "peers": ["10.0.0.2:9651", "[fe80::1%eth0]:9651"]}}`, `agent.json: field mesh.peers[1]: endpoint "[fe80::1%eth0]:9651"`},
		{"space in a peer", `{` + minimal + `, "mesh": {"secret": "s", "peers": ["vps 1:9651"]}}`, `agent.json: field mesh.peers[0]: endpoint "vps 1:9651"`},
		{"signed port", `{` + minimal + `, "mesh": {"secret": "s", "advertise": ["vps1:+9651"]}}`, `agent.json: field mesh.advertise[0]: endpoint "vps1:+9651"`},
		{"a resolver by name", `{` + minimal + `, "resolvers": ["192.0.2.53", "[2001:db8::53]:5353", "dns.example.org"]}`, `agent.json: field resolvers[2] "dns.example.org": want an IP address`},
		{"a second document", "{" + minimal + "}\n{\"machine_id\": \"m2\"}\n", `agent.json:2: more after the config`},
		{"too large", "{" + minimal + `, "platform": "` + strings.Repeat("x", MaxSize) + `"}`, `agent.json: larger than`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := filepath.Join(t.TempDir(), "agent.json")
			if err := os.WriteFile(f, []byte(tc.src), 0o600); err != nil {
				t.Fatal(err)
			}
			if _, err := Read(f); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v, want an error saying %q", err, tc.want)
			}
		})
	}
}
