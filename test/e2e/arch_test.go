package e2e

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/raptiformica/raptiformica/internal/arch"
	"github.com/raptiformica/raptiformica/internal/kvschema"
	"github.com/raptiformica/raptiformica/internal/nodeconfig"
	"github.com/raptiformica/raptiformica/provision"
	"github.com/raptiformica/raptiformica/reconcile"
)

// TestArchNoBuildRefused: a host whose architecture has no build at hand
// (a 32-bit x86 personality, `setarch i686`, under which `uname -m` says
// i686 as on an old desktop; `make test` builds no 386 pair) is refused by
// `raptiformica adopt` once detected, with a message that names the
// architecture and what is missing, and nothing is installed or recorded;
// and a host of another architecture than its backend says is refused.
func TestArchNoBuildRefused(t *testing.T) {
	t.Parallel()
	l := newSSHLab(t)
	ip := l.hostWith(t, 10, "exec setarch i686 /usr/sbin/sshd -D -e")
	name := fmt.Sprintf("%s-%d", l.network, 10)
	if got := strings.TrimSpace(dockerRun(t, "exec", name, "setarch", "i686", "uname", "-m")); got != "i686" {
		t.Fatalf("uname -m under setarch i686: %q", got)
	}
	out, errOut, code := l.adopt("root@" + ip)
	// No 386 agent is beside the binary under test; a 386 Consul may be in
	// the cache, from a `make package ARCHS=386` on this machine.
	for _, want := range []string{
		"adopt root@" + ip + ": detect: architecture i686: no build for linux/386 at hand: no raptiformica (looked for ",
		filepath.Join(filepath.Dir(binary), "linux-386", "raptiformica"),
		"`make package ARCHS=386` builds them; nothing was installed",
	} {
		if code != 1 || !strings.Contains(errOut, want) {
			t.Errorf("adopt of an i686 host: exit %d, want 1 and %q in\n%s%s", code, want, out, errOut)
		}
	}
	if left := dockerRun(t, "exec", name, "sh", "-c", "ls -A /usr/local/bin 2>/dev/null; test -e /etc/raptiformica && echo /etc/raptiformica; true"); left != "" {
		t.Errorf("a refused adoption left files behind: %s", left)
	}
	if recs := l.recordsOf("worker"); len(recs) != 0 {
		t.Errorf("inventory after a refused adoption: %v, want nothing", recs)
	}

	// A backend that says its machines are arm64 (an ssh pool's or an
	// exec backend's arch setting, which placement trusted) is refused an
	// x86_64 host, though its binaries are at hand.
	consul, err := nodeconfig.FindConsul()
	if err != nil {
		t.Fatal(err)
	}
	pool := &provision.Adopter{
		Dialer:    provision.Dialer{Auth: provision.Auth{KeyFiles: []string{l.key}}, Trust: provision.Trust{Store: provision.StoreHostKeys{Store: kvschema.New(l.client()).TrustedHostKeys()}}},
		Artifacts: arch.Artifacts{Binary: binary, Consul: consul},
		Arch:      "arm64",
	}
	ip = l.host(t, 11)
	_, err = pool.Adopt(context.Background(), provision.AdoptSpec{Host: provision.Host{User: "root", Addr: ip, Port: 22}, Node: nodeconfig.Config{MachineID: "worker-pi", MachineType: "worker"}})
	if want := "adopt root@" + ip + ": detect: architecture x86_64 is linux/amd64, and the backend's machines are to be linux/arm64 (its arch setting); nothing was installed"; err == nil || err.Error() != want {
		t.Errorf("adopt of an x86_64 host for arm64 machines:\n got %v\nwant %s", err, want)
	}
}

// TestArchSleepingHostReturns: a machine that sleeps (a laptop closed: its
// agent and Consul frozen, here by SIGSTOP to its process group) is seen
// failed, and, woken within its grace period, comes back as the same
// member: its record joined again, no replacement made meanwhile.
func TestArchSleepingHostReturns(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	c.up(c.writePlatform("platform.hcl", platformWith(3, 3, "10m", `machine "laptop" {
  min      = 1
  max      = 1
  backends = ["local"]
}
`, true)))
	v := c.waitAgree(4, 2*time.Minute, "three servers and a laptop")
	var id string
	for rid, r := range v.records {
		if r.Type == "laptop" {
			id = rid
		}
	}
	pid := 0
	for _, m := range c.machines() {
		if m.Config.MachineID == id && m.Running {
			pid = m.PID
		}
	}
	if id == "" || pid == 0 {
		t.Fatalf("no running laptop in %v", v)
	}
	spawned := c.spawns()
	if err := syscall.Kill(-pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	asleep := time.Now()
	woken := false
	wake := func() {
		if !woken {
			woken = true
			_ = syscall.Kill(-pid, syscall.SIGCONT)
		}
	}
	defer wake()
	waitUntil(t, 2*time.Minute, "the sleeping laptop seen failed and recorded so", func() bool {
		v, err := c.view()
		return err == nil && !contains(v.alive, id) && !v.records[id].FailedSince.IsZero()
	})
	// Asleep a while longer than it took to be seen failed: a leader that
	// would replace it has had its passes.
	time.Sleep(time.Since(asleep))
	wake()
	t.Logf("%s asleep for %v", id, time.Since(asleep).Round(time.Second))
	waitUntil(t, 2*time.Minute, "the laptop back as the same member, joined", func() bool {
		v, err := c.view()
		r := v.records[id]
		return err == nil && contains(v.alive, id) && r.State == reconcile.StateJoined && r.FailedSince.IsZero()
	})
	if n := c.spawns(); n != spawned {
		t.Errorf("spawned %d machines while the laptop slept, want none", n-spawned)
	}
	for _, r := range c.recordsOf("laptop") {
		if r.ID != id {
			t.Errorf("a laptop %s recorded beside the one asleep (%s)", r.ID, id)
		}
	}
}
