package nodeconfig

import (
	"encoding/json"
	"os"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/raptiformica/raptiformica/internal/endpoint"
)

// FuzzParse: no file content panics the agent at start; a refusal names
// the file; an accepted config has what Validate requires, peers every
// machine can dial, and survives being written (as Write does) and read
// again unchanged: a backend and a leader write configs that agents read.
func FuzzParse(f *testing.F) {
	if b, err := os.ReadFile("../../deploy/examples/agent.json"); err == nil {
		f.Add(b)
	}
	f.Add([]byte(`{` + minimal + `}`))
	f.Add([]byte(`{` + minimal + `, "mesh": {"secret": "s", "listen_port": 9651, "peers": ["10.0.0.2:9651", "tcp://[fd00::1]:9651"], "advertise": ["vps1.example:9651"]}}`))
	f.Add([]byte(`{` + minimal + `, "tls": {"ca_cert": "c", "cert": "c", "key": "k"}, "http_port": 1, "retry_join": ["a"]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		const name = "fuzz/agent.json"
		c, err := Parse(name, b)
		if err != nil {
			if !strings.Contains(err.Error(), name) {
				t.Fatalf("the error does not name the file: %v", err)
			}
			return
		}
		if err := c.Validate(); err != nil {
			t.Fatalf("accepted, but Validate says %v", err)
		}
		if m := c.Mesh; m != nil {
			for _, ep := range append(append([]string(nil), m.Peers...), m.Advertise...) {
				if _, err := endpoint.Parse(ep); err != nil {
					t.Fatalf("accepted a mesh endpoint no machine can dial: %v", err)
				}
			}
		}
		out, err := json.MarshalIndent(c, "", "  ")
		if err != nil {
			t.Fatalf("accepted, but cannot be written: %v", err)
		}
		again, err := Parse(name, out)
		if err != nil {
			t.Fatalf("written, then refused: %v\n%s", err, out)
		}
		// An empty list is written as none: the same to every reader.
		if diff := cmp.Diff(c, again, cmpopts.EquateEmpty()); diff != "" {
			t.Fatalf("written and read again, it changed (-read +again):\n%s", diff)
		}
	})
}
