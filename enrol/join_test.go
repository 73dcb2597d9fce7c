package enrol

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/raptiformica/raptiformica/internal/clock/clocktest"
	"github.com/raptiformica/raptiformica/internal/jointoken"
	"github.com/raptiformica/raptiformica/internal/kvschema"
	"github.com/raptiformica/raptiformica/internal/nodeconfig"
	"github.com/raptiformica/raptiformica/internal/state"
	"github.com/raptiformica/raptiformica/internal/testconsul"
	"github.com/raptiformica/raptiformica/reconcile"
	"github.com/raptiformica/raptiformica/rules"
)

// TestJoinerSpendsOnlyWhatItGrants: a join that can be refused is refused
// before the token's use is spent, each with the failure its answer is
// chosen by; a join whose machine cannot be configured gives its use
// back; a granted join records the machine, joining, as the server's
// word.
func TestJoinerSpendsOnlyWhatItGrants(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test: runs a real Consul (run without -short)")
	}
	t.Parallel()
	srv, err := testconsul.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Stop)
	ctx := context.Background()
	store := kvschema.New(srv.Client)
	now := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	tok, _ := jointoken.New(strings.Repeat("ab", 32))
	tokens := state.JoinTokens(store)
	if _, err := tokens.Put(ctx, jointoken.NewRecord(tok, "worker", 1, now, time.Hour), 0); err != nil {
		t.Fatalf("store the token: %v", err)
	}
	p := &rules.Platform{Cluster: "c", Machines: map[string]rules.MachineType{"worker": {Name: "worker"}}}
	var platform *rules.Platform
	configFails := errors.New("no CA key")
	var config error
	j := &Joiner{
		Tokens: tokens, Inventory: &reconcile.Inventory{Store: store},
		Platform: func() *rules.Platform { return platform },
		NodeConfig: func(_ context.Context, p *rules.Platform, id string, mt rules.MachineType, backend string) (nodeconfig.Config, error) {
			return nodeconfig.Config{MachineID: id, MachineType: mt.Name, Backend: backend}, config
		},
		Clock: clocktest.NewFake(now), Log: hclog.NewNullLogger(),
	}
	usesLeft := func() int {
		t.Helper()
		r, found, _, err := tokens.Get(ctx, tok.ID, nil)
		if err != nil || !found {
			t.Fatalf("read the token: %v %v", found, err)
		}
		return r.UsesLeft
	}
	good := jointoken.Request{TokenID: tok.ID, Secret: tok.Secret}
	for _, tc := range []struct {
		name     string
		req      jointoken.Request
		platform *rules.Platform
		config   error
		want     JoinFailure
	}{
		{"an unknown token", jointoken.Request{TokenID: "nope", Secret: tok.Secret}, p, nil, JoinRefused},
		{"a wrong secret", jointoken.Request{TokenID: tok.ID, Secret: "wrong"}, p, nil, JoinRefused},
		{"another type than the token's", jointoken.Request{TokenID: tok.ID, Secret: tok.Secret, Type: "server"}, p, nil, JoinBadRequest},
		{"no description yet", good, nil, nil, JoinNotReady},
		{"a description without the token's type", good, &rules.Platform{Machines: map[string]rules.MachineType{}}, nil, JoinBadRequest},
		{"a machine that cannot be configured", good, p, configFails, JoinFailed},
	} {
		platform, config = tc.platform, tc.config
		_, err := j.Join(ctx, tc.req, "192.0.2.1:1234")
		var je *JoinError
		if !errors.As(err, &je) || je.Failure != tc.want {
			t.Errorf("%s: got %v, want failure %d", tc.name, err, tc.want)
		}
		if n := usesLeft(); n != 1 {
			t.Errorf("%s: the token has %d uses left, want its 1 still there", tc.name, n)
		}
	}
	platform, config = p, nil
	cfg, err := j.Join(ctx, good, "192.0.2.1:1234")
	if err != nil || cfg.MachineType != "worker" || cfg.Backend != JoinBackend {
		t.Fatalf("a good join: %+v, %v", cfg, err)
	}
	if n := usesLeft(); n != 0 {
		t.Errorf("after a granted join the token has %d uses left, want 0", n)
	}
	rec, found, err := (&reconcile.Inventory{Store: store}).Get(ctx, cfg.MachineID)
	if err != nil || !found || rec.State != reconcile.StateJoining || rec.Backend != JoinBackend || rec.Reason != "joined with token "+tok.ID {
		t.Errorf("the record of %s: %+v, %v, %v", cfg.MachineID, rec, found, err)
	}
	_, err = j.Join(ctx, good, "192.0.2.1:1234")
	if je := (*JoinError)(nil); !errors.As(err, &je) || je.Failure != JoinRefused || !strings.Contains(je.Msg, "used up") {
		t.Errorf("a join after the last use: %v, want refused, used up", err)
	}
}
