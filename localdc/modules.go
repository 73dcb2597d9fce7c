package localdc

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/raptiformica/raptiformica/backends/local"
	"github.com/raptiformica/raptiformica/internal/fsutil"
	"github.com/raptiformica/raptiformica/internal/kvschema"
	"github.com/raptiformica/raptiformica/rules"
)

// lastModulesFile is where Down keeps the modules the folder's machines
// last mirrored, beside last-platform, for the next Up.
const lastModulesFile = "last-modules.json"

// newestModules is the most recently written modules mirror of the
// machines in a cluster folder (or Down's copy), "" when there is none: the
// last change of modules any of them saw, whichever description it is
// newest with.
func newestModules(dir string) string {
	ms, _ := local.Machines(dir)
	paths := []string{filepath.Join(dir, lastModulesFile)}
	for _, m := range ms {
		paths = append(paths, filepath.Join(m.Config.DataDir, "mirror", "modules.json"))
	}
	best, bestTime := "", time.Time{}
	for _, p := range paths {
		if fi, err := os.Stat(p); err == nil && fi.ModTime().After(bestTime) {
			best, bestTime = p, fi.ModTime()
		}
	}
	return best
}

// keepModules keeps the newest modules mirror in dir, as Down keeps the
// description.
func keepModules(dir string) {
	if m := newestModules(dir); m != "" && filepath.Dir(m) != dir {
		if b, err := os.ReadFile(m); err == nil {
			_ = fsutil.WriteFileAtomic(filepath.Join(dir, lastModulesFile), b, 0o644)
		}
	}
}

// mirroredModules reads the newest modules mirror of a cluster folder,
// nil when there is none or it does not load (said on out).
func mirroredModules(dir string, out io.Writer) []byte {
	file := newestModules(dir)
	if file == "" {
		return nil
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return nil
	}
	mods, err := rules.DecodeModules(file, b)
	if err != nil {
		fmt.Fprintf(out, "not restoring the mirrored modules: %v\n", err)
		return nil
	}
	if len(mods) > 0 {
		fmt.Fprintf(out, "restoring %d modules mirrored in %s\n", len(mods), file)
	}
	return b
}

// restoreModules writes the modules of a re-created cluster into its KV,
// unless it holds some already; it reports whether that is settled.
func (l *Local) restoreModules(ctx context.Context, c *api.Client, out io.Writer) bool {
	ok, err := kvschema.New(c).CASModules(ctx, l.restore, 0)
	if err != nil {
		return false // no leader yet: the next poll tries again
	}
	if !ok {
		fmt.Fprintln(out, "the cluster holds modules already: the mirrored ones are not restored")
	}
	return true
}
