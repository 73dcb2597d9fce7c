package e2e

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/raptiformica/raptiformica/internal/kvschema"
	"github.com/raptiformica/raptiformica/provision"
	"github.com/raptiformica/raptiformica/reconcile"
)

// rfModule runs `raptiformica module SUB ARGS` against this cluster's
// folder (the --dir flag belongs to the subcommand).
func (c *testCluster) rfModule(sub string, args ...string) (string, string, int) {
	c.t.Helper()
	cmd := exec.Command(binary, append([]string{"module", sub, "--dir", c.dir}, args...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.Env = append(os.Environ(), "CONSUL_HTTP_ADDR=")
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); ok {
		return stdout.String(), stderr.String(), ee.ExitCode()
	} else if err != nil {
		c.t.Fatalf("module %s: %v", sub, err)
	}
	return stdout.String(), stderr.String(), 0
}

// validateModule runs `raptiformica module validate` on its own: it needs
// no cluster.
func validateModule(t *testing.T, path string) (string, string, int) {
	t.Helper()
	cmd := exec.Command(binary, "module", "validate", path)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); ok {
		return stdout.String(), stderr.String(), ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return stdout.String(), stderr.String(), 0
}

// TestModulesValidate: every module file the original shipped passes
// `module validate` as it is; broken ones are refused with the file, line
// and field of each problem.
func TestModulesValidate(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test (run without -short)")
	}
	root, err := moduleRoot()
	if err != nil {
		t.Fatal(err)
	}
	// A byte-for-byte copy of ../shared/original-modules.
	var files []string
	_ = filepath.WalkDir(filepath.Join(root, "rules/testdata/original-modules"), func(p string, d os.DirEntry, err error) error {
		if err == nil && strings.HasSuffix(p, ".json") {
			files = append(files, p)
		}
		return err
	})
	if len(files) != 6 {
		t.Fatalf("found %d original module files, want 6", len(files))
	}
	for _, f := range files {
		if out, errOut, code := validateModule(t, f); code != 0 || !strings.Contains(out, "valid module") {
			t.Errorf("module validate %s: exit %d\n%s%s", f, code, out, errOut)
		}
	}
	// A folder is read as the original read one: its raptiformica.json.
	if out, errOut, code := validateModule(t, filepath.Join(root, "rules/testdata/original-modules/compute/docker")); code != 0 || !strings.Contains(out, "valid module docker (compute docker/headless)") {
		t.Errorf("module validate of a folder: exit %d\n%s%s", code, out, errOut)
	}

	dir := t.TempDir()
	for _, tc := range []struct{ name, src, want string }{
		{"version.json", "{\n  \"raptiformica_api_version\": \"0.2\"\n}\n", `version.json:2,31: raptiformica_api_version: must be "0.1"`},
		{"number.json", "{\"raptiformica_api_version\": \"0.1\",\n \"compute\": {\"docker\": {\"headless\": {\n   \"start_instance\": 42}}}}\n",
			"number.json:3,22: compute.docker.headless.start_instance: must be a string, got a number"},
		{"unknown.json", "{\"raptiformica_api_version\": \"0.1\",\n \"server\": {\"headless\": {\"web\": {\"bootstap\": \"x\"}}}}\n",
			"unknown.json:2,34: server.headless.web.bootstap: unknown field (known: source, ref, bootstrap)"},
		{"syntax.json", "{\"raptiformica_api_version\": \"0.1\",\n \"platform\": {\n", "syntax.json:2,15: not valid JSON: unexpected end of the file"},
	} {
		p := filepath.Join(dir, tc.name)
		if err := os.WriteFile(p, []byte(tc.src), 0o644); err != nil {
			t.Fatal(err)
		}
		if out, errOut, code := validateModule(t, p); code != 1 || !strings.Contains(errOut, filepath.Join(dir, tc.want)) {
			t.Errorf("module validate %s: exit %d, want 1 and %q\n%s%s", tc.name, code, tc.want, out, errOut)
		}
	}
}

// TestModulesLive: on a running cluster, a module added from a folder is
// kept in the cluster, listed, and reaches every agent: its compute type
// becomes a backend the machines offer, its hook runs on the leader; a
// module the merge cannot run is refused; removing the module restores the
// description as it was.
func TestModulesLive(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	worker := func(n int) string {
		return `machine "worker" {
  min      = ` + string(rune('0'+n)) + `
  max      = 1
  backends = ["local"]
}
`
	}
	// The module's compute type is in the original's contract: its
	// machines are logged into over SSH, and a node without an SSH
	// identity does not offer it.
	c.env = []string{agentHome(t, "")}
	c.up(c.writePlatform("platform.hcl", platformWith(1, 1, "2s", worker(0), false)))
	c.waitAgree(1, time.Minute, "after up")

	spawned := filepath.Join(c.dir, "spawned.json")
	mod := filepath.Join(c.dir, "box")
	if err := os.MkdirAll(mod, 0o755); err != nil {
		t.Fatal(err)
	}
	src := `{
  "raptiformica_api_version": "0.1",
  "compute": {"box": {"server": {
    "available": "true",
    "start_instance": "false",
    "get_hostname": "false",
    "clean_up_instance_command": "true"
  }}},
  "platform": {"default": {"hooks": {"after_start_instance": {"record": {
    "predicate": "true",
    "command": "cat > ` + spawned + `"
  }}}}}
}
`
	if err := os.WriteFile(filepath.Join(mod, "raptiformica.json"), []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, errOut, code := c.rfModule("add", mod); code != 0 || !strings.Contains(out, "added module box") {
		t.Fatalf("module add: exit %d\n%s%s", code, out, errOut)
	}
	if out, errOut, code := c.rfModule("list"); code != 0 || !strings.Contains(out, "box") || !strings.Contains(out, "compute box/server; platform default") {
		t.Errorf("module list: exit %d\n%s%s", code, out, errOut)
	}
	offers := func(want bool) {
		t.Helper()
		deadline := time.Now().Add(90 * time.Second)
		for {
			out, _, _ := c.rf("members", "--json")
			var rows []struct {
				Offers []string `json:"offers"`
			}
			_ = json.Unmarshal([]byte(out), &rows)
			agree := 0
			for _, r := range rows {
				if slices.Contains(r.Offers, "box/server") == want {
					agree++
				}
			}
			if len(rows) > 0 && agree == len(rows) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("members --json: want box/server offered %v by every member:\n%s", want, out)
			}
			time.Sleep(time.Second)
		}
	}
	offers(true)

	// The module's hook runs on the leader when a machine is spawned.
	if out, errOut, code := c.rf("platform", "apply", c.writePlatform("worker.hcl", platformWith(1, 1, "2s", worker(1), false))); code != 0 {
		t.Fatalf("apply: exit %d: %s %s", code, out, errOut)
	}
	c.waitAgree(2, 2*time.Minute, "after adding a worker")
	deadline := time.Now().Add(30 * time.Second)
	for {
		b, _ := os.ReadFile(spawned)
		if bytes.Contains(b, []byte(`"worker`)) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the module's after_start_instance hook did not run on the spawn: %q", b)
		}
		time.Sleep(500 * time.Millisecond)
	}

	// A module the merge cannot run is refused, naming file and field,
	// and changes nothing.
	bad := filepath.Join(c.dir, "bad.json")
	if err := os.WriteFile(bad, []byte(`{"raptiformica_api_version": "0.1", "compute": {"box": {"worker": {"start_instance": "x"}}}}`), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, errOut, code := c.rfModule("add", bad); code != 1 || !strings.Contains(errOut, bad+`:1,67: compute.box.worker: an exec backend needs the command "get_hostname"`) {
		t.Errorf("module add of an incomplete compute module: exit %d\n%s", code, errOut)
	}
	if _, errOut, code := c.rfModule("add", "someone/some-module"); code != 1 || !strings.Contains(errOut, "https://github.com/someone/some-module") {
		t.Errorf("module add owner/repo offline: exit %d, want the GitHub URL named\n%s", code, errOut)
	}
	if out, _, _ := c.rfModule("list"); strings.Contains(out, "bad") || strings.Contains(out, "some-module") {
		t.Errorf("refused modules listed:\n%s", out)
	}

	if out, errOut, code := c.rfModule("remove", "box"); code != 0 || !strings.Contains(out, "removed module box") {
		t.Fatalf("module remove: exit %d\n%s%s", code, out, errOut)
	}
	offers(false)
	if out, _, _ := c.rfModule("list"); strings.TrimSpace(out) != "" {
		t.Errorf("module list after remove:\n%s", out)
	}

	// A cluster re-created from its machines' mirror (down, then up
	// without a description) comes back with its modules.
	if out, errOut, code := c.rfModule("add", mod); code != 0 {
		t.Fatalf("module add again: exit %d\n%s%s", code, out, errOut)
	}
	offers(true) // and mirrored by every agent
	if out, errOut, code := c.rf("down"); code != 0 {
		t.Fatalf("down: exit %d\n%s%s", code, out, errOut)
	}
	out, errOut, code := c.rf("up", "--timeout", "3m")
	if code != 0 || !strings.Contains(out, "restoring 1 modules mirrored in") {
		kept, _ := os.ReadFile(filepath.Join(c.dir, "last-modules.json"))
		t.Fatalf("up from the mirror: exit %d\n%s%s\nlast-modules.json: %s", code, out, errOut, kept)
	}
	if out, errOut, code := c.rfModule("list"); code != 0 || !strings.Contains(out, "compute box/server; platform default") {
		t.Errorf("module list after re-creating the cluster: exit %d\n%s%s", code, out, errOut)
	}
	offers(true)
}

// agentHome makes a home folder whose ~/.ssh/id_ed25519 is key (a new key
// when key is empty) and returns the HOME= setting for agents that are to
// log into machines with it: the SSH identity a module's compute backend
// uses when none is set.
func agentHome(t *testing.T, key string) string {
	t.Helper()
	var pemKey []byte
	if key != "" {
		var err error
		if pemKey, err = os.ReadFile(key); err != nil {
			t.Fatal(err)
		}
	} else {
		_, priv, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		block, err := ssh.MarshalPrivateKey(priv, "")
		if err != nil {
			t.Fatal(err)
		}
		pemKey = pem.EncodeToMemory(block)
	}
	home := t.TempDir()
	if err := os.MkdirAll(filepath.Join(home, ".ssh"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(home, ".ssh", "id_ed25519"), pemKey, 0o600); err != nil {
		t.Fatal(err)
	}
	return "HOME=" + home
}

// TestModulesComputeAdoptsOverSSH: a compute module in the original
// format and contract, offline: its start_instance runs an SSH server
// container of the project's Debian root filesystem (as the original's
// docker module ran one from a Dockerfile) and prints nothing of our
// agent; get_hostname prints its address, get_port 22. A machine type that
// names the module's backend gets machines that the leader adopts over
// SSH, as root with its agent's own key, and that join the cluster; their
// host keys are trusted for the spawn only, never recorded for the
// cluster. A description naming a module backend no module provides is
// refused at its line.
func TestModulesComputeAdoptsOverSSH(t *testing.T) {
	t.Parallel()
	l := newSSHLabEnv(t, func(key string) []string { return []string{agentHome(t, key)} })

	name := l.network + `-$RAPTIFORMICA_MACHINE_ID`
	boot := `set -e; ssh-keygen -A >/dev/null; mkdir -p /run/sshd /root/.ssh; echo "$PUB" > /root/.ssh/authorized_keys; ` +
		`chmod 700 /root/.ssh; chmod 600 /root/.ssh/authorized_keys; exec /usr/sbin/sshd -D -e`
	mod := map[string]any{
		"raptiformica_api_version": "0.1",
		"compute": map[string]any{"docker": map[string]any{"worker": map[string]string{
			"available": "docker version >/dev/null",
			"start_instance": `docker run -d --name "` + name + `" --hostname "$RAPTIFORMICA_MACHINE_ID" --network ` + l.network +
				` --label raptiformica.test=1 -e "PUB=` + l.pub + `" ` + debianImage + ` /bin/sh -c '` + boot + `' && ` +
				`for i in $(seq 150); do docker exec "` + name + `" test -s /run/sshd.pid && exit 0; sleep 0.2; done; exit 1`,
			"get_hostname":              `docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "` + name + `"`,
			"get_port":                  "echo 22",
			"detect_stale_instance":     `test "$(docker inspect -f '{{.State.Running}}' "` + name + `" 2>/dev/null)" = true`,
			"clean_up_instance_command": `docker rm -f "` + name + `" >/dev/null 2>&1 || true`,
		}}},
	}
	src, err := json.MarshalIndent(mod, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(l.dir, "docker-module")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "raptiformica.json"), src, 0o644); err != nil {
		t.Fatal(err)
	}
	if out, errOut, code := l.rfModule("add", dir); code != 0 {
		t.Fatalf("module add: exit %d\n%s%s", code, out, errOut)
	}

	// A backend name no module provides is refused, at its machine type.
	bad := l.writePlatform("bad.hcl", l.platform(`machine "worker" {
  min      = 1
  backends = ["docker/wroker"]
}
`))
	if _, errOut, code := l.rf("platform", "apply", bad); code != 1 || !strings.Contains(errOut, fmt.Sprintf("%s:%d,1: ", bad, strings.Count(l.platform(""), "\n")+1)+`machine "worker" backends: backend "docker/wroker" is not declared, and no module provides it`) {
		t.Errorf("platform apply naming a backend no module provides: exit %d\n%s", code, errOut)
	}

	l.apply(t, "workers.hcl", l.platform(`machine "worker" {
  min      = 2
  max      = 2
  backends = ["docker/worker"]
}
`))
	var workers []string
	waitUntil(t, 4*time.Minute, "two workers on docker/worker adopted over SSH and joined", func() bool {
		v, err := l.view()
		if err != nil {
			return false
		}
		workers = workers[:0]
		for id, r := range v.records {
			if r.Type == "worker" && r.Backend == "docker/worker" && r.State == reconcile.StateJoined && contains(v.alive, id) {
				workers = append(workers, id)
			}
		}
		return len(workers) == 2
	})
	t.Logf("adopted and joined: %v", workers)
	for _, id := range workers {
		// The agent runs in the container the module made, installed
		// there over SSH (no systemd: the supervisor).
		out, err := exec.Command("docker", "exec", l.network+"-"+id, "sh", "-c", "cat "+provision.RemoteConfig+"; test -x "+provision.RemoteSupervisor+" && echo supervised").CombinedOutput()
		if err != nil || !strings.Contains(string(out), `"machine_id": "`+id+`"`) || !strings.Contains(string(out), "supervised") {
			t.Errorf("%s: the adopted agent's config and supervisor: %v\n%s", id, err, out)
		}
	}
	// Trusted for the spawn only: no host key of theirs is recorded for
	// the cluster.
	pairs, _, err := l.client().KV().List(kvschema.HostKeys, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range pairs {
		t.Errorf("host key recorded for the cluster: %s", p.Key)
	}
}
