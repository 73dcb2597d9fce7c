package daemon

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/raptiformica/raptiformica/internal/consulclient"
	"github.com/raptiformica/raptiformica/internal/nodeconfig"
	"github.com/raptiformica/raptiformica/rules"
)

// With a certificate, Consul serves plain HTTP on loopback and its socket only and HTTPS
// on the node's addresses, and its RPC is mutual TLS in which only a
// server's certificate may act as a server. A machine of the local backend,
// whose address is a loopback one, serves HTTP there (several share the
// host, each on its own 127.x address).
func TestConsulConfigTLS(t *testing.T) {
	tlsCfg := &nodeconfig.TLS{CACert: "ca", Cert: "c", Key: "k"}
	for _, tc := range []struct {
		bind, http, https string
	}{
		{"10.0.0.5", "127.0.0.1 unix:///d/consul-http.sock", "10.0.0.5"},
		{"127.0.0.7", "127.0.0.7 unix:///d/consul-http.sock", "127.0.0.7"},
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

// A machine's first Consul gets the node ID derived from its name, in the
// file Consul reads it from; a Consul that made its own keeps it (or it
// would come back as a new Raft peer beside its old self), and so does one
// whose data was wiped after its first start: back under its old ID with an
// empty log, a server would be a voter with no memory of its votes.
func TestConsulNodeIDIsDerivedOnlyAtTheFirstStart(t *testing.T) {
	dataDir := t.TempDir()
	consulDir := filepath.Join(dataDir, "consul")
	if err := os.MkdirAll(consulDir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := seedNodeID(dataDir, consulDir, "server-1"); err != nil {
		t.Fatal(err)
	}
	if id, err := consulNodeID(consulDir); err != nil || id != consulclient.NodeID("server-1") {
		t.Errorf("first start: node ID %q, %v; want the derived %s", id, err, consulclient.NodeID("server-1"))
	}
	if err := os.RemoveAll(consulDir); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(consulDir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := seedNodeID(dataDir, consulDir, "server-1"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(consulDir, "node-id")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("after a wipe of Consul's data: a node-id file (%v), want none, for Consul to make a new one", err)
	}

	older := t.TempDir()
	own := "5E9D1F66-8C2C-4F0E-9A43-0D2B4F9B7A11"
	if err := os.WriteFile(filepath.Join(older, "node-id"), []byte(own+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := seedNodeID(t.TempDir(), older, "server-2"); err != nil {
		t.Fatal(err)
	}
	if id, err := consulNodeID(older); err != nil || id != strings.ToLower(own) {
		t.Errorf("Consul's own ID: %q, %v; want it kept, as Consul reads it (lower case)", id, err)
	}
}
