package capped

import (
	"bytes"
	"strings"
	"sync"
)

// Tail keeps the last limit bytes written to it: for output whose end says
// what went wrong (a provisioner's steps fail at their last lines), where
// Buffer, which keeps the start, would keep the noise before it. Like
// Buffer it never blocks, never fails a write, and is safe for concurrent
// use.
type Tail struct {
	limit int

	mu      sync.Mutex // guards buf, dropped
	buf     []byte
	dropped int64
}

// NewTail returns an empty Tail that keeps at most the last limit bytes.
func NewTail(limit int) *Tail {
	return &Tail{limit: max(limit, 0)}
}

// Write keeps p's end and drops what falls out of the window. It always
// reports len(p), nil.
func (t *Tail) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(p) >= t.limit {
		t.dropped += int64(len(t.buf) + len(p) - t.limit)
		t.buf = append(t.buf[:0], p[len(p)-t.limit:]...)
		return len(p), nil
	}
	t.buf = append(t.buf, p...)
	// Trimmed in bulk, at twice the cap, so that many small writes copy
	// the window once per limit bytes, not once per write.
	if len(t.buf) > 2*t.limit {
		cut := len(t.buf) - t.limit
		t.dropped += int64(cut)
		t.buf = append(t.buf[:0], t.buf[cut:]...)
	}
	return len(p), nil
}

// Bytes returns a copy of the last limit bytes written.
func (t *Tail) Bytes() []byte {
	t.mu.Lock()
	defer t.mu.Unlock()
	b := t.buf
	if len(b) > t.limit {
		b = b[len(b)-t.limit:]
	}
	return append([]byte(nil), b...)
}

// Dropped is how many bytes, from the start, are no longer kept.
func (t *Tail) Dropped() int64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.dropped + int64(max(len(t.buf)-t.limit, 0))
}

// LastLines returns at most n of the last whole lines kept, without their
// final newline: a first line cut by the window is left out.
func (t *Tail) LastLines(n int) string {
	b := t.Bytes()
	cut := t.Dropped() > 0
	return LastLines(b, n, cut)
}

// LastLines returns at most n of the last lines of b, without the final
// newline; when partial, b's first line is a fragment and never returned.
func LastLines(b []byte, n int, partial bool) string {
	b = bytes.TrimRight(b, "\n")
	if partial {
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			b = b[i+1:]
		} else {
			b = nil
		}
	}
	lines := strings.Split(string(b), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
