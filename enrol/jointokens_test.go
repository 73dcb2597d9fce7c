package enrol

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/raptiformica/raptiformica/internal/kvschema"
	"github.com/raptiformica/raptiformica/internal/pki"
	"github.com/raptiformica/raptiformica/internal/state"
	"github.com/raptiformica/raptiformica/internal/testconsul"
	"github.com/raptiformica/raptiformica/rules"
)

// TestTrustJoinTokenHasType: a join token always names a type: the one
// asked for, else the description's first client type by name, never a
// server unless named; it joins one machine unless told more (how
// `token list` shows the uses left: cluster's TestWriteTokenList).
func TestTrustJoinTokenHasType(t *testing.T) {
	p := &rules.Platform{Machines: map[string]rules.MachineType{
		"server": {ConsulServer: true}, "worker": {}, "arm": {}, "a-server": {ConsulServer: true},
	}}
	for _, tc := range []struct {
		name, typ, want string
		server          bool
		err             string
	}{
		{"none asked: the first client type", "", "arm", false, ""},
		{"a client type", "worker", "worker", false, ""},
		{"a server, asked by name", "server", "server", true, ""},
		{"an unknown type", "gpu", "", false, "no such machine type"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, server, err := joinTokenType(p, tc.typ)
			if got != tc.want || server != tc.server || (err == nil) != (tc.err == "") || (err != nil && !strings.Contains(err.Error(), tc.err)) {
				t.Errorf("got %q server=%v %v, want %q server=%v %q", got, server, err, tc.want, tc.server, tc.err)
			}
		})
	}
	serversOnly := &rules.Platform{Machines: map[string]rules.MachineType{"server": {ConsulServer: true}}}
	if got, _, err := joinTokenType(serversOnly, ""); err == nil || !strings.Contains(err.Error(), "--type") {
		t.Errorf("a description of servers only, no type asked: %q, %v; want told to name one", got, err)
	}

	if testing.Short() {
		t.Skip("the rest runs a real Consul (run without -short)")
	}
	srv, err := testconsul.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Stop)
	ca, err := pki.NewCA("c")
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for _, tc := range []struct {
		spec     JoinTokenSpec
		typ      string
		usesLeft int
	}{
		{JoinTokenSpec{TTL: time.Hour}, "arm", 1},
		{JoinTokenSpec{Type: "worker", Uses: 3, TTL: time.Hour}, "worker", 3},
	} {
		tok, rec, err := CreateJoinToken(ctx, srv.Client, p, ca.CertPEM, tc.spec)
		if err != nil {
			t.Fatal(err)
		}
		stored, _, _, err := state.JoinTokens(kvschema.New(srv.Client)).Get(ctx, tok.ID, nil)
		if err != nil || stored != rec || stored.Type != tc.typ || stored.UsesLeft != tc.usesLeft {
			t.Errorf("%+v: stored %+v (%v), returned %+v; want type %s with %d uses", tc.spec, stored, err, rec, tc.typ, tc.usesLeft)
		}
	}
	if _, _, err := CreateJoinToken(ctx, srv.Client, p, ca.CertPEM, JoinTokenSpec{Uses: -1, TTL: time.Hour}); err == nil {
		t.Error("a token of -1 uses was made")
	}
	// A record that cannot be read is listed apart, by its key, so that
	// it can be revoked; it hides none of the others.
	if _, err := kvschema.New(srv.Client).JoinTokens().CAS(ctx, "garbled", []byte("{"), 0); err != nil {
		t.Fatal(err)
	}
	recs, bad, err := JoinTokens(ctx, srv.Client)
	if err != nil || len(recs) != 2 || recs[0].Type != "arm" || recs[1].Type != "worker" {
		t.Errorf("the tokens listed, oldest first: %+v, %v; want arm's then worker's", recs, err)
	}
	if len(bad) != 1 || bad[0].Key != kvschema.JoinTokens+"garbled" {
		t.Errorf("the unreadable records: %+v, want the garbled one", bad)
	}
}
