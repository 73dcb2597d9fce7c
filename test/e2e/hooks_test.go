package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestHooksClusterChangeOnEveryNode: a cluster_change hook runs on every
// machine of a local cluster, debounced: ten workers asked for in one
// apply (min 0 to 10, max_concurrent_spawns 10) join in a burst, which is
// at most two runs on any machine (one after the first change settles, one
// an interval later for the rest); and a later change (one worker removed)
// runs it on every machine left.
func TestHooksClusterChangeOnEveryNode(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	runs := filepath.Join(c.dir, "cluster-change")
	if err := os.MkdirAll(runs, 0o755); err != nil {
		t.Fatal(err)
	}
	// The hook appends a time to a file named after the machine it runs
	// on, which it reads from the event on its standard input.
	desc := func(workers int) string {
		src := platformWith(1, 1, "5s", fmt.Sprintf(`machine "worker" {
  min      = %d
  max      = %d
  backends = ["local"]
}
hook "cluster_change" {
  command = ["/bin/sh", "-c", "id=$(grep -o '\"machine_id\":\"[^\"]*\"' | head -n 1 | cut -d '\"' -f 4); date +%%s.%%N >> \"$0/$id\"", %q]
}
`, workers, max(workers, 1), runs), false)
		return strings.Replace(src, `cooldown          = "1s"`, "cooldown          = \"1s\"\n  max_concurrent_spawns = 10", 1)
	}
	count := func() map[string]int {
		n := map[string]int{}
		entries, _ := os.ReadDir(runs)
		for _, e := range entries {
			b, _ := os.ReadFile(filepath.Join(runs, e.Name()))
			n[e.Name()] = strings.Count(string(b), "\n")
		}
		return n
	}
	timeline := func() string {
		var sb strings.Builder
		entries, _ := os.ReadDir(runs)
		for _, e := range entries {
			b, _ := os.ReadFile(filepath.Join(runs, e.Name()))
			fmt.Fprintf(&sb, "%s: %s\n", e.Name(), strings.Join(strings.Fields(string(b)), " "))
		}
		return sb.String()
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("cluster_change runs per machine:\n%s", timeline())
		}
	})

	c.up(c.writePlatform("platform.hcl", desc(0)))
	v := c.waitAgree(1, time.Minute, "after up")
	server := v.joined[0]
	// The server's agent looks for cluster_change hooks every 5 s before
	// it watches the membership.
	time.Sleep(6 * time.Second)
	before := count()

	begin := time.Now()
	if out, errOut, code := c.rf("platform", "apply", c.writePlatform("ten.hcl", desc(10))); code != 0 {
		t.Fatalf("apply: exit %d\n%s%s", code, out, errOut)
	}
	c.waitAgree(11, 3*time.Minute, "ten workers asked for at once")
	t.Logf("ten workers joined %s after the apply", time.Since(begin).Round(time.Millisecond))
	// Past the interval (10 s) and the settling (1 s) since the last
	// join: whatever the burst makes a machine run has run.
	time.Sleep(15 * time.Second)
	burst := count()
	for id, n := range burst {
		if n-before[id] > 2 {
			t.Errorf("%s ran cluster_change %d times for one burst of joins, want at most 2", id, n-before[id])
		}
	}
	if burst[server]-before[server] < 1 {
		t.Errorf("the server %s did not run cluster_change for ten joins", server)
	}

	// One worker leaves (max 9): every machine left runs the hook, the
	// workers that joined last and saw no join after their own included.
	if out, errOut, code := c.rf("platform", "apply", c.writePlatform("nine.hcl", desc(9))); code != 0 {
		t.Fatalf("apply: exit %d\n%s%s", code, out, errOut)
	}
	v = c.waitAgree(10, 2*time.Minute, "one worker removed")
	waitUntil(t, time.Minute, "every machine left runs cluster_change for the worker that left", func() bool {
		now := count()
		for _, id := range v.joined {
			if now[id] <= burst[id] {
				return false
			}
		}
		return true
	})
}
