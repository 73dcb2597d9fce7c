package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/spf13/cobra"

	"github.com/raptiformica/raptiformica/internal/kvschema"
	"github.com/raptiformica/raptiformica/internal/testconsul"
	"github.com/raptiformica/raptiformica/reconcile"
	"github.com/raptiformica/raptiformica/rules"
)

// asCLI set to 1 makes the test binary run the CLI on its arguments instead
// of the tests. The completion scripts call `raptiformica __complete ...`:
// the shell tests put this binary on PATH under that name, so no test
// builds the real one.
const asCLI = "RAPTIFORMICA_TEST_AS_CLI"

func TestMain(m *testing.M) {
	if os.Getenv(asCLI) == "1" {
		os.Exit(runWith(os.Args[1:], os.Stdout, os.Stderr))
	}
	os.Exit(m.Run())
}

// lookTool returns the path of a shell a test runs. make test installs
// every one (scripts/testdeps.sh), so a missing shell fails the test,
// unless -short.
func lookTool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err == nil {
		return p
	}
	if testing.Short() {
		t.Skipf("%s not found on PATH (-short)", name)
	}
	t.Fatalf("%s not found on PATH: make test installs it (scripts/testdeps.sh), or apt-get install %s", name, name)
	return ""
}

// shellEnv is the environment of a shell that completes: this test binary
// on PATH as raptiformica, and no cluster to ask but an empty folder. Under
// -race, the binary would wait a second on every exit for late reports.
func shellEnv(t *testing.T) []string {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	bin := t.TempDir()
	if err := os.Symlink(self, filepath.Join(bin, "raptiformica")); err != nil {
		t.Fatal(err)
	}
	env := []string{asCLI + "=1", "XDG_DATA_HOME=" + t.TempDir(), "PATH=" + bin + string(os.PathListSeparator) + os.Getenv("PATH"),
		"GORACE=" + os.Getenv("GORACE") + " atexit_sleep_ms=0"}
	for _, kv := range os.Environ() {
		if k, _, _ := strings.Cut(kv, "="); !slices.Contains([]string{"PATH", "CONSUL_HTTP_ADDR", "XDG_DATA_HOME", "GORACE"}, k) {
			env = append(env, kv)
		}
	}
	return env
}

// script writes `raptiformica completion SHELL` to a file named name.
func script(t *testing.T, shell, name string) string {
	t.Helper()
	var out, errOut bytes.Buffer
	if code := runWith([]string{"completion", shell}, &out, &errOut); code != 0 {
		t.Fatalf("completion %s: exit %d: %s", shell, code, errOut.String())
	}
	f := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(f, out.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return f
}

// shell runs a shell's command line with the completion's environment,
// killed if it hangs.
func shell(t *testing.T, env []string, name string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = env
	cmd.Dir = t.TempDir()
	out, err := cmd.Output()
	return string(out), err
}

// zshComplete types each line into an interactive zsh on a pseudo-terminal,
// presses TAB, and prints the line as completion left it.
const zshComplete = `zmodload zsh/zpty
zpty z zsh -f -i
zpty -w z 'PS1=""; fpath=("$FPATH_DIR" $fpath); autoload -Uz compinit; compinit -u -D; dump() { print -rn -- "<<$BUFFER>>" >/dev/tty; BUFFER="" }; zle -N dump; bindkey "^T" dump; echo RE""ADY'
zpty -r z x '*READY*'
for line; do
	zpty -n -w z "$line"$'\t\C-t'
	zpty -r z out '*<<*>>'
	print -r -- "${${out##*<<}%>>}"
done
zpty -d z
`

// The completion scripts, run by the shells they are for, complete from
// what the binary answers.
func TestCompletion(t *testing.T) {
	cases := map[string]string{
		"raptiformica sta":                   "status",
		"raptiformica spawn --t":             "--type",
		"raptiformica platform ap":           "apply",
		"raptiformica platform validate --j": "--json",
		"raptiformica recover --y":           "--yes",
		"raptiformica completion f":          "fish",
		"raptiformica adopt root@h --ty":     "--type",
	}
	t.Run("bash", func(t *testing.T) {
		bash := lookTool(t, "bash")
		f := script(t, "bash", "raptiformica.bash")
		env := shellEnv(t)
		for line, want := range cases {
			words := strings.Fields(line)
			cmd := "source " + f + "; COMP_WORDS=(" + line + "); COMP_CWORD=" + strconv.Itoa(len(words)-1) +
				"; COMP_LINE='" + line + "'; COMP_POINT=${#COMP_LINE}; COMP_TYPE=9; __start_raptiformica 2>/dev/null; echo \"${COMPREPLY[@]}\""
			out, err := shell(t, env, bash, "--norc", "--noprofile", "-c", cmd)
			if err != nil || strings.TrimSpace(out) != want {
				t.Errorf("bash completes %q to %q (err %v), want %q", line, out, err, want)
			}
		}
	})
	t.Run("zsh", func(t *testing.T) {
		zsh := lookTool(t, "zsh")
		f := script(t, "zsh", "_raptiformica")
		env := append(shellEnv(t), "FPATH_DIR="+filepath.Dir(f))
		var lines []string
		for line := range cases {
			lines = append(lines, line)
		}
		out, err := shell(t, env, zsh, append([]string{"-f", "-c", zshComplete, "zsh"}, lines...)...)
		if err != nil {
			t.Fatalf("zsh: %v\n%s", err, out)
		}
		got := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
		if len(got) != len(lines) {
			t.Fatalf("zsh answered %d lines for %d: %q", len(got), len(lines), out)
		}
		for i, line := range lines {
			words := strings.Fields(line)
			want := strings.Join(append(words[:len(words)-1], cases[line]), " ") + " "
			if got[i] != want {
				t.Errorf("zsh completes %q to %q, want %q", line, got[i], want)
			}
		}
	})
	t.Run("fish", func(t *testing.T) {
		fish := lookTool(t, "fish")
		f := script(t, "fish", "raptiformica.fish")
		env := shellEnv(t)
		for line, want := range map[string]string{
			"raptiformica sta":                   "status\tshow the leader's last reconcile pass",
			"raptiformica spawn --t":             "--type\tmachine type (required)",
			"raptiformica platform ap":           "apply\tvalidate, then store",
			"raptiformica platform validate --j": "--json\tprint JSON",
			"raptiformica completion f":          "fish",
		} {
			out, err := shell(t, env, fish, "--no-config", "-c", "source "+f+"; complete -C'"+line+"'")
			if err != nil || !strings.HasPrefix(out, want) {
				t.Errorf("fish completes %q to %q (err %v), want %q", line, out, err, want)
			}
		}
	})
}

// fakeConsul answers what completion reads of a cluster: its leader, the
// stored description and the inventory.
func fakeConsul(t *testing.T) string {
	t.Helper()
	src, err := os.ReadFile("../../deploy/examples/platform.hcl")
	if err != nil {
		t.Fatal(err)
	}
	var inventory []api.KVPair
	for _, r := range []reconcile.Record{
		{ID: "worker-0a1b2c3d", Type: "worker", State: reconcile.StateJoined},
		{ID: "server-00000001", Type: "server", State: reconcile.StateJoined},
		{ID: "worker-9f8e7d6c", Type: "worker", State: reconcile.StateSpawning},
	} {
		b, _ := json.Marshal(r)
		inventory = append(inventory, api.KVPair{Key: kvschema.Inventory + r.ID, Value: b})
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/v1/status/leader", func(w http.ResponseWriter, _ *http.Request) {
		_ = json.NewEncoder(w).Encode("127.0.0.1:8300")
	})
	mux.HandleFunc("/v1/kv/", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Consul-Index", "1")
		switch strings.TrimPrefix(r.URL.Path, "/v1/kv/") {
		case kvschema.Platform:
			_ = json.NewEncoder(w).Encode([]api.KVPair{{Key: kvschema.Platform, Value: src}})
		case kvschema.Inventory:
			_ = json.NewEncoder(w).Encode(inventory)
		default:
			http.NotFound(w, r)
		}
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://")
}

// silentConsul accepts connections and never answers.
func silentConsul(t *testing.T) string {
	t.Helper()
	return testconsul.Silent(t).String()
}

// Machine types and IDs complete from the cluster; a cluster that is down
// or does not answer gives no completions, within the timeout, and no file
// names.
func TestCompletionFromCluster(t *testing.T) {
	complete := func(t *testing.T, args ...string) string {
		t.Helper()
		var out, errOut bytes.Buffer
		if code := runWith(append([]string{cobra.ShellCompRequestCmd}, args...), &out, &errOut); code != 0 {
			t.Fatalf("__complete %q: exit %d: %s", args, code, errOut.String())
		}
		return out.String()
	}
	noFiles := ":" + strconv.Itoa(int(cobra.ShellCompDirectiveNoFileComp)) + "\n"
	t.Run("a cluster", func(t *testing.T) {
		t.Setenv("CONSUL_HTTP_ADDR", fakeConsul(t))
		for _, tc := range []struct {
			args []string
			want string
		}{
			{[]string{"spawn", "--type", ""}, "server\tmin 3, max 3\nworker\tmin 2, max 4\n"},
			{[]string{"adopt", "root@192.0.2.1", "--type", "w"}, "server\tmin 3, max 3\nworker\tmin 2, max 4\n"},
			{[]string{"destroy", ""}, "server-00000001\tserver, joined\nworker-0a1b2c3d\tworker, joined\nworker-9f8e7d6c\tworker, spawning\n"},
			{[]string{"destroy", "worker-0a1b2c3d", ""}, ""},
			{[]string{"members", ""}, ""},
		} {
			if got := complete(t, tc.args...); got != tc.want+noFiles {
				t.Errorf("__complete %q: got %q want %q", tc.args, got, tc.want+noFiles)
			}
		}
	})
	for _, tc := range []struct {
		name string
		addr func(*testing.T) string
		args []string
	}{
		{"types of a cluster that is down", func(*testing.T) string { return "127.0.0.1:1" }, []string{"spawn", "--type", ""}},
		{"machines of a cluster that is down", func(*testing.T) string { return "127.0.0.1:1" }, []string{"destroy", ""}},
		{"machines of a cluster that hangs", silentConsul, []string{"destroy", ""}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("CONSUL_HTTP_ADDR", tc.addr(t))
			start := time.Now()
			if got := complete(t, tc.args...); got != noFiles {
				t.Errorf("__complete %q: got %q want %q", tc.args, got, noFiles)
			}
			if d := time.Since(start); d > completionTimeout+time.Second {
				t.Errorf("__complete %q took %s", tc.args, d)
			}
		})
	}
}

// Every command answers --help with its usage and examples, exit 0, and its
// examples run it.
func TestHelp(t *testing.T) {
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		for _, sub := range c.Commands() {
			if sub.Hidden || sub.Name() == "help" {
				continue
			}
			path := strings.TrimPrefix(sub.CommandPath(), "raptiformica ")
			var out, errOut bytes.Buffer
			if code := runWith(append(strings.Fields(path), "--help"), &out, &errOut); code != 0 || !strings.Contains(out.String(), "Usage:") {
				t.Errorf("%s --help: exit %d\n%s%s", path, code, out.String(), errOut.String())
			}
			if sub.HasSubCommands() {
				walk(sub)
				continue
			}
			if sub.Example == "" {
				t.Errorf("command %q has no example for --help", path)
			}
			for _, e := range strings.Split(sub.Example, "\n") {
				e = strings.TrimSpace(e)
				if !strings.HasPrefix(e, "raptiformica "+path) && !strings.Contains(e, "raptiformica completion") {
					t.Errorf("example of %q does not run it: %s", path, e)
				}
			}
		}
	}
	walk(newRoot())
}

func TestJSONOutputs(t *testing.T) {
	var out, errOut bytes.Buffer
	if code := runWith([]string{"version", "--json"}, &out, &errOut); code != 0 {
		t.Fatalf("version --json: exit %d", code)
	}
	var v map[string]string
	if err := json.Unmarshal(out.Bytes(), &v); err != nil || v["consul"] != "1.22.0" || v["version"] == "" {
		t.Errorf("version --json: %s (%v)", out.String(), err)
	}

	bad := filepath.Join(t.TempDir(), "bad.hcl")
	if err := os.WriteFile(bad, []byte("machine \"x\" {\n  min = -1\n  consul_server = true\n}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out.Reset()
	errOut.Reset()
	if code := runWith([]string{"platform", "validate", "--json", bad}, &out, &errOut); code != 1 {
		t.Errorf("validate --json of a bad description: exit %d, want 1", code)
	}
	var val rules.Validation
	if err := json.Unmarshal(out.Bytes(), &val); err != nil {
		t.Fatalf("validate --json: %v\n%s", err, out.String())
	}
	if val.Valid || len(val.Problems) != 1 || val.Problems[0].Line != 2 || val.Problems[0].Field != `machine "x" min` {
		t.Errorf("validate --json of a bad description: %+v", val)
	}
	if errOut.Len() != 0 {
		t.Errorf("validate --json wrote to stderr as well: %s", errOut.String())
	}
}
