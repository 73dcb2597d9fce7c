package reconcile

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/raptiformica/raptiformica/backends"
	"github.com/raptiformica/raptiformica/internal/kvschema"
	"github.com/raptiformica/raptiformica/internal/pki"
	"github.com/raptiformica/raptiformica/internal/state"
	"github.com/raptiformica/raptiformica/internal/testconsul"
)

// TestTrustRolesFromRaftNotGossip: a client that holds the gossip key and
// its own (client) certificate restarts its Consul as a server. Its gossip
// then says role=consul, and Consul's leader even lists it in Raft as a
// non-voter; but it can never become a voter, since the leader cannot read
// its stats over mutual TLS. The leader must not take it for a server: a
// server's spawn, whose node config carries the cluster's token and the
// CA key, is never placed on it, though it offers the backend and the
// leader cannot run it itself.
func TestTrustRolesFromRaftNotGossip(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test: needs Consul (run without -short)")
	}
	t.Parallel()
	ca, err := pki.NewCA("trust")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	tlsConfig := func(name string, server bool) string {
		t.Helper()
		cert, err := ca.Issue(name, server)
		if err != nil {
			t.Fatal(err)
		}
		for file, pem := range map[string]string{"ca.pem": ca.CertPEM, name + ".pem": cert.CertPEM, name + "-key.pem": cert.KeyPEM} {
			if err := os.WriteFile(filepath.Join(dir, file), []byte(pem), 0o600); err != nil {
				t.Fatal(err)
			}
		}
		cfg, _ := json.Marshal(map[string]any{"tls": map[string]any{
			"defaults": map[string]any{
				"ca_file": filepath.Join(dir, "ca.pem"), "cert_file": filepath.Join(dir, name+".pem"), "key_file": filepath.Join(dir, name+"-key.pem"),
				"verify_incoming": true, "verify_outgoing": true,
			},
			"internal_rpc": map[string]any{"verify_server_hostname": true},
		}})
		file := filepath.Join(dir, name+".json")
		if err := os.WriteFile(file, cfg, 0o600); err != nil {
			t.Fatal(err)
		}
		return file
	}
	seedIP := testconsul.FreeIP()
	seedName := "test-" + seedIP
	seed, err := testconsul.StartWith("-config-file", tlsConfig(seedName, true))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(seed.Stop)
	seedName = seedNodeName(t, seed)
	// The rogue: a client's certificate, a server's mode.
	rogue, err := testconsul.StartUnjoined(testconsul.FreeIP(), "worker-rogue", seed.IP, "-server", "-config-file", tlsConfig("worker-rogue", false))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(rogue.Stop)
	// Its gossip says server: the attack's premise, seen by the leader.
	if !pollUntil(t, time.Minute, func() bool {
		ms, err := seed.Client.Agent().Members(false)
		if err != nil {
			return false
		}
		i := slices.IndexFunc(ms, func(m *api.AgentMember) bool { return m.Name == "worker-rogue" })
		return i >= 0 && ms[i].Status == 1 && ms[i].Tags[api.MemberTagKeyRole] == api.MemberTagValueRoleServer
	}) {
		t.Fatal("the rogue server never showed as an alive member with role=consul")
	}
	// Longer than autopilot's stabilization time, after which a healthy
	// server would be a voter.
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		cfg, err := seed.Client.Operator().RaftGetConfiguration(nil)
		if err == nil && slices.ContainsFunc(cfg.Servers, func(s *api.RaftServer) bool { return s.Node == "worker-rogue" && s.Voter }) {
			t.Fatal("the rogue became a Raft voter: Consul's mutual TLS did not keep it out")
		}
		time.Sleep(500 * time.Millisecond)
	}

	ctx := context.Background()
	inv := &Inventory{Store: kvschema.New(seed.Client)}
	if _, err := inv.Put(ctx, Record{ID: seedName, Type: "server", Backend: "local", State: StateJoined, Seed: true, Created: t0, Updated: t0}); err != nil {
		t.Fatal(err)
	}
	offer, _ := json.Marshal(state.Offer{Machine: "worker-rogue", Backends: map[string]state.BackendOffer{"local": {Available: true, Listed: true}}})
	if _, err := seed.Client.KV().Put(&api.KVPair{Key: kvschema.Offers + "worker-rogue", Value: offer}, nil); err != nil {
		t.Fatal(err)
	}
	obs, err := Observe(ctx, seed.Client, inv, nil, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if m := obs.Members["worker-rogue"]; m.RaftVoter || m.Voter {
		t.Errorf("the rogue is a proven server to the leader: %+v", m)
	}
	if m := obs.Members[seedName]; !m.Server || !m.RaftVoter {
		t.Errorf("the seed, the one voter, is not a server to the leader: %+v", m)
	}
	obs.Self = seedName
	obs.BackendErrors["local"] = "unavailable: not on the leader in this test"
	d := Plan(platform(t, threeServers), obs, time.Now())
	for _, a := range d.Actions {
		if a.Kind == state.KindSpawn && a.Host == "worker-rogue" {
			t.Errorf("a server's spawn was placed on the rogue: %+v", a)
		}
	}
	if !slices.ContainsFunc(d.Waiting, func(w string) bool { return strings.Contains(w, "machine \"server\"") }) {
		t.Errorf("waiting %q: want the servers still to place", d.Waiting)
	}
}

// seedNodeName is the node name of a dev agent.
func seedNodeName(t *testing.T, s *testconsul.Server) string {
	t.Helper()
	self, err := s.Client.Agent().NodeName()
	if err != nil {
		t.Fatal(err)
	}
	return self
}

// TestTrustRecordsBoundToTheirKeys: a record stored at one machine's key
// that names another machine speaks for nobody. The worker that may write
// only its own key writes {"id": "<a server>", "state": "destroying"}
// there: the leader must neither read it as the server's record (and so
// destroy the server) nor fail its pass on it; the status names it.
func TestTrustRecordsBoundToTheirKeys(t *testing.T) {
	inv := needConsul(t)
	ctx := context.Background()
	if _, err := inv.Put(ctx, Record{ID: "server-a", Type: "server", Backend: "local", State: StateJoined, Created: t0, Updated: t0}); err != nil {
		t.Fatal(err)
	}
	forged, _ := json.Marshal(Record{ID: "server-a", Type: "server", State: StateDestroying, Reason: "forged"})
	if _, err := consul.Client.KV().Put(&api.KVPair{Key: kvschema.Inventory + "worker-x", Value: forged}, nil); err != nil {
		t.Fatal(err)
	}
	huge := append([]byte(`{"id": "worker-y", "reason": "`), make([]byte, state.MaxRecordSize)...)
	for i := 30; i < len(huge); i++ {
		huge[i] = 'x'
	}
	huge = append(huge, `"}`...)
	if _, err := consul.Client.KV().Put(&api.KVPair{Key: kvschema.Inventory + "worker-y", Value: huge}, nil); err != nil {
		t.Fatal(err)
	}
	recs, bad, _, err := inv.ListAll(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if r := recs["server-a"]; r.State != StateJoined || r.Reason == "forged" {
		t.Errorf("server-a's record as the leader reads it: %+v, want its own, joined", r)
	}
	if _, ok := recs["worker-x"]; ok {
		t.Errorf("the forged record is read as worker-x's: %+v", recs["worker-x"])
	}
	var keys []string
	for _, b := range bad {
		keys = append(keys, b.Key)
	}
	if want := []string{kvschema.Inventory + "worker-x", kvschema.Inventory + "worker-y"}; !slices.Equal(keys, want) {
		t.Errorf("bad records %q, want %q", keys, want)
	}
	if len(bad) > 0 && !strings.Contains(bad[0].Error, `names "server-a"`) {
		t.Errorf("why worker-x's is refused: %q", bad[0].Error)
	}
	if _, _, err := inv.Get(ctx, "worker-x"); err == nil {
		t.Error("Get of worker-x read the record that names server-a")
	}
}

// TestTrustClientListRestoresNothingThatCounts: a client may list any
// gossiping name as a machine of its own, of any type, made long ago. The
// leader restores a record from such a list only on top of the
// description (manual: it neither counts toward its type nor displaces
// anything), never a server's: otherwise a fake "server" puts the type
// over its max, and a real server is scaled down.
func TestTrustClientListRestoresNothingThatCounts(t *testing.T) {
	p := platform(t, threeServers+`machine "app" {
  min = 1
  max = 1
}
backend "docker" {
  type = "docker"
}
`)
	obs := with(cluster("server", "a", "b", "c"), func(o *Observed) {
		o.Self = "a"
		o.Records["w"] = Record{ID: "w", Type: "app", Backend: "local", State: StateJoined, Created: t0, Updated: t0}
		o.Members["w"] = Member{Name: "w", Status: state.MemberAlive}
		o.Instances["local"]["w"] = backends.Instance{MachineID: "w", MachineType: "app", Running: true, Created: t0}
		list := hostList("w", "docker", 5, "fake-server")
		bo := list.Backends["docker"]
		bo.Instances = append(bo.Instances, backends.Instance{MachineID: "fake-app", MachineType: "app", Running: true, Created: t0.Add(-time.Hour)})
		for i := range bo.Instances {
			bo.Instances[i].Created = t0.Add(-time.Hour)
		}
		list.Backends["docker"] = bo
		o.Offers = offers(offering("a"), list)
		for _, id := range []string{"fake-server", "fake-app"} {
			o.Members[id] = Member{Name: id, Status: state.MemberAlive}
		}
	})
	d := Plan(p, obs, t0)
	for _, a := range d.Actions {
		switch {
		case a.Kind == state.KindScaleDown:
			t.Errorf("a real machine is scaled down for a client's list: %+v", a)
		case a.Kind == state.KindRestoreRecord && a.MachineID == "fake-server":
			t.Errorf("a server's record restored from a client's list: %+v", a)
		case a.Kind == state.KindRestoreRecord && a.MachineID == "fake-app" && !a.Manual:
			t.Errorf("a record restored from a client's list counts toward its type: %+v", a)
		}
	}
	if got := d.Types["server"]; got.Live != 3 {
		t.Errorf("servers: %+v, want the three real ones live", got)
	}
	if got := d.Types["app"]; got.Live != 1 {
		t.Errorf("apps: %+v, want the one real one live", got)
	}
}

// TestTrustRolesFromRaftFreshNodeID: a server whose Consul was started
// fresh (the survivor of a recovery, whose Consul gets a new node ID) is
// still the server Raft lists under its name at its address: found so
// when the ID its name gives is not in Raft, or it would never count as
// a voter again, and the heal would wait on it forever.
func TestTrustRolesFromRaftFreshNodeID(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test: needs Consul (run without -short)")
	}
	t.Parallel()
	s, err := testconsul.StartWith("-node-id", "8a3a1e56-9c1f-4b6e-9d3e-2f1c0b7a6d5e")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Stop)
	name := seedNodeName(t, s)
	inv := &Inventory{Store: kvschema.New(s.Client)}
	obs, err := Observe(context.Background(), s.Client, inv, nil, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if m := obs.Members[name]; !m.Server || !m.RaftVoter {
		t.Errorf("a server of a fresh node ID, to the leader: %+v, want a server and a voter", m)
	}
}
