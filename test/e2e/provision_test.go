package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/raptiformica/raptiformica/internal/nodeconfig"
	"github.com/raptiformica/raptiformica/internal/state"
)

// provisionPlatform is three local servers that provision themselves from
// the git repository at url with steps (HCL argv lists), and log their
// after_provision events to hookLog.
func provisionPlatform(url, steps, extra, hookLog string) string {
	return fmt.Sprintf(`cluster = "e2e"
policy {
  grace_period      = "30s"
  cooldown          = "1s"
  provision_timeout = "90s"
  resync_interval   = "2s"
}
machine "server" {
  min                   = 3
  consul_server         = true
  backends              = ["local"]
  ready_after_provision = true
  provisioner "motd" {
    source = %q
    steps  = %s
  }
%s}
hook "after_provision" {
  command = ["/bin/sh", "-c", "cat >> \"$0\"; echo >> \"$0\"", %q]
}
`, url, steps, extra, hookLog)
}

// TestProvisionLocal: a server type whose provisioner comes from a local
// git repository installs a file on every local machine, which then
// counts as ready; a changed step reruns it on every machine; a failing
// provisioner is in status with its last lines, and its machines are not
// counted ready (nor replaced).
func TestProvisionLocal(t *testing.T) {
	t.Parallel()
	git := needTool(t, "git", "the git package")
	c := newCluster(t)
	repo := filepath.Join(c.dir, "motd.git")
	for _, args := range [][]string{
		{"init", "--quiet", "--initial-branch=main", repo},
		{"-C", repo, "-c", "user.name=e2e", "-c", "user.email=e2e@example.org", "commit", "--quiet", "--allow-empty", "-m", "empty"},
	} {
		if out, err := exec.Command(git, args...).CombinedOutput(); err != nil {
			t.Fatalf("git %v: %v\n%s", args, err, out)
		}
	}
	if err := os.WriteFile(filepath.Join(repo, "motd"), []byte("hello\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{{"-C", repo, "add", "motd"}, {"-C", repo, "-c", "user.name=e2e", "-c", "user.email=e2e@example.org", "commit", "--quiet", "-m", "motd"}} {
		if out, err := exec.Command(git, args...).CombinedOutput(); err != nil {
			t.Fatalf("git %v: %v\n%s", args, err, out)
		}
	}
	url := "file://" + repo
	hookLog := filepath.Join(c.dir, "after_provision.log")
	// The file lands beside the provisioner's folder, in the machine's
	// own state: each local machine has its own.
	steps1 := `[["cp", "motd", "../motd.installed"]]`
	c.up(c.writePlatform("p1.hcl", provisionPlatform(url, steps1, "", hookLog)))
	c.waitAgree(3, 2*time.Minute, "after up")
	c.waitInstalled(3, "hello\n", 2*time.Minute)
	c.waitProvisioned(3, "ok", time.Minute)

	// A changed step reruns on every machine.
	steps2 := `[["cp", "motd", "../motd.installed"], ["/bin/sh", "-c", "echo v2 >> ../motd.installed"]]`
	if out, errOut, code := c.rf("platform", "apply", c.writePlatform("p2.hcl", provisionPlatform(url, steps2, "", hookLog))); code != 0 {
		t.Fatalf("apply: exit %d: %s %s", code, out, errOut)
	}
	c.waitInstalled(3, "hello\nv2\n", 2*time.Minute)
	c.waitProvisioned(3, "ok", time.Minute)
	b, _ := os.ReadFile(hookLog)
	if n := strings.Count(string(b), `"event":"after_provision"`); n < 6 || !strings.Contains(string(b), `"state":"ok"`) {
		t.Errorf("after_provision fired %d times, want 3 machines x 2 passes:\n%s", n, b)
	}

	// A failing provisioner: reported with its last lines, the machines
	// not counted ready, nothing spawned in their place.
	broken := `  provisioner "broken" {
    steps = [["/bin/sh", "-c", "echo fetching frobnicate; echo 'E: Unable to locate package frobnicate' >&2; exit 100"]]
  }
`
	if out, errOut, code := c.rf("platform", "apply", c.writePlatform("p3.hcl", provisionPlatform(url, steps2, broken, hookLog))); code != 0 {
		t.Fatalf("apply: exit %d: %s %s", code, out, errOut)
	}
	c.waitWaiting(2*time.Minute, "provisioning failed on ", "E: Unable to locate package frobnicate")
	c.waitProvisioned(3, "failed", time.Minute)
	out, _, _ := c.rf("status")
	if !strings.Contains(out, `FAILED (attempt `) || !strings.Contains(out, `provisioner "broken" step 1 (/bin/sh): exit status 100`) ||
		!strings.Contains(out, "| fetching frobnicate") || !strings.Contains(out, "| E: Unable to locate package frobnicate") {
		t.Errorf("status does not show the failed provisioning with its last lines:\n%s", out)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		st := c.reconcileStatus()
		if ts, ok := st.Types["server"]; ok && ts.Live == 0 && ts.Unready == 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("server counts with every machine failing to provision: %+v, want 0 live and 3 unready", st.Types)
		}
		time.Sleep(time.Second)
	}
	time.Sleep(5 * time.Second) // two resync intervals: nothing replaces them
	c.waitAgree(3, 10*time.Second, "machines failing to provision are not replaced")
}

// waitInstalled waits until n machines have the provisioned file with want
// in it.
func (c *testCluster) waitInstalled(n int, want string, timeout time.Duration) {
	c.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		got := map[string]string{}
		done := 0
		for _, m := range c.machines() {
			b, _ := os.ReadFile(filepath.Join(m.Config.DataDir, "provisioners", "motd.installed"))
			got[m.Config.MachineID] = string(b)
			if m.Running && string(b) == want {
				done++
			}
		}
		if done == n {
			return
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("%d of %d machines installed %q: %q", done, n, want, got)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// waitProvisioned waits until `members --json` says n members' provisioning
// is in state.
func (c *testCluster) waitProvisioned(n int, state string, timeout time.Duration) {
	c.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		out, _, _ := c.rf("members", "--json")
		var rows []struct {
			Name        string `json:"name"`
			Provisioned string `json:"provisioned"`
		}
		_ = json.Unmarshal([]byte(out), &rows)
		in := 0
		for _, r := range rows {
			if r.Provisioned == state {
				in++
			}
		}
		if in == n {
			return
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("members: %d of %d provisioned %q:\n%s", in, n, state, out)
		}
		time.Sleep(time.Second)
	}
}

// reconcileStatus is the leader's last pass, as `status --json` says.
func (c *testCluster) reconcileStatus() state.Status {
	c.t.Helper()
	out, _, _ := c.rf("status", "--json")
	var st struct {
		Reconcile *state.Status `json:"reconcile"`
	}
	_ = json.Unmarshal([]byte(out), &st)
	if st.Reconcile == nil {
		return state.Status{}
	}
	return *st.Reconcile
}

// provisionNodeImage builds a node image that can provision itself: the
// project's Debian root filesystem (scripts/rootfs.sh, git included) with
// the two binaries and the git repository at repo copied to
// /srv/git/motd.git. The docker backend's own image is FROM scratch, with
// neither git nor a shell. Its tag is returned; it carries the node-image
// label, so that the run's clean-up removes it with the others.
func provisionNodeImage(t *testing.T, repo string) string {
	t.Helper()
	docker := needDocker(t)
	out, err := exec.Command("../../scripts/rootfs.sh").Output()
	if err != nil {
		if ee, ok := err.(*exec.ExitError); ok {
			t.Fatalf("scripts/rootfs.sh: %v\n%s", err, ee.Stderr)
		}
		t.Fatal(err)
	}
	tarball := strings.TrimSpace(string(out))
	// A tag of this test's own: other tests import a root filesystem of
	// their own making under theirs.
	base := "raptiformica-test/debian-git:bookworm"
	if b, err := exec.Command(docker, "import", "--change", "LABEL raptiformica.node-image=1", tarball, base).CombinedOutput(); err != nil {
		t.Fatalf("docker import %s: %v\n%s", tarball, err, b)
	}
	consul, err := nodeconfig.FindConsul()
	if err != nil {
		t.Fatal(err)
	}
	ctxDir := t.TempDir()
	for src, dst := range map[string]string{binary: "raptiformica", consul: "consul"} {
		b, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(ctxDir, dst), b, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if b, err := exec.Command("cp", "-a", repo, filepath.Join(ctxDir, "motd.git")).CombinedOutput(); err != nil {
		t.Fatalf("copy the repository: %v\n%s", err, b)
	}
	dockerfile := "FROM " + base + "\nCOPY raptiformica consul /usr/local/bin/\nCOPY motd.git /srv/git/motd.git\n" +
		"LABEL raptiformica.node-image=1\nENTRYPOINT [\"/usr/local/bin/raptiformica\"]\n"
	if err := os.WriteFile(filepath.Join(ctxDir, "Dockerfile"), []byte(dockerfile), 0o644); err != nil {
		t.Fatal(err)
	}
	tag := fmt.Sprintf("raptiformica-test/provision-node:%d", time.Now().UnixNano())
	if b, err := exec.Command(docker, "build", "-q", "-t", tag, ctxDir).CombinedOutput(); err != nil {
		t.Fatalf("docker build: %v\n%s", err, b)
	}
	t.Cleanup(func() { _ = exec.Command(docker, "rmi", tag).Run() })
	return tag
}

// gitRepoWithMotd makes a git repository in dir holding a file motd.
func gitRepoWithMotd(t *testing.T, dir, motd string) string {
	t.Helper()
	git := needTool(t, "git", "the git package")
	repo := filepath.Join(dir, "motd.git")
	if out, err := exec.Command(git, "init", "--quiet", "--initial-branch=main", repo).CombinedOutput(); err != nil {
		t.Fatalf("git init: %v\n%s", err, out)
	}
	if err := os.WriteFile(filepath.Join(repo, "motd"), []byte(motd), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{{"-C", repo, "add", "motd"}, {"-C", repo, "-c", "user.name=e2e", "-c", "user.email=e2e@example.org", "commit", "--quiet", "-m", "motd"}} {
		if out, err := exec.Command(git, args...).CombinedOutput(); err != nil {
			t.Fatalf("git %v: %v\n%s", args, err, out)
		}
	}
	return repo
}

// TestProvisionDocker: docker machines from an image with git provision
// themselves from a repository as local ones do, and a changed step runs
// again on every one of them.
func TestProvisionDocker(t *testing.T) {
	t.Parallel()
	c := newDockerCluster(t)
	repo := gitRepoWithMotd(t, t.TempDir(), "hello from docker\n")
	img := provisionNodeImage(t, repo)
	hookLog := "/var/lib/raptiformica/after_provision.log" // in each container
	src := func(steps string) string {
		return strings.Replace(provisionPlatform("file:///srv/git/motd.git", steps, "", hookLog),
			`cluster = "e2e"`, fmt.Sprintf("cluster = %q\nbackend \"docker\" {\n  type = \"docker\"\n  settings = { image = %q, share_socket = \"servers\" }\n}", c.name, img), 1)
	}
	src1 := strings.Replace(src(`[["cp", "motd", "../motd.installed"]]`), `["local"]`, `["docker"]`, 1)
	c.up(src1)
	c.waitAgree(3, 3*time.Minute, "after up")
	c.waitContainersInstalled("hello from docker\n", 2*time.Minute)
	c.waitProvisioned(3, "ok", time.Minute)

	src2 := strings.Replace(src(`[["cp", "motd", "../motd.installed"], ["/bin/sh", "-c", "echo v2 >> ../motd.installed"]]`), `["local"]`, `["docker"]`, 1)
	if out, errOut, code := c.rf("platform", "apply", c.writePlatform("p2.hcl", src2)); code != 0 {
		t.Fatalf("apply: exit %d: %s %s", code, out, errOut)
	}
	c.waitContainersInstalled("hello from docker\nv2\n", 2*time.Minute)
	c.waitProvisioned(3, "ok", time.Minute)
}

// waitContainersInstalled waits until every running container of the
// cluster has the provisioned file with want in it.
func (c *dockerCluster) waitContainersInstalled(want string, timeout time.Duration) {
	c.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		running, _, err := c.containers()
		got := map[string]string{}
		done := 0
		for _, id := range running {
			b, _ := exec.Command("docker", "exec", id, "cat", "/var/lib/raptiformica/provisioners/motd.installed").Output()
			got[id] = string(b)
			if string(b) == want {
				done++
			}
		}
		if err == nil && done == len(running) && done == 3 {
			return
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("%d of %d containers installed %q: %q (list error: %v)", done, len(running), want, got, err)
		}
		time.Sleep(time.Second)
	}
}
