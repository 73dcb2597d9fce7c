package provision

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestReadHostList(t *testing.T) {
	write := func(src string) string {
		f := filepath.Join(t.TempDir(), "machines.txt")
		if err := os.WriteFile(f, []byte(src), 0o644); err != nil {
			t.Fatal(err)
		}
		return f
	}
	f := write("# home\nroot@192.0.2.1\n\ndeploy@nas:2222 storage  # the NAS\n")
	jobs, err := ReadHostList(f, "worker")
	if err != nil || len(jobs) != 2 || jobs[0].Type != "worker" || jobs[1].Type != "storage" || jobs[1].Host.Port != 2222 || jobs[1].Where != f+":4" {
		t.Errorf("got %+v, %v", jobs, err)
	}
	for src, want := range map[string]string{
		"root@a\nroot@b x y\n":    ":2: want",
		"root@a\nroot@a\n":        ":2: a:22 is listed already at ",
		"root@a:99999\n":          ":1: host \"a:99999\"",
		"# nothing\n":             "lists no machine",
		"root@a\nroot@b worker\n": "",
	} {
		_, err := ReadHostList(write(src), "worker")
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
	if _, err := ReadHostList(write("root@a\n"), ""); err == nil || !strings.Contains(err.Error(), ":1: no machine type") {
		t.Errorf("a line without a type and no --type: got %v", err)
	}
}
