package capped

import (
	"fmt"
	"io"
	"strings"
	"testing"
)

func TestTailKeepsTheEnd(t *testing.T) {
	tl := NewTail(100)
	var all strings.Builder
	for i := range 1000 {
		line := fmt.Sprintf("line %d\n", i)
		all.WriteString(line)
		tl.Write([]byte(line))
	}
	want := all.String()[all.Len()-100:]
	if got := string(tl.Bytes()); got != want {
		t.Errorf("kept %q, want the last 100 bytes %q", got, want)
	}
	if got, want := tl.Dropped(), int64(all.Len()-100); got != want {
		t.Errorf("dropped %d, want %d", got, want)
	}
	if got, want := tl.LastLines(2), "line 998\nline 999"; got != want {
		t.Errorf("last lines: got %q want %q", got, want)
	}
	// The window's first line is a fragment: never shown as a line.
	if got := tl.LastLines(1000); strings.HasPrefix(got, "ne ") || !strings.HasPrefix(got, "line ") {
		t.Errorf("last lines start with a fragment: %q", got)
	}
}

func TestTailCapHoldsThroughCopy(t *testing.T) {
	tl := NewTail(1000)
	n, err := io.Copy(tl, io.LimitReader(zeros{}, 4<<20))
	if err != nil || n != 4<<20 {
		t.Fatalf("copy: got %d, %v", n, err)
	}
	if got := len(tl.Bytes()); got != 1000 {
		t.Errorf("kept %d bytes, want 1000", got)
	}
	if got := cap(tl.buf); got > 4000 {
		t.Errorf("holds %d bytes of storage for a cap of 1000", got)
	}
	big := strings.Repeat("x", 5000) + "end"
	tl.Write([]byte(big))
	if got := string(tl.Bytes()); len(got) != 1000 || !strings.HasSuffix(got, "end") {
		t.Errorf("one write over the cap: kept %d bytes ending %q", len(got), got[len(got)-3:])
	}
}

func TestLastLines(t *testing.T) {
	for _, tc := range []struct {
		in      string
		n       int
		partial bool
		want    string
	}{
		{"a\nb\nc\n", 2, false, "b\nc"},
		{"a\nb\nc", 5, false, "a\nb\nc"},
		{"frag\nb\nc\n", 5, true, "b\nc"},
		{"fragment only", 5, true, ""},
		{"", 3, false, ""},
	} {
		if got := LastLines([]byte(tc.in), tc.n, tc.partial); got != tc.want {
			t.Errorf("LastLines(%q, %d, %v): got %q want %q", tc.in, tc.n, tc.partial, got, tc.want)
		}
	}
}
