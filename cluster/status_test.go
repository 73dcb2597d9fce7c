package cluster

import (
	"strings"
	"testing"
	"time"

	"github.com/raptiformica/raptiformica/reconcile"
)

// TestStatusShowsUnusableMirrors: a machine whose copy of the cluster's
// state on disk is unusable is named in status, since it could not
// re-create the cluster if it were the last one standing.
func TestStatusShowsUnusableMirrors(t *testing.T) {
	v := StatusView{
		Leader:       "server-1",
		Reconcile:    &reconcile.Status{Cluster: "c", LastReconcile: time.Now(), Types: map[string]reconcile.TypeStatus{}},
		MirrorErrors: map[string]string{"server-2": "platform.version: line 1: not the version of platform.hcl's text"},
	}
	var out strings.Builder
	if err := v.WriteText(&out); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "mirror of server-2") || !strings.Contains(out.String(), "UNUSABLE: platform.version: line 1") {
		t.Errorf("status without the unusable mirror:\n%s", out.String())
	}
}
