package identity

import (
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

func TestWriteRead(t *testing.T) {
	id, err := New("test")
	if err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`).MatchString(id.ManagementToken) {
		t.Errorf("token %q is not a version 4 UUID", id.ManagementToken)
	}
	if other, _ := New("test"); other == id {
		t.Error("two identities are the same")
	}
	dir := filepath.Join(t.TempDir(), "cluster")
	if err := os.Mkdir(dir, 0o755); err != nil { // a local cluster's folder, made before
		t.Fatal(err)
	}
	if _, err := Read(dir); !errors.Is(err, ErrNone) {
		t.Errorf("an empty folder: got %v, want ErrNone", err)
	}
	if err := Write(dir, id); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]os.FileMode{dir: 0o700, filepath.Join(dir, File): 0o600} {
		if st, err := os.Stat(name); err != nil || st.Mode().Perm() != want {
			t.Errorf("%s: mode %v (%v), want %v", name, st.Mode().Perm(), err, want)
		}
	}
	if got, err := Read(dir); err != nil || got != id {
		t.Errorf("read back: got %+v, %v", got, err)
	}
	if err := os.WriteFile(filepath.Join(dir, File), []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Read(dir); err == nil || errors.Is(err, ErrNone) || !strings.Contains(err.Error(), "damaged") {
		t.Errorf("a damaged file: got %v, want an error saying so, not ErrNone", err)
	}
}
