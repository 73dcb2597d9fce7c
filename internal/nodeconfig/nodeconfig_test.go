package nodeconfig

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestRead(t *testing.T) {
	for _, tc := range []struct {
		name, src, wantErr string
	}{
		{"valid", `{"machine_id": "m1", "machine_type": "server", "data_dir": "/d", "bind_addr": "10.0.0.1", "consul_binary": "/c"}`, ""},
		{"misspelt field", "{\n  \"machine_id\": \"m1\",\n  \"bind_adr\": \"10.0.0.1\"\n}", `agent.json:3: json: unknown field "bind_adr"`},
		{"wrong type", "{\n  \"machine_id\": \"m1\",\n  \"http_port\": \"9550\"\n}", `agent.json:3: json: cannot unmarshal string into Go struct field Config.http_port of type int`},
		{"broken JSON", "{\n  \"machine_id\": \"m1\",\n  \"machine_type\": }", `agent.json:3: invalid character '}'`},
		{"missing field", `{"machine_id": "m1", "machine_type": "server", "data_dir": "/d", "consul_binary": "/c"}`, `agent.json: field bind_addr is required`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := filepath.Join(t.TempDir(), "agent.json")
			if err := os.WriteFile(f, []byte(tc.src), 0o600); err != nil {
				t.Fatal(err)
			}
			c, err := Read(f)
			if tc.wantErr == "" {
				if err != nil || c.MachineID != "m1" || c.HTTPPort != AgentHTTPPort {
					t.Fatalf("got %+v, %v", c, err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("error: got %v, want it to contain %q", err, tc.wantErr)
			}
		})
	}
}

// A config that holds the cluster's token is refused while others can read
// it: the token lets its holder do anything to the cluster.
func TestReadRefusesAnExposedToken(t *testing.T) {
	f := filepath.Join(t.TempDir(), "agent.json")
	src := `{"machine_id": "m1", "machine_type": "server", "data_dir": "/d", "bind_addr": "10.0.0.1", "consul_binary": "/c", "acl_token": "t"}`
	if err := os.WriteFile(f, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Read(f); err == nil || !strings.Contains(err.Error(), "chmod 600 "+f) {
		t.Errorf("a readable config with a token: got %v, want a refusal saying chmod 600", err)
	}
	if err := os.Chmod(f, 0o600); err != nil {
		t.Fatal(err)
	}
	if c, err := Read(f); err != nil || c.ACLToken != "t" {
		t.Errorf("mode 600: got %+v, %v", c, err)
	}
}
