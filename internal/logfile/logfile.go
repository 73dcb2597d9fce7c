// Package logfile holds Writer, a log file with a size cap: when the file
// would pass the cap it is renamed NAME.1 (NAME.1 to NAME.2, and so on, up
// to Keep old files) and a new NAME is started. The agent's agent.log,
// Consul's consul.log and the exec backend's commands.log are written
// through it, so that no log fills a machine's disk.
//
// A log is never worth stopping a node for: a Writer's Write always
// reports success, and a failure (a full disk, a folder removed) is kept
// for Err. When the file cannot be rotated the Writer truncates it rather
// than let it grow past the cap.
//
// On disk, a log takes at most (Keep+1) × MaxBytes, plus one write larger
// than MaxBytes (which goes whole into a fresh file) or, for a file others
// write to through a descriptor (see Stderr), what they write between two
// checks.
package logfile

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Defaults for a zero Options.
const (
	DefaultMaxBytes = 10 << 20
	DefaultKeep     = 1
)

// Options say when a log is rotated.
type Options struct {
	// MaxBytes is the size a file is rotated at (DefaultMaxBytes if 0).
	MaxBytes int64
	// Keep is how many rotated files are kept (DefaultKeep if 0).
	Keep int
	// Dup are descriptors of this process that point at the file and are
	// pointed at the new file after each rotation (the agent's stdout and
	// stderr, which its logger and the Go runtime write to).
	Dup []int
}

// Writer appends to a log file and rotates it. It is safe for concurrent
// use.
type Writer struct {
	path string
	opt  Options

	mu   sync.Mutex // guards f, size, err
	f    *os.File
	size int64 // what this Writer knows to be in f
	err  error // the last failure, for Err
}

// Open opens (or creates, mode 0644) the log file name for appending.
func Open(name string, opt Options) (*Writer, error) {
	if opt.MaxBytes <= 0 {
		opt.MaxBytes = DefaultMaxBytes
	}
	if opt.Keep <= 0 {
		opt.Keep = DefaultKeep
	}
	f, err := os.OpenFile(name, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	return &Writer{path: name, opt: opt, f: f, size: fi.Size()}, nil
}

// Write appends p, first rotating the file when p would take it past the
// cap. It always returns len(p), nil: see the package comment.
func (w *Writer) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.f == nil {
		return len(p), nil
	}
	if w.size > 0 && w.size+int64(len(p)) > w.opt.MaxBytes {
		w.rotate()
	}
	n, err := w.f.Write(p)
	w.size += int64(n)
	if err != nil {
		w.err = fmt.Errorf("write %s: %w", w.path, err)
	}
	return len(p), nil
}

// Check rotates the file when it has passed the cap, counting what was
// written to it through other descriptors too (see Options.Dup).
func (w *Writer) Check() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.f == nil {
		return
	}
	fi, err := w.f.Stat()
	if err != nil {
		w.err = fmt.Errorf("stat %s: %w", w.path, err)
		return
	}
	w.size = fi.Size()
	if w.size > w.opt.MaxBytes {
		w.rotate()
	}
}

// Watch calls Check every interval while the file grows, and less often
// while it does not, up to QuietChecks intervals apart: an idle process is
// not woken every second to find nothing logged. It blocks until ctx ends.
func (w *Writer) Watch(ctx context.Context, every time.Duration) {
	wait := every
	t := time.NewTimer(wait)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		w.mu.Lock()
		before := w.size
		w.mu.Unlock()
		w.Check()
		w.mu.Lock()
		grew := w.size != before
		w.mu.Unlock()
		if grew {
			wait = every
		} else {
			wait = min(2*wait, QuietChecks*every)
		}
		t.Reset(wait)
	}
}

// QuietChecks bounds how far apart Watch checks a file that does not grow,
// in its intervals: a burst of logging after a quiet while passes the cap
// by at most what is written in that time before the checks come every
// interval again.
const QuietChecks = 16

// rotate moves NAME to NAME.1 (after NAME.1 to NAME.2 … up to Keep) and
// opens a new NAME with the old one's mode. When it cannot, the current
// file is emptied instead: losing old lines is better than a full disk.
// w.mu is held.
func (w *Writer) rotate() {
	mode := os.FileMode(0o644)
	if fi, err := w.f.Stat(); err == nil {
		mode = fi.Mode().Perm()
	}
	fail := func(err error) {
		w.err = fmt.Errorf("rotate %s: %w", w.path, err)
		if terr := w.f.Truncate(0); terr == nil {
			w.size = 0
		}
	}
	for i := w.opt.Keep - 1; i >= 1; i-- {
		err := os.Rename(fmt.Sprintf("%s.%d", w.path, i), fmt.Sprintf("%s.%d", w.path, i+1))
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			fail(err)
			return
		}
	}
	if err := os.Rename(w.path, w.path+".1"); err != nil {
		fail(err)
		return
	}
	nf, err := os.OpenFile(w.path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, mode)
	if err != nil {
		fail(err)
		return
	}
	_ = nf.Chmod(mode) // the umask may have taken some away
	for _, fd := range w.opt.Dup {
		if err := syscall.Dup3(int(nf.Fd()), fd, 0); err != nil {
			w.err = fmt.Errorf("point descriptor %d at %s: %w", fd, w.path, err)
		}
	}
	w.f.Close()
	w.f, w.size = nf, 0
}

// Err returns the last failure to write or rotate, or nil.
func (w *Writer) Err() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.err
}

// Close closes the file; later writes are dropped.
func (w *Writer) Close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.f == nil {
		return nil
	}
	err := w.f.Close()
	w.f = nil
	return err
}

// Stderr returns a Writer on the file that this process's standard error
// is, when it is a regular file: an agent started with its output
// redirected to agent.log (by the local backend, or by adoption's
// `>>agent.log` on a machine without systemd). Its Dup is standard error,
// and standard output when it is the same file, so that the logger, the Go
// runtime (panics) and whatever else writes there follow each rotation.
// ok is false, with no error, when standard error is anything else (a
// terminal, a pipe, journald's socket), which rotates on its own or not at
// all. The caller runs Watch to have the file checked.
func Stderr(opt Options) (w *Writer, ok bool, err error) {
	var st syscall.Stat_t
	if err := syscall.Fstat(2, &st); err != nil {
		return nil, false, fmt.Errorf("stat standard error: %w", err)
	}
	if st.Mode&syscall.S_IFMT != syscall.S_IFREG {
		return nil, false, nil
	}
	name, err := os.Readlink("/proc/self/fd/2")
	if err != nil {
		return nil, false, fmt.Errorf("find the file of standard error: %w", err)
	}
	if strings.HasSuffix(name, " (deleted)") {
		return nil, false, nil
	}
	var named syscall.Stat_t
	if err := syscall.Stat(name, &named); err != nil || named.Dev != st.Dev || named.Ino != st.Ino {
		return nil, false, nil // renamed or replaced by someone else
	}
	opt.Dup = []int{2}
	var out syscall.Stat_t
	if syscall.Fstat(1, &out) == nil && out.Dev == st.Dev && out.Ino == st.Ino {
		opt.Dup = []int{1, 2}
	}
	w, err = Open(name, opt)
	if err != nil {
		return nil, false, err
	}
	return w, true, nil
}
