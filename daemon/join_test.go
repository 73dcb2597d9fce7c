package daemon

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/hashicorp/consul/api"

	"github.com/raptiformica/raptiformica/daemon/agentapi"
	"github.com/raptiformica/raptiformica/enrol"
	"github.com/raptiformica/raptiformica/internal/jointoken"
	"github.com/raptiformica/raptiformica/internal/kvschema"
	"github.com/raptiformica/raptiformica/internal/nodeconfig"
	"github.com/raptiformica/raptiformica/internal/pki"
	"github.com/raptiformica/raptiformica/internal/state"
	"github.com/raptiformica/raptiformica/internal/telemetry"
	"github.com/raptiformica/raptiformica/reconcile"
	"github.com/raptiformica/raptiformica/rules"
)

const joinPlatform = onePlatform + `machine "worker" {
  min = 0
  max = 5
}
`

// storeJoinToken keeps a join token's record as `token create` does,
// fields written by name so that the record means the same to every
// version of the agent.
func storeJoinToken(t *testing.T, a *Agent, typ string, uses int) jointoken.Token {
	t.Helper()
	hash, err := pki.Fingerprint(a.Config.TLS.CACert)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := jointoken.New(hash)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256([]byte(tok.Secret))
	now := time.Now()
	b, _ := json.Marshal(map[string]any{
		"id": tok.ID, "secret_sha256": hex.EncodeToString(sum[:]), "type": typ,
		"created": now.UTC(), "expires": now.Add(time.Hour).UTC(), "uses_left": uses,
	})
	if ok, err := a.store.JoinTokens().CAS(context.Background(), tok.ID, b, 0); err != nil || !ok {
		t.Fatalf("store the join token: %v %v", ok, err)
	}
	return tok
}

// TestTrustJoinTokenUsesAndRecord: a join token joins as many machines as its
// uses, however many ask at once, each as the token's type whatever the
// machine asks for, and the server records each machine it configured
// (joining, by hand, with the token named): the record is the server's
// word, not the new machine's.
func TestTrustJoinTokenUsesAndRecord(t *testing.T) {
	a, _ := startAgentWith(t, joinPlatform)
	member := net.JoinHostPort(a.Config.BindAddr, strconv.Itoa(a.Config.HTTPSPort))
	ctx := context.Background()
	refusedWith := func(err error, status int, why string) bool {
		var r *agentapi.AgentRefused
		return errors.As(err, &r) && strings.HasPrefix(r.Status, strconv.Itoa(status)) && strings.Contains(r.Reason, why)
	}

	t.Run("two uses, five machines at once", func(t *testing.T) {
		tok := storeJoinToken(t, a, "worker", 2)
		var wg sync.WaitGroup
		cfgs := make([]nodeconfig.Config, 5)
		errs := make([]error, len(cfgs))
		for i := range cfgs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				cfgs[i], errs[i] = agentapi.Join(ctx, member, tok, "")
			}()
		}
		wg.Wait()
		var joined []nodeconfig.Config
		for i, err := range errs {
			switch {
			case err == nil:
				joined = append(joined, cfgs[i])
			case !refusedWith(err, http.StatusUnauthorized, "used up"):
				t.Errorf("a join failed otherwise than used up: %v", err)
			}
		}
		if len(joined) != 2 {
			t.Fatalf("%d machines joined with a token of 2 uses", len(joined))
		}
		for _, cfg := range joined {
			if cfg.MachineType != "worker" || cfg.TLS == nil || cfg.TLS.CAKey != "" || cfg.ACLToken == a.Config.ACLToken {
				t.Errorf("%s: type %s, or a server's credentials", cfg.MachineID, cfg.MachineType)
			}
			rec, found, err := a.inventory.Get(ctx, cfg.MachineID)
			if err != nil || !found {
				t.Errorf("the record of %s: found %v, %v", cfg.MachineID, found, err)
				continue
			}
			want := reconcile.Record{ID: cfg.MachineID, Type: "worker", Backend: enrol.JoinBackend, State: reconcile.StateJoining,
				Created: rec.Created, Updated: rec.Created, Reason: "joined with token " + tok.ID, Index: rec.Index}
			if diff := cmp.Diff(want, rec); diff != "" || rec.Created.IsZero() {
				t.Errorf("the record of %s, made at the join (-want +got):\n%s", cfg.MachineID, diff)
			}
		}
		if _, err := agentapi.Join(ctx, member, tok, ""); !refusedWith(err, http.StatusUnauthorized, "used up") {
			t.Errorf("a join after the last use: %v, want refused", err)
		}
	})

	t.Run("the token's type, not the machine's", func(t *testing.T) {
		tok := storeJoinToken(t, a, "worker", 1)
		if _, err := agentapi.Join(ctx, member, tok, "server"); !refusedWith(err, http.StatusBadRequest, "type worker") {
			t.Errorf("a worker's token asked for a server: %v, want refused", err)
		}
		if cfg, err := agentapi.Join(ctx, member, tok, ""); err != nil || cfg.MachineType != "worker" {
			t.Errorf("the token after a refused join: %+v, %v; want its use still there", cfg.MachineType, err)
		}
	})

	t.Run("a token without a type", func(t *testing.T) {
		tok := storeJoinToken(t, a, "", 5)
		cfg, err := agentapi.Join(ctx, member, tok, "server")
		if err == nil || cfg.ACLToken != "" {
			t.Errorf("a token without a type made a %s with the cluster's token: %v", cfg.MachineType, err)
		}
	})
}

// TestTrustClientAgentRefusesActing: a client's agent acts for its own
// machine's token only; it refuses an operator's token (even one Consul
// vouches for) and a plan outright, where a server acts for the same
// token.
func TestTrustClientAgentRefusesActing(t *testing.T) {
	a, _ := startAgent(t)
	op, _, err := a.consul.ACL().TokenCreate(&api.ACLToken{Description: "trust test operator", Policies: []*api.ACLTokenPolicyLink{{ID: kvschema.GlobalManagementPolicyID}}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	serve := func(server bool, method, path, token string) int {
		h := &httpServer{
			cfg:    nodeconfig.Config{MachineID: "m", ACLToken: "own-token-of-the-machine", ConsulServer: server}.WithDefaults(),
			consul: a.consul, store: a.store, mirror: a.mirror, elector: a.elector, metrics: telemetry.New(), clock: a.Clock, log: a.Log,
		}
		req := httptest.NewRequest(method, path, nil)
		req.RemoteAddr, req.TLS = "192.0.2.7:40000", &tls.ConnectionState{}
		req.Header.Set("Authorization", "Bearer "+token)
		rec := httptest.NewRecorder()
		h.handler().ServeHTTP(rec, req)
		return rec.Code
	}
	// The agent runs without the mesh: a peer request that passes the
	// guard is answered 409.
	acted := map[string]int{agentapi.MeshPeersPath: http.StatusConflict, agentapi.PlanPath: http.StatusOK}
	for _, tc := range []struct {
		server        bool
		method, path  string
		token         string
		wantActed     bool
		wantRefusedAs int
	}{
		{false, http.MethodPost, agentapi.MeshPeersPath, op.SecretID, false, http.StatusUnauthorized},
		{false, http.MethodGet, agentapi.PlanPath, op.SecretID, false, http.StatusForbidden},
		{false, http.MethodGet, agentapi.PlanPath, "own-token-of-the-machine", false, http.StatusForbidden},
		{false, http.MethodPost, agentapi.MeshPeersPath, "own-token-of-the-machine", true, 0},
		{true, http.MethodPost, agentapi.MeshPeersPath, op.SecretID, true, 0},
		{true, http.MethodGet, agentapi.PlanPath, op.SecretID, true, 0},
	} {
		name := fmt.Sprintf("server=%v %s %s own=%v", tc.server, tc.method, tc.path, tc.token != op.SecretID)
		t.Run(name, func(t *testing.T) {
			got := serve(tc.server, tc.method, tc.path, tc.token)
			want := tc.wantRefusedAs
			if tc.wantActed {
				want = acted[tc.path]
			}
			if got != want {
				t.Errorf("got %d want %d", got, want)
			}
		})
	}
}

// TestTrustActionsByHandForOperatorsOnServersOnly: a spawn or a destroy
// asked of an agent (what `spawn` and `destroy` send the leader) is taken
// by a server for an operator's token only, sent over TLS; a client's
// agent refuses it whatever the token, and what the leader cannot do as
// asked is refused with why, before anything is written.
func TestTrustActionsByHandForOperatorsOnServersOnly(t *testing.T) {
	a, _ := startAgent(t)
	op, _, err := a.consul.ACL().TokenCreate(&api.ACLToken{Description: "trust test operator", Policies: []*api.ACLTokenPolicyLink{{ID: kvschema.GlobalManagementPolicyID}}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	serve := func(server bool, method, path, token, body string) (int, string) {
		h := &httpServer{
			cfg:    nodeconfig.Config{MachineID: "m", ACLToken: "own-token-of-the-machine", ConsulServer: server}.WithDefaults(),
			consul: a.consul, store: a.store, mirror: a.mirror, elector: a.elector, metrics: telemetry.New(), clock: a.Clock, log: a.Log,
		}
		req := httptest.NewRequest(method, path, strings.NewReader(body))
		req.RemoteAddr, req.TLS = "192.0.2.7:40000", &tls.ConnectionState{}
		req.Header.Set("Authorization", "Bearer "+token)
		rec := httptest.NewRecorder()
		h.handler().ServeHTTP(rec, req)
		return rec.Code, rec.Body.String()
	}
	spawn, destroy := agentapi.MachinesPath, agentapi.MachinesPath+"/worker-0a1b2c3d"
	for _, tc := range []struct {
		server       bool
		method, path string
		token, body  string
		want         int
		says         string
	}{
		{false, http.MethodPost, spawn, op.SecretID, `{"machine_type": "server"}`, http.StatusForbidden, "client"},
		{false, http.MethodDelete, destroy, "own-token-of-the-machine", "", http.StatusForbidden, "client"},
		{true, http.MethodPost, spawn, "not-a-token-of-this-cluster-at-all!!", `{"machine_type": "server"}`, http.StatusUnauthorized, "operators only"},
		{true, http.MethodPost, spawn, op.SecretID, `{"machine_type": "nope"}`, http.StatusUnprocessableEntity, `no machine type "nope"`},
		{true, http.MethodPost, spawn, op.SecretID, `{"machine_type": "server", "backend": "vagrant"}`, http.StatusUnprocessableEntity, `no backend "vagrant"`},
		{true, http.MethodPost, spawn, op.SecretID, `not json`, http.StatusBadRequest, "machine_type"},
		{true, http.MethodDelete, destroy, op.SecretID, "", http.StatusUnprocessableEntity, "no machine"},
	} {
		t.Run(fmt.Sprintf("server=%v %s %s %s", tc.server, tc.method, tc.path, tc.body), func(t *testing.T) {
			got, body := serve(tc.server, tc.method, tc.path, tc.token, tc.body)
			if got != tc.want || !strings.Contains(body, tc.says) {
				t.Errorf("got %d %q, want %d saying %q", got, body, tc.want, tc.says)
			}
		})
	}
	if recs, _, err := (&reconcile.Inventory{Store: a.store}).List(context.Background(), nil); err != nil || len(recs) != 1 {
		t.Errorf("inventory after refused actions: %d records, %v; want the agent's own alone", len(recs), err)
	}
}

// TestFloorPlanDestroyByHandOutlivesARace: a destroy by hand whose
// machine's record a pass rewrites between the leader's observation and
// the removal's check-and-set is decided again on the record as it is
// now, not refused with a 500.
func TestFloorPlanDestroyByHandOutlivesARace(t *testing.T) {
	a, _ := startAgent(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	rec, err := a.inventory.Put(ctx, reconcile.Record{ID: "worker-0a1b2c3d", Type: "worker", State: reconcile.StateJoined})
	if err != nil {
		t.Fatal(err)
	}
	raced := false
	_, err = a.elector.Act(ctx, func(p *rules.Platform, obs reconcile.Observed, now time.Time) (state.Action, error) {
		if !raced {
			// A pass writes the record after this observation.
			raced = true
			r := rec
			r.Reason = "marked by a pass meanwhile"
			if _, err := a.inventory.Put(ctx, r); err != nil {
				t.Fatal(err)
			}
		}
		return reconcile.DestroyByHand(p, obs, now, "worker-0a1b2c3d")
	})
	if err != nil {
		t.Fatalf("destroy by hand after a pass wrote the record: %v", err)
	}
	waitFor(t, 30*time.Second, "the record removed", func() bool {
		_, ok, err := a.inventory.Get(ctx, "worker-0a1b2c3d")
		return err == nil && !ok
	})
}
