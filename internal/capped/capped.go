// Package capped holds Buffer, the one bounded writer that keeps what a
// child process prints: the exec backend's commands, the description's
// hooks and the commands adoption runs over SSH all write into it, so that
// a command printing without end can exhaust neither memory nor a log.
//
// A Buffer never blocks and never fails a write: a writer that returned an
// error would make os/exec close its pipe (the command dies of SIGPIPE
// with its real error lost) and would stall an SSH session's window until
// its deadline. Overflow is signalled instead, three ways: Truncated and
// Err after the fact, and the Overflow channel at once, for a caller that
// stops the command as soon as what it prints can no longer be used.
package capped

import (
	"errors"
	"fmt"
	"sync"
)

// ErrOverflow is what an *OverflowError matches with errors.Is.
var ErrOverflow = errors.New("output over its cap")

// OverflowError says that output passed its cap and how much was dropped.
type OverflowError struct {
	Limit   int   // bytes kept
	Dropped int64 // bytes written after them and not kept
}

func (e *OverflowError) Error() string {
	return fmt.Sprintf("printed more than %s; the rest was not kept", Size(e.Limit))
}

// Is makes errors.Is(err, ErrOverflow) true.
func (e *OverflowError) Is(target error) bool { return target == ErrOverflow }

// Buffer keeps the first limit bytes written to it and counts the rest.
// It is safe for concurrent use (os/exec writes a command's stdout and
// stderr from two goroutines when they go to different writers, and a
// caller that gives up may read while the command still writes).
//
// The storage is a plain slice, never an embedded bytes.Buffer: embedded,
// its ReadFrom would be promoted, and io.Copy would call it and read the
// whole stream past the cap.
type Buffer struct {
	limit int

	mu      sync.Mutex // guards buf, dropped
	buf     []byte
	dropped int64

	full     chan struct{} // closed at the first dropped byte
	fullOnce sync.Once
}

// New returns an empty Buffer that keeps at most limit bytes.
func New(limit int) *Buffer {
	return &Buffer{limit: max(limit, 0), full: make(chan struct{})}
}

// Write keeps what fits under the cap and drops the rest. It always
// reports len(p), nil: see the package comment.
func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	room := b.limit - len(b.buf)
	keep := min(len(p), max(room, 0))
	b.buf = append(b.buf, p[:keep]...)
	over := len(p) - keep
	b.dropped += int64(over)
	b.mu.Unlock()
	if over > 0 {
		b.fullOnce.Do(func() { close(b.full) })
	}
	return len(p), nil
}

// Bytes returns a copy of what was kept.
func (b *Buffer) Bytes() []byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]byte(nil), b.buf...)
}

// String returns what was kept.
func (b *Buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return string(b.buf)
}

// Limit is the cap the buffer was made with.
func (b *Buffer) Limit() int { return b.limit }

// Dropped is how many bytes were written past the cap.
func (b *Buffer) Dropped() int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.dropped
}

// Truncated reports whether anything was dropped.
func (b *Buffer) Truncated() bool { return b.Dropped() > 0 }

// Overflow returns a channel closed when the first byte is dropped.
func (b *Buffer) Overflow() <-chan struct{} { return b.full }

// Err returns nil while nothing was dropped, an *OverflowError after.
func (b *Buffer) Err() error {
	if d := b.Dropped(); d > 0 {
		return &OverflowError{Limit: b.limit, Dropped: d}
	}
	return nil
}

// Note is a line to append to a log after the kept output, saying what
// was left out; it is empty when nothing was.
func (b *Buffer) Note() string {
	if d := b.Dropped(); d > 0 {
		return fmt.Sprintf("[output cut at %s: %d bytes more not kept]\n", Size(b.limit), d)
	}
	return ""
}

// Size spells a byte count as a person reads it: 64 KiB, 1 MiB, 300 bytes.
func Size(n int) string {
	switch {
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%d MiB", n>>20)
	case n >= 1<<10 && n%(1<<10) == 0:
		return fmt.Sprintf("%d KiB", n>>10)
	}
	return fmt.Sprintf("%d bytes", n)
}
