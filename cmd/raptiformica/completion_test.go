package main

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// script writes `raptiformica completion SHELL` to a file.
func script(t *testing.T, shell string) string {
	t.Helper()
	var out, errOut bytes.Buffer
	if code := runWith([]string{"completion", shell}, &out, &errOut); code != 0 {
		t.Fatalf("completion %s: exit %d: %s", shell, code, errOut.String())
	}
	f := filepath.Join(t.TempDir(), "raptiformica."+shell)
	if err := os.WriteFile(f, out.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return f
}

// The completion scripts, run by the shells they are for.
func TestCompletion(t *testing.T) {
	t.Run("bash", func(t *testing.T) {
		bash := needTool(t, "bash", "Debian's bash package")
		f := script(t, "bash")
		for line, want := range map[string]string{
			"raptiformica sta":                   "status",
			"raptiformica spawn --t":             "--type",
			"raptiformica platform ap":           "apply",
			"raptiformica platform validate --j": "--json",
			"raptiformica recover --y":           "--yes",
			"raptiformica completion f":          "fish",
		} {
			words := strings.Fields(line)
			cmd := "source " + f + "; COMP_WORDS=(" + line + "); COMP_CWORD=" + itoa(len(words)-1) + `; _raptiformica; echo "${COMPREPLY[@]}"`
			out, err := exec.Command(bash, "-c", cmd).CombinedOutput()
			if err != nil || strings.TrimSpace(string(out)) != want {
				t.Errorf("bash completes %q to %q (err %v), want %q", line, out, err, want)
			}
		}
	})
	t.Run("zsh", func(t *testing.T) {
		zsh := needTool(t, "zsh", "Debian's zsh package; .ci/run installs it")
		f := script(t, "zsh")
		if out, err := exec.Command(zsh, "-n", f).CombinedOutput(); err != nil {
			t.Errorf("zsh -n: %v\n%s", err, out)
		}
		// Loaded as an autoload function the way compinit does, it defines
		// the completer without error.
		out, err := exec.Command(zsh, "-f", "-c", "autoload -Uz compinit && compinit -u -D && source "+f+" && whence -w _raptiformica").CombinedOutput()
		if err != nil || !strings.Contains(string(out), "_raptiformica: function") {
			t.Errorf("zsh does not load the completion: %v\n%s", err, out)
		}
	})
	t.Run("fish", func(t *testing.T) {
		fish := needTool(t, "fish", "Debian's fish package; .ci/run installs it")
		f := script(t, "fish")
		for line, want := range map[string]string{
			"raptiformica sta":                   "status\tshow the leader's last reconcile pass",
			"raptiformica spawn --t":             "--type\tmachine type (required)",
			"raptiformica platform ap":           "apply\tvalidate, then store",
			"raptiformica platform validate --j": "--json\tprint JSON",
		} {
			out, err := exec.Command(fish, "--no-config", "-c", "source "+f+"; complete -C'"+line+"'").CombinedOutput()
			if err != nil || !strings.Contains(string(out), want) {
				t.Errorf("fish completes %q to %q (err %v), want %q", line, out, err, want)
			}
		}
	})
}

func itoa(n int) string { return strconv.Itoa(n) }

// Every command answers --help with its usage and examples, exit 0.
func TestHelp(t *testing.T) {
	for _, c := range commands {
		if c.run == nil || c.name == "platform" {
			continue
		}
		args := append(strings.Fields(c.name), "--help")
		var out, errOut bytes.Buffer
		if code := runWith(args, &out, &errOut); code != 0 {
			t.Errorf("%s --help: exit %d", c.name, code)
		}
	}
	for _, c := range commands {
		if c.name != "platform" && len(c.examples) == 0 {
			t.Errorf("command %q has no example for --help", c.name)
		}
		for _, e := range c.examples {
			if !strings.HasPrefix(e, "raptiformica "+c.name) && !strings.Contains(e, "raptiformica completion") {
				t.Errorf("example of %q does not run it: %s", c.name, e)
			}
		}
	}
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
	var val validation
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

func TestFlagsFirst(t *testing.T) {
	fs := newFlagSet("adopt")
	fs.String("type", "", "")
	fs.Bool("yes", false, "")
	for _, tc := range []struct{ in, want string }{
		{"root@h --type worker", "--type worker -- root@h"},
		{"--type=worker root@h --yes", "--type=worker --yes -- root@h"},
		{"root@h --yes extra", "--yes -- root@h extra"},
		{"--type w -- --not-a-flag", "--type w -- --not-a-flag"},
		{"--unknown root@h", "--unknown -- root@h"},
	} {
		if got := strings.Join(flagsFirst(fs, strings.Fields(tc.in)), " "); got != tc.want {
			t.Errorf("flagsFirst(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestReadAdoptInventory(t *testing.T) {
	write := func(src string) string {
		f := filepath.Join(t.TempDir(), "machines.txt")
		if err := os.WriteFile(f, []byte(src), 0o644); err != nil {
			t.Fatal(err)
		}
		return f
	}
	f := write("# home\nroot@192.0.2.1\n\ndeploy@nas:2222 storage  # the NAS\n")
	jobs, err := readAdoptInventory(f, "worker")
	if err != nil || len(jobs) != 2 || jobs[0].typ != "worker" || jobs[1].typ != "storage" || jobs[1].host.Port != 2222 || jobs[1].where != f+":4" {
		t.Errorf("got %+v, %v", jobs, err)
	}
	for src, want := range map[string]string{
		"root@a\nroot@b x y\n":    ":2: want",
		"root@a\nroot@a\n":        ":2: a:22 is listed already at ",
		"root@a:99999\n":          ":1: host \"a:99999\"",
		"# nothing\n":             "lists no machine",
		"root@a\nroot@b worker\n": "",
	} {
		_, err := readAdoptInventory(write(src), "worker")
		if want == "" {
			if err != nil {
				t.Errorf("inventory %q: %v", src, err)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("inventory %q: got %v, want %q", src, err, want)
		}
	}
	if _, err := readAdoptInventory(write("root@a\n"), ""); err == nil || !strings.Contains(err.Error(), ":1: no machine type") {
		t.Errorf("a line without a type and no --type: got %v", err)
	}
}
