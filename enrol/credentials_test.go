package enrol

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hashicorp/consul/api"

	"github.com/raptiformica/raptiformica/internal/kvschema"
	"github.com/raptiformica/raptiformica/internal/testconsul"
)

// TestTrustCredentialTable checks the table in docs/security.md of what each
// credential may read and write against a real Consul with the cluster's
// ACLs: the tokens are made as the cluster makes them (a client machine's
// by MachineToken; the roles' from kvschema's rules), and every cell is
// tried, a read and a write of the key. A client's token, used by hand,
// changes nothing but its own claims; the table says so, and this holds
// the table to it.
func TestTrustCredentialTable(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test: runs a real Consul (run without -short)")
	}
	t.Parallel()
	rows, columns := readCredentialTable(t)
	c, root := testconsul.StartACL(t), testconsul.ACLRoot
	admin := c.ClientWithToken(t, root)
	ctx := context.Background()
	const own, other = "worker-own", "worker-other"
	tokens := map[string]string{"cluster token, operator": root}
	var err error
	if tokens["client machine"], err = MachineToken(ctx, admin, own); err != nil {
		t.Fatal(err)
	}
	if _, err := MachineToken(ctx, admin, other); err != nil {
		t.Fatal(err)
	}
	for column, rules := range map[string]string{"read-only": kvschema.ReadOnlyRules, "metrics": kvschema.MetricsRules} {
		p, err := EnsurePolicy(ctx, admin, "test-"+column, "", rules)
		if err != nil {
			t.Fatal(err)
		}
		tok, _, err := admin.ACL().TokenCreate(&api.ACLToken{Policies: []*api.ACLTokenPolicyLink{{ID: p.ID}}}, nil)
		if err != nil {
			t.Fatal(err)
		}
		tokens[column] = tok.SecretID
	}
	for _, col := range columns {
		if tokens[col] == "" {
			t.Fatalf("the table in docs/security.md has a column %q this test makes no token for", col)
		}
	}
	for _, row := range rows {
		key := strings.NewReplacer("<own>", own, "<other>", other, "<id>", "x").Replace(row.key)
		value := []byte("value of " + key)
		if _, err := admin.KV().Put(&api.KVPair{Key: key, Value: value}, nil); err != nil {
			t.Fatal(err)
		}
		for i, col := range columns {
			kv := c.ClientWithToken(t, tokens[col]).KV()
			pair, _, err := kv.Get(key, nil)
			read := err == nil && pair != nil && string(pair.Value) == string(value)
			_, err = kv.Put(&api.KVPair{Key: key, Value: value}, nil)
			wrote := err == nil
			got := map[[2]bool]string{{true, true}: "rw", {true, false}: "r", {false, true}: "w", {false, false}: "-"}[[2]bool{read, wrote}]
			if got != row.cells[i] {
				t.Errorf("%s with the %s credential: Consul allows %q, docs/security.md says %q", key, col, got, row.cells[i])
			}
		}
	}
}

type credentialRow struct {
	key   string
	cells []string
}

// readCredentialTable reads the table between the credential markers of
// docs/security.md: a header of credentials, then a row a key, each cell
// rw, r or -.
func readCredentialTable(t *testing.T) ([]credentialRow, []string) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "docs", "security.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, table, ok := strings.Cut(string(b), "<!-- credentials: checked by TestTrustCredentialTable -->")
	if ok {
		table, _, ok = strings.Cut(table, "<!-- /credentials -->")
	}
	if !ok {
		t.Fatal("docs/security.md has no credential table between its markers")
	}
	cells := func(line string) []string {
		var out []string
		for _, c := range strings.Split(strings.Trim(strings.TrimSpace(line), "|"), "|") {
			out = append(out, strings.Trim(strings.TrimSpace(c), "`"))
		}
		return out
	}
	var rows []credentialRow
	var columns []string
	for _, line := range strings.Split(strings.TrimSpace(table), "\n") {
		c := cells(line)
		switch {
		case columns == nil:
			columns = c[1:]
		case strings.HasPrefix(c[0], "---"):
		default:
			if len(c) != len(columns)+1 {
				t.Fatalf("docs/security.md credential table row %q: %d cells, want %d", line, len(c), len(columns)+1)
			}
			rows = append(rows, credentialRow{key: c[0], cells: c[1:]})
		}
	}
	if len(rows) == 0 {
		t.Fatal("the credential table in docs/security.md has no rows")
	}
	return rows, columns
}

// TestTrustOlderMachinePoliciesBroughtUpToDate: a client made by an older
// version has a policy of its own that still lets it write its inventory
// record; a new leader rewrites it to this version's rules, so that the
// client's token no longer writes it.
func TestTrustOlderMachinePoliciesBroughtUpToDate(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test: runs a real Consul (run without -short)")
	}
	t.Parallel()
	c, root := testconsul.StartACL(t), testconsul.ACLRoot
	ctx := context.Background()
	admin := c.ClientWithToken(t, root)
	tok, err := MachineToken(ctx, admin, "worker-old")
	if err != nil {
		t.Fatal(err)
	}
	older := `key "` + kvschema.Inventory + `worker-old" { policy = "write" }` + "\n" + kvschema.MachineRules("worker-old")
	if _, err := EnsurePolicy(ctx, admin, machinePolicyPrefix+"worker-old", "", older); err != nil {
		t.Fatal(err)
	}
	own := c.ClientWithToken(t, tok).KV()
	forged := &api.KVPair{Key: kvschema.Inventory + "worker-old", Value: []byte(`{"id": "worker-old", "type": "server"}`)}
	if _, err := own.Put(forged, nil); err != nil {
		t.Fatalf("the older policy should let it write its record (the test's premise): %v", err)
	}
	if err := UpdateMachinePolicies(ctx, admin); err != nil {
		t.Fatal(err)
	}
	if _, err := own.Put(forged, nil); err == nil {
		t.Error("after a leader's update, the client's token still writes its inventory record")
	}
}
