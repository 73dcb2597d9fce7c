package daemon

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/raptiformica/raptiformica/internal/consulclient"
	"github.com/raptiformica/raptiformica/internal/nodeconfig"
	"github.com/raptiformica/raptiformica/rules"
)

// With a certificate, Consul serves plain HTTP on loopback only and HTTPS
// on the node's addresses, and its RPC is mutual TLS in which only a
// server's certificate may act as a server. A machine of the local backend,
// whose address is a loopback one, serves HTTP there (several share the
// host, each on its own 127.x address).
func TestConsulConfigTLS(t *testing.T) {
	tlsCfg := &nodeconfig.TLS{CACert: "ca", Cert: "c", Key: "k"}
	for _, tc := range []struct {
		bind, http, https string
	}{
		{"10.0.0.5", "127.0.0.1", "10.0.0.5"},
		{"127.0.0.7", "127.0.0.7", "127.0.0.7"},
	} {
		c := nodeconfig.Config{MachineID: "m", MachineType: "w", DataDir: "/d", BindAddr: tc.bind, ConsulBinary: "consul", TLS: tlsCfg}.WithDefaults()
		cc := consulConfigFor(c, nil)
		if cc.Addresses["http"] != tc.http || cc.Addresses["https"] != tc.https {
			t.Errorf("bind %s: http on %q, https on %q; want %q, %q", tc.bind, cc.Addresses["http"], cc.Addresses["https"], tc.http, tc.https)
		}
		if cc.Ports["https"] != nodeconfig.ConsulHTTPSPort || cc.Ports["http"] != nodeconfig.ConsulHTTPPort {
			t.Errorf("bind %s: ports %v", tc.bind, cc.Ports)
		}
		d := cc.TLS.Defaults
		if !d.VerifyIncoming || !d.VerifyOutgoing || !cc.TLS.InternalRPC["verify_server_hostname"] || d.CAFile != "/d/tls/ca.pem" || d.KeyFile != "/d/tls/key.pem" {
			t.Errorf("bind %s: tls %+v", tc.bind, cc.TLS)
		}
		if cc.TLS.HTTPS["verify_incoming"] {
			t.Errorf("HTTPS asks for client certificates: its callers show tokens")
		}
	}
}

// TestScaleFastGossipOnlyOnSmallClusters: fast gossip and a fast Raft
// lease pay on a few machines; a node made for a description that asks
// for more keeps Consul's own timings, whatever its backend's network
// would allow.
func TestScaleFastGossipOnlyOnSmallClusters(t *testing.T) {
	base := nodeconfig.Config{MachineID: "m", MachineType: "w", DataDir: "/d", BindAddr: "127.0.0.7", ConsulBinary: "consul", FastGossip: true}.WithDefaults()
	if cc := consulConfigFor(base, nil); cc.GossipLAN["probe_interval"] != "500ms" {
		t.Errorf("a small cluster on loopback: gossip %v, want fast", cc.GossipLAN)
	}
	large := base
	large.DefaultGossip = true
	if cc := consulConfigFor(large, nil); cc.GossipLAN != nil {
		t.Errorf("a large cluster: gossip %v, want Consul's own", cc.GossipLAN)
	}
	server := base
	server.ConsulServer = true
	if cc := consulConfigFor(server, nil); cc.Performance["raft_multiplier"] != 1 {
		t.Errorf("a server of a small cluster: performance %v, want raft_multiplier 1", cc.Performance)
	}
	server.DefaultGossip = true
	if cc := consulConfigFor(server, nil); cc.Performance != nil {
		t.Errorf("a server of a large cluster: performance %v, want Consul's own", cc.Performance)
	}
	small := &rules.Platform{Machines: map[string]rules.MachineType{"server": {Min: 3, Max: 3}, "worker": {Min: 2, Max: 5}}}
	big := &rules.Platform{Machines: map[string]rules.MachineType{"server": {Min: 3, Max: 3}, "worker": {Min: 100, Max: 100}}}
	if small.PlannedMachines() > nodeconfig.FastGossipMax || big.PlannedMachines() <= nodeconfig.FastGossipMax {
		t.Errorf("planned machines: small %d, big %d, against %d", small.PlannedMachines(), big.PlannedMachines(), nodeconfig.FastGossipMax)
	}
}

// A new machine's Consul gets the node ID derived from its name; one whose
// Consul already made its own keeps it, or it would come back as a new Raft
// peer beside its old self.
func TestConsulNodeIDIsDerivedUnlessConsulHasOne(t *testing.T) {
	dir := t.TempDir()
	want := consulclient.NodeID("server-1")
	if got := nodeIDFor(dir, "server-1"); got != want {
		t.Errorf("a fresh data dir: node ID %q, want %q", got, want)
	}
	if err := os.WriteFile(filepath.Join(dir, "node-id"), []byte(strings.ToUpper(want)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if got := nodeIDFor(dir, "server-1"); got != want {
		t.Errorf("Consul's file holds the derived ID: node ID %q, want %q", got, want)
	}
	if err := os.WriteFile(filepath.Join(dir, "node-id"), []byte("5e9d1f66-8c2c-4f0e-9a43-0d2b4f9b7a11"), 0o600); err != nil {
		t.Fatal(err)
	}
	if got := nodeIDFor(dir, "server-1"); got != "" {
		t.Errorf("Consul made its own ID before: node ID %q, want it left to Consul", got)
	}
}

// The recovery writes peers.json with the ID Consul runs with: the derived
// one where Consul keeps none on disk, Consul's own where it does.
func TestConsulNodeIDInItsData(t *testing.T) {
	dir := t.TempDir()
	if id, err := consulNodeIDIn(dir, "server-1"); err != nil || id != consulclient.NodeID("server-1") {
		t.Errorf("no node-id file: %q, %v; want the derived ID", id, err)
	}
	own := "5e9d1f66-8c2c-4f0e-9a43-0d2b4f9b7a11"
	if err := os.WriteFile(filepath.Join(dir, "node-id"), []byte(own+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if id, err := consulNodeIDIn(dir, "server-1"); err != nil || id != own {
		t.Errorf("Consul's own node-id file: %q, %v; want %q", id, err, own)
	}
}
