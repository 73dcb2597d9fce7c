package e2e

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
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
			"unknown.json:2,34: server.headless.web.bootstap: unknown field (known: source, bootstrap)"},
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
