package e2e

import (
	"encoding/json"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/raptiformica/raptiformica/internal/consulclient"
	"github.com/raptiformica/raptiformica/reconcile"
)

// TestScaleClientsMirrorTheirOwnRecord runs a server and two workers
// (Consul clients, with their own tokens): each worker's mirror holds its
// own record and the server's address, never another machine's record;
// the server's holds every record, from the leader's snapshot.
func TestScaleClientsMirrorTheirOwnRecord(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	c.up(c.writePlatform("platform.hcl", platformWith(1, 1, "2s", "machine \"worker\" {\n  min      = 2\n  backends = [\"local\"]\n}\n", false)))
	v := c.waitAgree(3, 2*time.Minute, "a server and two workers")
	var server string
	for _, m := range c.machines() {
		if m.Config.ConsulServer {
			server = m.Config.BindAddr
		}
	}
	records := func(dataDir string) []string {
		b, err := os.ReadFile(filepath.Join(dataDir, "mirror", "inventory.json"))
		if err != nil {
			return nil
		}
		var recs map[string]reconcile.Record
		if json.Unmarshal(b, &recs) != nil {
			return nil
		}
		return slices.Sorted(maps.Keys(recs))
	}
	for _, m := range c.machines() {
		id, dir := m.Config.MachineID, m.Config.DataDir
		if m.Config.ConsulServer {
			poll(30*time.Second, func() bool { return slices.Equal(records(dir), v.joined) })
			if got := records(dir); !slices.Equal(got, v.joined) {
				t.Errorf("server %s mirrors %v, want every record %v", id, got, v.joined)
			}
			continue
		}
		poll(30*time.Second, func() bool { return slices.Equal(records(dir), []string{id}) })
		if got := records(dir); !slices.Equal(got, []string{id}) {
			t.Errorf("worker %s mirrors %v, want its own record alone", id, got)
		}
		b, err := os.ReadFile(filepath.Join(dir, "mirror", "servers.json"))
		var servers []string
		if err == nil {
			err = json.Unmarshal(b, &servers)
		}
		if err != nil || !slices.Equal(servers, []string{server}) {
			t.Errorf("worker %s keeps servers %v (%v), want [%s]", id, servers, err, server)
		}
	}
}

// TestScaleHealsBeforeQuorumLostAfter SIGKILLs two of three servers on a
// cluster whose quorum_lost_after is five minutes. The survivor sees a
// majority of the servers failed, which no wait brings back, and the local
// backend confirms both gone: it recovers on that evidence at once, not
// after quorum_lost_after, and the cluster is whole again well before it.
// The time is logged beside the fresh `up`'s, for whoever compares (the
// benchmarks measure; a test on a shared machine does not time-box).
func TestScaleHealsBeforeQuorumLostAfter(t *testing.T) {
	t.Parallel()
	const lostAfter = 5 * time.Minute
	c := newCluster(t)
	src := strings.Replace(quorumPlatform(3, ""), `quorum_lost_after = "3s"`, `quorum_lost_after = "5m"`, 1)
	if !strings.Contains(src, `quorum_lost_after = "5m"`) {
		t.Fatalf("description without the long quorum_lost_after:\n%s", src)
	}
	begin := time.Now()
	c.up(c.writePlatform("platform.hcl", src))
	v := c.waitAgree(3, 2*time.Minute, "after up")
	up := time.Since(begin)
	survivor, dead := v.joined[0], v.joined[1:]
	killed := time.Now()
	for _, id := range dead {
		c.kill(id)
	}
	// Whole again, without the dead: well within quorum_lost_after, which
	// the wait would otherwise have to outlast.
	c.waitAgree(3, lostAfter-time.Minute, "after killing two of three servers", dead...)
	heal := time.Since(killed)
	t.Logf("whole again %s after losing two of three servers (quorum_lost_after %s); a fresh up took %s", heal.Round(time.Second), lostAfter, up.Round(time.Second))
	for _, m := range c.machines() {
		if m.Config.MachineID == survivor {
			b, _ := os.ReadFile(filepath.Join(m.Dir, "agent.log"))
			if !strings.Contains(string(b), "recovering on backend evidence") {
				t.Errorf("the survivor %s did not recover on backend evidence; its log:\n%s", survivor, b)
			}
			// The heal's steps, for whoever looks for where its time goes.
			for _, line := range strings.Split(string(b), "\n") {
				for _, step := range []string{"quorum lost", "recovering", "quorum restored", "lost server given up", "leader lock", "became leader"} {
					if strings.Contains(line, step) {
						t.Log(line)
						break
					}
				}
			}
		}
	}
}

// TestScaleAReapedServerLeavesRaftAtOnce: a server reaped on its backend's
// word while Consul's failure detector still has it alive (Consul's own
// gossip timings here: the description plans more machines than fast
// gossip is kept for) is out of the Raft configuration by the time its
// record is gone. Made to leave without a prune, Consul would keep it a
// voter until its failure detector had it failed, and one more death in
// between would lose quorum.
func TestScaleAReapedServerLeavesRaftAtOnce(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	src := platformWith(3, 3, "2s", "", false) + `
machine "spare" {
  min      = 0
  max      = 30
  backends = ["local"]
}
`
	c.up(c.writePlatform("platform.hcl", src))
	v := c.waitAgree(3, 2*time.Minute, "after up")
	victim, survivor := v.follower(), v.leader
	id := c.identity()
	cl, err := consulclient.New(consulclient.Target{Host: v.records[survivor].Address, Token: id.ManagementToken, CACert: id.CACert})
	if err != nil {
		t.Fatal(err)
	}
	// By its node ID: the Raft configuration names its servers by
	// address, and a replacement may listen on the dead one's.
	node, _, err := cl.Catalog().Node(victim, nil)
	if err != nil || node == nil || node.Node == nil {
		t.Fatalf("the catalog's node of %s: %v", victim, err)
	}
	victimID := node.Node.ID
	// Derived from its name, the reaper finds it in the Raft
	// configuration without asking the catalog, which may not answer
	// right after the Raft leader has changed.
	if victimID != consulclient.NodeID(victim) {
		t.Errorf("%s has node ID %s, not the one derived from its name, %s", victim, victimID, consulclient.NodeID(victim))
	}
	c.kill(victim)
	var inRaft bool
	if !poll(time.Minute, func() bool {
		v, err := c.view()
		if err != nil {
			return false
		}
		if _, recorded := v.records[victim]; recorded {
			return false
		}
		raft, err := cl.Operator().RaftGetConfiguration(nil)
		if err != nil {
			return false
		}
		inRaft = false
		for _, s := range raft.Servers {
			inRaft = inRaft || s.ID == victimID
		}
		return true
	}) {
		t.Fatalf("%s was never reaped", victim)
	}
	alive, _ := memberState(cl, victim)
	if inRaft {
		t.Errorf("%s reaped (its record gone), and still in the Raft configuration (Consul has it alive: %v)", victim, alive)
	}
	c.waitAgree(3, 2*time.Minute, "after the heal", victim)
}
