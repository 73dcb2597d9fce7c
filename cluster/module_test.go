package cluster

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/raptiformica/raptiformica/backends"
	execbackend "github.com/raptiformica/raptiformica/backends/exec"
	"github.com/raptiformica/raptiformica/internal/kvschema"
	"github.com/raptiformica/raptiformica/internal/testconsul"
	"github.com/raptiformica/raptiformica/reconcile"
	"github.com/raptiformica/raptiformica/rules"
)

const webModule = `{"raptiformica_api_version": "0.1",
 "compute": {"box": {"server": {"start_instance": "a", "get_hostname": "a", "clean_up_instance_command": "a"}}},
 "server": {"server": {"web": {"bootstrap": "./install.sh"}}}}`

// writeModule writes a module folder, and returns it.
func writeModule(t *testing.T, name, src string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, moduleFile), []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

func execOptions(t *testing.T) rules.Options {
	t.Helper()
	reg, err := backends.NewRegistry(backends.RegistryEntry{Type: "local"}, backends.RegistryEntry{Type: execbackend.Type, Check: execbackend.Check})
	if err != nil {
		t.Fatal(err)
	}
	return reconcile.ParseOptions(reg)
}

// A module from a git repository is cloned with git; a module that the
// merge cannot run is refused before it is stored; removing a module
// restores what it overrode, in the effective platform the CLI and the
// leader read.
func TestModulesStoredAndEffective(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test: needs Consul (run without -short)")
	}
	srv, err := testconsul.Start()
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Stop()
	ctx, c, opts := context.Background(), srv.Client, execOptions(t)
	if _, err := kvschema.New(c).PutPlatform(ctx, []byte(rules.DefaultSource)); err != nil {
		t.Fatal(err)
	}

	// A git repository, as file://: the clone path of module add.
	repo := writeModule(t, "web-module", webModule)
	for _, args := range [][]string{{"init", "-q"}, {"add", "."}, {"-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "m"}} {
		if out, err := exec.Command("git", append([]string{"-C", repo}, args...)...).CombinedOutput(); err != nil {
			t.Fatalf("git %v: %v: %s", args, err, out)
		}
	}
	m, _, err := AddModule(ctx, c, opts, "file://"+repo, "")
	if err != nil {
		t.Fatalf("add from git: %v", err)
	}
	if m.Name != "web-module" || m.File != "file://"+repo+"/raptiformica.json" {
		t.Errorf("got module %q from %q", m.Name, m.File)
	}
	over := writeModule(t, "override", `{"raptiformica_api_version": "0.1",
 "server": {"server": {"web": {"bootstrap": "./install.sh --v2"}}}}`)
	if _, _, err := AddModule(ctx, c, opts, over, ""); err != nil {
		t.Fatal(err)
	}
	step := func() string {
		t.Helper()
		p, err := Platform(ctx, c, opts)
		if err != nil {
			t.Fatal(err)
		}
		if got := p.Machines["server"].Backends; len(got) != 2 || got[1] != "box/server" {
			t.Errorf("server backends: got %q, want local then box/server", got)
		}
		provs := p.Machines["server"].Provisioners
		if len(provs) != 1 {
			t.Fatalf("provisioners: got %+v, want web", provs)
		}
		return provs[0].Steps[0][2]
	}
	if got := step(); got != "./install.sh --v2" {
		t.Errorf("with the override: step %q", got)
	}

	// Refused whole: nothing stored changes.
	broken := writeModule(t, "broken", `{"raptiformica_api_version": "0.1",
 "compute": {"box": {"server": {"start_instance": "b", "get_hostname": null}}}}`)
	if _, _, err := AddModule(ctx, c, opts, broken, ""); err == nil || !strings.Contains(err.Error(), "broken/raptiformica.json:2,") || !strings.Contains(err.Error(), "compute.box.server.get_hostname: must be a string") {
		t.Errorf("broken module: got %v, want its file, line and field", err)
	}
	partial := writeModule(t, "partial", `{"raptiformica_api_version": "0.1",
 "compute": {"other": {"server": {"start_instance": "b"}}}}`)
	var merr *rules.ModuleError
	if _, _, err := AddModule(ctx, c, opts, partial, ""); !errors.As(err, &merr) || !strings.Contains(err.Error(), `compute.other.server: an exec backend needs the command "get_hostname"`) {
		t.Errorf("a module the merge cannot run: got %v", err)
	}
	mods, _, err := Modules(ctx, c)
	if err != nil || len(mods) != 2 || mods[0].Name != "web-module" || mods[1].Name != "override" {
		t.Fatalf("stored: got %v, %v; want web-module, override", mods, err)
	}

	if _, err := RemoveModule(ctx, c, opts, "override"); err != nil {
		t.Fatal(err)
	}
	if got := step(); got != "./install.sh" {
		t.Errorf("after removing the override: step %q, want the first module's", got)
	}
	if _, err := RemoveModule(ctx, c, opts, "override"); err == nil || !strings.Contains(err.Error(), `no module "override"`) {
		t.Errorf("removing it twice: got %v", err)
	}
	// package runs in a fresh clone of the module's source.
	pkg := writeModule(t, "pkg", `{"raptiformica_api_version": "0.1",
 "compute": {"box": {"headless": {"source": "file://`+repo+`", "start_instance": "a", "get_hostname": "a", "clean_up_instance_command": "a",
   "package": "test -f raptiformica.json && echo packaged in $(basename $PWD) && echo warn >&2"}},
             "slow": {"headless": {"start_instance": "a", "get_hostname": "a", "clean_up_instance_command": "a",
   "package": "sleep 60 & sleep 60"}}}}`)
	if _, _, err := AddModule(ctx, c, opts, pkg, ""); err != nil {
		t.Fatal(err)
	}
	var out, errOut strings.Builder
	if err := Package(ctx, c, "box", time.Minute, &out, &errOut); err != nil || !strings.HasPrefix(out.String(), "packaged in raptiformica-package-") || errOut.String() != "warn\n" {
		t.Errorf("package box: %v, stdout %q, stderr %q", err, out.String(), errOut.String())
	}
	// A package command that hangs is killed, with what it started.
	start := time.Now()
	if err := Package(ctx, c, "slow", 300*time.Millisecond, &out, &errOut); err == nil || !strings.Contains(err.Error(), "killed after 300ms") || time.Since(start) > 10*time.Second {
		t.Errorf("package slow: got %v after %s", err, time.Since(start))
	}
	if err := Package(ctx, c, "box/server", time.Minute, &out, &errOut); err == nil || !strings.Contains(err.Error(), "no module gives box/server a package command") {
		t.Errorf("package of a compute type without one: got %v", err)
	}
	if _, err := FetchModule(ctx, "no-such-owner-xyz/no-such-repo-xyz", ""); err == nil || !strings.Contains(err.Error(), "https://github.com/no-such-owner-xyz/no-such-repo-xyz") {
		t.Errorf("owner/repo: got %v, want the GitHub URL named", err)
	}
}

// A description that names a module's backend is stored only while a
// module provides it, and the module cannot be removed from under it; each
// refusal names the description's file and line.
func TestModulesBackendNamedByDescription(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test: needs Consul (run without -short)")
	}
	srv, err := testconsul.Start()
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Stop()
	ctx, c, opts := context.Background(), srv.Client, execOptions(t)
	src := rules.DefaultSource + `
machine "worker" {
  min      = 1
  backends = ["box/server"]
}
`
	desc, err := rules.Parse("named.hcl", []byte(src), opts)
	if err != nil {
		t.Fatalf("parse: %v", err)
	}
	line := strings.Count(rules.DefaultSource, "\n") + 2
	want := fmt.Sprintf(`named.hcl:%d,1: machine "worker" backends: backend "box/server" is not declared, and no module provides it`, line)
	if err := checkApply(ctx, c, desc, opts); err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("CheckApply without the module: got %v, want %q", err, want)
	}
	if _, _, err := AddModule(ctx, c, opts, writeModule(t, "box", webModule), ""); err != nil {
		t.Fatal(err)
	}
	if err := checkApply(ctx, c, desc, opts); err != nil {
		t.Fatalf("CheckApply with the module: %v", err)
	}
	if _, err := kvschema.New(c).PutPlatform(ctx, []byte(src)); err != nil {
		t.Fatal(err)
	}
	p, err := Platform(ctx, c, opts)
	if err != nil {
		t.Fatal(err)
	}
	if got := p.Machines["worker"].Backends; len(got) != 1 || got[0] != "box/server" || p.Backends["box/server"].Settings["contract"] != "ssh" {
		t.Errorf("effective worker backends %q, box/server %+v", got, p.Backends["box/server"])
	}
	want = strings.Replace(want, "named.hcl", kvschema.PlatformSource, 1)
	if _, err := RemoveModule(ctx, c, opts, "box"); err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("removing the module the description needs: got %v, want %q", err, want)
	}
	if mods, _, err := Modules(ctx, c); err != nil || len(mods) != 1 {
		t.Errorf("modules after the refused removal: %v, %v", mods, err)
	}
}
