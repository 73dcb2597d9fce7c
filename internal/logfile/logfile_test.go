package logfile

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// onDisk is the total size of name and its rotated files.
func onDisk(t *testing.T, name string) (total int64, files []string) {
	t.Helper()
	matches, _ := filepath.Glob(name + "*")
	for _, m := range matches {
		fi, err := os.Stat(m)
		if err != nil {
			t.Fatal(err)
		}
		total += fi.Size()
		files = append(files, filepath.Base(m))
	}
	return total, files
}

// Writing far past the cap rotates, keeps Keep old files, and the total on
// disk stays bounded; the newest lines are in the file itself.
func TestWriterRotatesAndStaysBounded(t *testing.T) {
	for _, tc := range []struct {
		name string
		keep int
	}{
		{name: "one old file", keep: 1},
		{name: "two old files", keep: 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			name := filepath.Join(t.TempDir(), "consul.log")
			w, err := Open(name, Options{MaxBytes: 10000, Keep: tc.keep})
			if err != nil {
				t.Fatal(err)
			}
			line := []byte(strings.Repeat("x", 99) + "\n")
			for range 5000 { // 500 kB, fifty times the cap
				if n, err := w.Write(line); n != len(line) || err != nil {
					t.Fatalf("Write = %d, %v", n, err)
				}
			}
			w.Write([]byte("last line\n"))
			if err := w.Close(); err != nil {
				t.Fatal(err)
			}
			total, files := onDisk(t, name)
			if bound := int64(10000 * (tc.keep + 1)); total > bound {
				t.Errorf("%d bytes on disk in %v, want at most %d", total, files, bound)
			}
			if len(files) != tc.keep+1 {
				t.Errorf("files %v, want consul.log and %d rotated", files, tc.keep)
			}
			if cur, _ := os.ReadFile(name); !bytes.HasSuffix(cur, []byte("last line\n")) {
				t.Errorf("the newest line is not at the end of %s", name)
			}
			if old, _ := os.ReadFile(name + ".1"); len(old) == 0 || len(old) > 10000 {
				t.Errorf("%s.1 holds %d bytes, want 1..10000", name, len(old))
			}
		})
	}
}

// A file left from an earlier run counts towards the cap.
func TestWriterCountsWhatIsThere(t *testing.T) {
	name := filepath.Join(t.TempDir(), "agent.log")
	os.WriteFile(name, bytes.Repeat([]byte("o"), 9990), 0o600)
	w, err := Open(name, Options{MaxBytes: 10000})
	if err != nil {
		t.Fatal(err)
	}
	w.Write([]byte("0123456789abcdef\n"))
	w.Close()
	if cur, _ := os.ReadFile(name); string(cur) != "0123456789abcdef\n" {
		t.Errorf("after a write that passes the cap, %s holds %q, want only that write", name, cur)
	}
	if fi, err := os.Stat(name); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("the new file's mode: %v, %v; want the old one's, 0600", fi.Mode(), err)
	}
}

// A write that fails (here: the folder is gone, so the rotation cannot
// happen) is not the caller's failure: the writer goes on and says why in
// Err.
func TestWriterFailureIsNotFatal(t *testing.T) {
	dir := t.TempDir()
	name := filepath.Join(dir, "sub", "commands.log")
	os.Mkdir(filepath.Dir(name), 0o755)
	w, err := Open(name, Options{MaxBytes: 100})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	os.RemoveAll(filepath.Dir(name))
	for range 10 {
		if n, err := w.Write(bytes.Repeat([]byte("y"), 60)); n != 60 || err != nil {
			t.Fatalf("Write = %d, %v; want 60, nil", n, err)
		}
	}
	if w.Err() == nil {
		t.Error("Err() = nil after rotations that could not happen")
	}
}

// Writers on several goroutines (Consul's stdout and stderr, commands of
// one machine): run with -race.
func TestWriterConcurrent(t *testing.T) {
	name := filepath.Join(t.TempDir(), "x.log")
	w, err := Open(name, Options{MaxBytes: 5000, Keep: 2})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			for i := range 500 {
				fmt.Fprintf(w, "goroutine %d line %d\n", g, i)
			}
		})
	}
	wg.Wait()
	w.Close()
	if total, files := onDisk(t, name); total > 3*5000 {
		t.Errorf("%d bytes on disk in %v, want at most %d", total, files, 3*5000)
	}
}

// The follow mode: a file others write to through a descriptor (the
// agent's stderr) is rotated by Check, and the descriptor is pointed at
// the new file so that what is written next lands there.
func TestCheckRotatesADescriptor(t *testing.T) {
	name := filepath.Join(t.TempDir(), "agent.log")
	f, err := os.OpenFile(name, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fd, err := syscall.Dup(int(f.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(fd)
	w, err := Open(name, Options{MaxBytes: 1000, Dup: []int{fd}})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	for round := range 5 {
		syscall.Write(fd, bytes.Repeat([]byte("z"), 1100)) // past the cap each round
		syscall.Write(fd, []byte(fmt.Sprintf("round %d\n", round)))
		w.Check()
	}
	syscall.Write(fd, []byte("after\n"))
	if cur, _ := os.ReadFile(name); string(cur) != "after\n" {
		t.Errorf("%s holds %q, want what was written after the last rotation", name, cur)
	}
	if old, _ := os.ReadFile(name + ".1"); !bytes.HasSuffix(old, []byte("round 4\n")) {
		t.Errorf("%s.1 does not end with the last round", name)
	}
}

// Stderr finds the file this process's standard error is: checked in a
// child process whose stderr is a file, which logs past the cap while
// Watch runs.
func TestStderrFollowsTheProcessLog(t *testing.T) {
	if os.Getenv("LOGFILE_HELPER") == "1" {
		w, ok, err := Stderr(Options{MaxBytes: 20000})
		if !ok || err != nil {
			fmt.Printf("Stderr() = %v, %v\n", ok, err)
			os.Exit(2)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { w.Watch(ctx, 5*time.Millisecond); close(done) }()
		for i := range 2000 {
			fmt.Fprintf(os.Stderr, "%s line %d\n", strings.Repeat("l", 80), i)
			if i%20 == 0 {
				time.Sleep(10 * time.Millisecond)
			}
		}
		cancel()
		<-done
		fmt.Fprintln(os.Stderr, "the end")
		os.Exit(0)
	}
	name := filepath.Join(t.TempDir(), "agent.log")
	f, err := os.Create(name)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestStderrFollowsTheProcessLog$")
	cmd.Env = append(os.Environ(), "LOGFILE_HELPER=1")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, f
	err = cmd.Run()
	f.Close()
	if err != nil {
		t.Fatalf("helper: %v\n%s", err, out.String())
	}
	total, files := onDisk(t, name)
	// 170 kB were logged; a check every 5 ms lets the file pass its cap by
	// what is written between two checks.
	if total > 2*20000+20000 {
		t.Errorf("%d bytes on disk in %v after 170 kB logged with a 20 kB cap", total, files)
	}
	if cur, _ := os.ReadFile(name); !bytes.HasSuffix(cur, []byte("the end\n")) {
		t.Errorf("%s does not end with the last line: the process's stderr does not follow the rotation", name)
	}
}

// Stderr says no when standard error is no regular file (a terminal, a
// pipe to journald).
func TestStderrNotAFile(t *testing.T) {
	if os.Getenv("LOGFILE_HELPER") == "2" {
		_, ok, err := Stderr(Options{})
		fmt.Printf("%v %v", ok, err)
		os.Exit(0)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestStderrNotAFile$")
	cmd.Env = append(os.Environ(), "LOGFILE_HELPER=2")
	var errOut bytes.Buffer
	cmd.Stderr = &errOut // a pipe
	out, err := cmd.Output()
	if err != nil || string(out) != "false <nil>" {
		t.Errorf("Stderr() on a pipe: %q, %v; want false <nil>", out, err)
	}
}
