package capped

import (
	"errors"
	"io"
	"strings"
	"sync"
	"testing"
)

type zeros struct{}

func (zeros) Read(p []byte) (int, error) { clear(p); return len(p), nil }

// The cap holds through io.Copy, which os/exec and the SSH client use: a
// bytes.Buffer embedded in the writer once lent it its ReadFrom, and the
// whole output was kept.
func TestBufferCapHoldsThroughCopy(t *testing.T) {
	b := New(1000)
	if _, ok := any(b).(io.ReaderFrom); ok {
		t.Fatal("Buffer has a ReadFrom: io.Copy would go around its cap")
	}
	n, err := io.Copy(b, io.LimitReader(zeros{}, 4<<20))
	if err != nil || n != 4<<20 {
		t.Fatalf("copy: got %d, %v; want %d, nil (a full writer still takes everything, or the writer blocks)", n, err, 4<<20)
	}
	if got := len(b.Bytes()); got != 1000 {
		t.Errorf("kept %d bytes, want 1000", got)
	}
	if !b.Truncated() || b.Dropped() != 4<<20-1000 {
		t.Errorf("truncated %v, dropped %d; want true, %d", b.Truncated(), b.Dropped(), 4<<20-1000)
	}
	select {
	case <-b.Overflow():
	default:
		t.Error("Overflow() is not closed after the cap was passed")
	}
	var oe *OverflowError
	if err := b.Err(); !errors.Is(err, ErrOverflow) || !errors.As(err, &oe) || oe.Limit != 1000 {
		t.Errorf("Err() = %v, want an *OverflowError with limit 1000", err)
	}
}

func TestBufferUnderCap(t *testing.T) {
	for _, tc := range []struct {
		name   string
		writes []string
		limit  int
		want   string
		trunc  bool
	}{
		{name: "empty", limit: 4, want: ""},
		{name: "exactly the cap", writes: []string{"ab", "cd"}, limit: 4, want: "abcd"},
		{name: "one byte over", writes: []string{"ab", "cde"}, limit: 4, want: "abcd", trunc: true},
		{name: "a write after the cap", writes: []string{"abcd", "e"}, limit: 4, want: "abcd", trunc: true},
		{name: "zero cap", writes: []string{"a"}, limit: 0, want: "", trunc: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := New(tc.limit)
			for _, w := range tc.writes {
				if n, err := b.Write([]byte(w)); n != len(w) || err != nil {
					t.Fatalf("Write(%q) = %d, %v", w, n, err)
				}
			}
			if got := b.String(); got != tc.want {
				t.Errorf("got %q want %q", got, tc.want)
			}
			if b.Truncated() != tc.trunc {
				t.Errorf("truncated: got %v want %v", b.Truncated(), tc.trunc)
			}
			if (b.Err() != nil) != tc.trunc {
				t.Errorf("Err(): got %v, want an error: %v", b.Err(), tc.trunc)
			}
		})
	}
}

// Writers on two goroutines (a command's stdout and stderr into one
// buffer) and a reader while they write: run with -race.
func TestBufferConcurrent(t *testing.T) {
	b := New(10000)
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for range 1000 {
				b.Write([]byte("0123456789"))
				_ = b.Bytes()
			}
		})
	}
	wg.Wait()
	if len(b.Bytes()) != 10000 || b.Dropped() != 30000 {
		t.Errorf("kept %d, dropped %d; want 10000, 30000", len(b.Bytes()), b.Dropped())
	}
}

// The note says what was left out, for a log line.
func TestBufferNote(t *testing.T) {
	b := New(3)
	b.Write([]byte("abcdef"))
	if got := b.Note(); !strings.Contains(got, "3 bytes") || !strings.Contains(got, "not kept") {
		t.Errorf("Note() = %q", got)
	}
	if got := New(3).Note(); got != "" {
		t.Errorf("Note() of a buffer under its cap = %q, want empty", got)
	}
}
