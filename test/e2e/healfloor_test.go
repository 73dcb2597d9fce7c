package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

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
		}
	}
}
