package cluster

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	osexec "os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/raptiformica/raptiformica/enrol"
	"github.com/raptiformica/raptiformica/internal/kvschema"
	"github.com/raptiformica/raptiformica/internal/source"
	"github.com/raptiformica/raptiformica/rules"
)

// moduleFile is the file a module folder or repository holds, as in the
// original.
const moduleFile = "raptiformica.json"

// cloneTimeout bounds cloning a module's repository.
const cloneTimeout = 2 * time.Minute

// gitHubRepo is the original's shorthand for a module on GitHub.
var gitHubRepo = regexp.MustCompile(`^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$`)

// FetchModule reads and checks the module at src: a local folder (its
// raptiformica.json) or file, a git URL, or owner/repo (the original's
// shorthand for https://github.com/owner/repo). A repository is cloned with
// the git program into a temporary folder, removed afterwards, within
// cloneTimeout, by the rule for code that is cloned and run (package
// internal/source): file://, https://, ssh:// or user@host:path only, and
// ref, when given, the branch, tag or pinned commit read (a pin is
// verified after the fetch).
func FetchModule(ctx context.Context, src, ref string) (*rules.Module, error) {
	name := rules.ModuleName(src)
	if name == "" || len(name) > 63 {
		return nil, fmt.Errorf("%s: no module name can be made of it (want a folder, file or repository named with letters, digits and hyphens)", src)
	}
	if fi, err := os.Stat(src); err == nil {
		if ref != "" {
			return nil, fmt.Errorf("%s: a local module has no ref; a ref is for a git URL", src)
		}
		file := src
		if fi.IsDir() {
			file = filepath.Join(src, moduleFile)
		}
		return rules.ParseModuleFile(name, file)
	}
	url := src
	switch {
	case strings.Contains(src, ":") || strings.HasSuffix(src, ".git"):
		// A URL, git's user@host:path or a remote helper's: the rule
		// says which it takes.
	case gitHubRepo.MatchString(src):
		url = "https://github.com/" + src
	default:
		return nil, fmt.Errorf("%s: no such file or folder, and neither a git URL nor owner/repo", src)
	}
	if err := source.Check(url); err != nil {
		return nil, fmt.Errorf("module source: %w", err)
	}
	if err := source.CheckRef(ref); err != nil {
		return nil, fmt.Errorf("module ref: %w", err)
	}
	dir, err := os.MkdirTemp("", "raptiformica-module-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	if err := clone(ctx, url, ref, dir); err != nil {
		if url != src {
			return nil, fmt.Errorf("%s (the original's owner/repo shorthand for %s): %w", src, url, err)
		}
		return nil, fmt.Errorf("%s: %w", src, err)
	}
	m, err := rules.ParseModuleFile(name, filepath.Join(dir, moduleFile))
	if err != nil {
		// Name the repository, not the temporary folder.
		return nil, errors.New(strings.ReplaceAll(err.Error(), dir, url))
	}
	m.File = url + "/" + moduleFile
	return m, nil
}

// clone fetches url at ref (empty: the newest commit) into dir, a clone
// read once, within CloneTimeout.
func clone(ctx context.Context, url, ref, dir string) error {
	ctx, cancel := context.WithTimeout(ctx, cloneTimeout)
	defer cancel()
	if _, err := (source.Git{Timeout: cloneTimeout, Shallow: true}).Clone(ctx, url, ref, dir); err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("git clone %s: gave up after %s", url, cloneTimeout)
		}
		return fmt.Errorf("git clone %s: %w", url, err)
	}
	return nil
}

// Modules reads the modules the cluster keeps, in the order added, and the
// index they were read at (0: none stored).
func Modules(ctx context.Context, c *api.Client) ([]*rules.Module, uint64, error) {
	pair, _, err := kvschema.New(c).Modules(ctx, &api.QueryOptions{RequireConsistent: true})
	if err != nil || pair == nil {
		return nil, 0, err
	}
	mods, err := rules.DecodeModules(kvschema.ModulesSource, pair.Value)
	return mods, pair.ModifyIndex, err
}

// changeModules stores change(the modules the cluster keeps) by
// check-and-set, once the description with them applied is known to be
// valid: a module that the merge cannot run is refused before any node
// sees it. It returns the merge's notices. Writing takes a token that may
// write the description.
func changeModules(ctx context.Context, c *api.Client, opts rules.Options, change func([]*rules.Module) ([]*rules.Module, error)) ([]rules.Problem, error) {
	store := kvschema.New(c)
	for range 10 {
		mods, index, err := Modules(ctx, c)
		if err != nil {
			return nil, err
		}
		next, err := change(mods)
		if err != nil {
			return nil, err
		}
		var notices []rules.Problem
		desc, err := description(ctx, c, opts)
		switch {
		case errors.Is(err, ErrNoPlatform):
			// Checked against the description when one is stored.
			_, notices, err = rules.Effective(rules.Default(), next, opts)
		case err == nil:
			_, notices, err = rules.Effective(desc, next, opts)
		}
		if err != nil {
			return notices, err
		}
		enc := rules.EncodeModules(next)
		if len(enc) > rules.MaxStoredModules {
			return notices, fmt.Errorf("the modules would take %d bytes, more than the %d a cluster keeps (one KV value): remove one first", len(enc), rules.MaxStoredModules)
		}
		ok, err := store.CASModules(ctx, enc, index)
		if err != nil {
			return nil, fmt.Errorf("store modules: %w", err)
		}
		if ok {
			return notices, nil
		}
	}
	return nil, errors.New("the modules kept changing underneath: try again")
}

// description reads and parses the description the cluster stores,
// without its modules.
func description(ctx context.Context, c *api.Client, opts rules.Options) (*rules.Platform, error) {
	pair, _, err := kvschema.New(c).Platform(ctx, nil)
	if err != nil {
		return nil, err
	}
	if pair == nil {
		return nil, ErrNoPlatform
	}
	return rules.Parse(kvschema.PlatformSource, pair.Value, opts)
}

// AddModule fetches the module at src and ref (FetchModule) and keeps it
// in the cluster, last: it overrides the modules added before it. It
// returns the module and the merge's notices.
func AddModule(ctx context.Context, c *api.Client, opts rules.Options, src, ref string) (*rules.Module, []rules.Problem, error) {
	m, err := FetchModule(ctx, src, ref)
	if err != nil {
		return nil, nil, err
	}
	notices, err := changeModules(ctx, c, opts, func(mods []*rules.Module) ([]*rules.Module, error) { return rules.WithModule(mods, m) })
	return m, notices, err
}

// RemoveModule drops the module called name from the cluster's: what it
// overrode comes back. It returns the merge's notices.
func RemoveModule(ctx context.Context, c *api.Client, opts rules.Options, name string) ([]rules.Problem, error) {
	return changeModules(ctx, c, opts, func(mods []*rules.Module) ([]*rules.Module, error) {
		if !slices.ContainsFunc(mods, func(m *rules.Module) bool { return m.Name == name }) {
			return nil, fmt.Errorf("no module %q (`module list` shows them)", name)
		}
		return rules.WithoutModule(mods, name), nil
	})
}

// ListModules returns the modules the cluster keeps, in order, and the
// notices of applying them to its description (what they leave out).
func ListModules(ctx context.Context, c *api.Client, opts rules.Options) ([]*rules.Module, []rules.Problem, error) {
	mods, _, err := Modules(ctx, c)
	if err != nil || len(mods) == 0 {
		return mods, nil, err
	}
	desc, err := description(ctx, c, opts)
	if err != nil {
		return mods, nil, err
	}
	_, notices, err := rules.Effective(desc, mods, opts)
	return mods, notices, err
}

// WriteModules prints modules as `module list` shows them, and notices
// (what a merge left out) to errOut.
func WriteModules(out, errOut io.Writer, mods []*rules.Module, notices []rules.Problem) error {
	for _, n := range notices {
		fmt.Fprintf(errOut, "notice: %s\n", n)
	}
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	for _, m := range mods {
		fmt.Fprintf(w, "%s\t%s\t%s\n", m.Name, m.File, m.Summary())
	}
	return w.Flush()
}

// Package runs the package command of the compute module that makes
// backend ("<compute type>/<server type>"; a bare compute type means its
// server type headless, the original's default) as the original's
// `package` did: in a fresh clone of the module's source at its ref, its
// output streamed to out and errOut, so that an image a module builds can
// be reused by the machines it makes. The command's process group is
// killed after timeout.
func Package(ctx context.Context, c *api.Client, backend string, timeout time.Duration, out, errOut io.Writer) error {
	if !strings.Contains(backend, "/") {
		backend += "/headless"
	}
	mods, _, err := Modules(ctx, c)
	if err != nil {
		return err
	}
	command, src, ref, ok := rules.Merge(mods).Package(backend)
	if !ok {
		return fmt.Errorf("no module gives %s a package command (`module list` shows the modules)", backend)
	}
	dir, err := os.MkdirTemp("", "raptiformica-package-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	if src != "" {
		if err := clone(ctx, src, ref, dir); err != nil {
			return fmt.Errorf("package %s: %w", backend, err)
		}
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := osexec.CommandContext(ctx, "/bin/sh", "-c", command)
	cmd.Dir, cmd.Stdout, cmd.Stderr = dir, out, errOut
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Run(); err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("package %s: killed after %s", backend, timeout)
		}
		return fmt.Errorf("package %s: %w", backend, err)
	}
	return nil
}

// checkApply refuses a description p that the running cluster could not
// run: a mesh mode other than the cluster's (enrol.CheckMeshMode), or a
// machine type naming a module's backend ("<type>/<server>") that none of
// the modules the cluster keeps provides, or modules that cannot be applied
// to it. Each problem names the file and line of p.
func checkApply(ctx context.Context, c *api.Client, p *rules.Platform, opts rules.Options) error {
	if err := enrol.CheckMeshMode(ctx, kvschema.New(c), p); err != nil {
		return err
	}
	mods, _, err := Modules(ctx, c)
	if err != nil {
		return fmt.Errorf("read modules: %w", err)
	}
	_, _, err = rules.Effective(p, mods, opts)
	return err
}
