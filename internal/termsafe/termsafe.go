// Package termsafe escapes, for a terminal or a page, strings that members
// and backends wrote: machine names, addresses, reasons, errors, a
// provisioning's output. Any one member may be compromised (see the
// README's Security section), and what it writes about itself is printed
// on the operator's terminal by `members`, `status`, `plan` and the rest:
// raw, an escape sequence there can retitle the window, clear the screen,
// rewrite what the operator reads or, on some terminals, answer with
// keystrokes; a Unicode bidi override reverses the text after it; a tab or
// a newline breaks a table so that a row speaks for another machine.
//
// Unsafe is every control character (C0 with ESC and TAB, DEL, C1), every
// format character (bidi embeddings, overrides and isolates, zero-width
// marks, tags), the line and paragraph separators, and any byte that is
// not UTF-8. Each is shown as Go quotes it (\x1b, \r, \u202e, \xff), so the
// operator sees that it was there. The backslash is left as it is: the
// escapes are for reading, not for decoding back.
//
// The escaping is done where text is printed, never to what is stored:
// `--json` keeps every string, as JSON escapes (see JSON).
package termsafe

import (
	"bytes"
	"fmt"
	"io"
	"strings"
	"unicode"
	"unicode/utf16"
	"unicode/utf8"
)

// isUnsafe reports whether a terminal could act on r, or r reorders or hides
// the text around it.
func isUnsafe(r rune) bool {
	return unicode.IsControl(r) || unicode.In(r, unicode.Cf, unicode.Zl, unicode.Zp)
}

// String is s for one field of a line or a table: every unsafe character
// escaped, the tab and the newline too.
func String(s string) string { return escape(s, false) }

// Text is s for text of several lines (an error, a report): as String,
// but a newline stays a newline.
func Text(s string) string { return escape(s, true) }

// escape escapes s's unsafe characters, keeping newlines when told. A
// string with none, the usual case, is returned as it is.
func escape(s string, keepNewline bool) string {
	i := firstUnsafe(s, keepNewline)
	if i < 0 {
		return s
	}
	var b strings.Builder
	b.Grow(len(s) + 8)
	b.WriteString(s[:i])
	for _, r := range s[i:] {
		// A byte that is not UTF-8 ranges as RuneError, width 1; a real
		// U+FFFD is printable and kept.
		if r == utf8.RuneError {
			if c, w := utf8.DecodeRuneInString(s[i:]); c == utf8.RuneError && w == 1 {
				fmt.Fprintf(&b, `\x%02x`, s[i])
				i++
				continue
			}
		}
		i += utf8.RuneLen(r)
		if !isUnsafe(r) || (keepNewline && r == '\n') {
			b.WriteRune(r)
			continue
		}
		writeEscape(&b, r)
	}
	return b.String()
}

// firstUnsafe is the index of s's first unsafe character or invalid byte,
// or -1.
func firstUnsafe(s string, keepNewline bool) int {
	for i, r := range s {
		if r == utf8.RuneError {
			if _, w := utf8.DecodeRuneInString(s[i:]); w == 1 {
				return i
			}
		}
		if isUnsafe(r) && !(keepNewline && r == '\n') {
			return i
		}
	}
	return -1
}

// writeEscape writes r as a Go string literal would hold it.
func writeEscape(b *strings.Builder, r rune) {
	switch r {
	case '\a':
		b.WriteString(`\a`)
	case '\b':
		b.WriteString(`\b`)
	case '\f':
		b.WriteString(`\f`)
	case '\n':
		b.WriteString(`\n`)
	case '\r':
		b.WriteString(`\r`)
	case '\t':
		b.WriteString(`\t`)
	case '\v':
		b.WriteString(`\v`)
	default:
		switch {
		case r < utf8.RuneSelf:
			fmt.Fprintf(b, `\x%02x`, r)
		case r <= 0xFFFF:
			fmt.Fprintf(b, `\u%04x`, r)
		default:
			fmt.Fprintf(b, `\U%08x`, r)
		}
	}
}

// writer is NewWriter's.
type writer struct{ w io.Writer }

// NewWriter is w with what is written to it escaped as Text escapes it:
// for output made of lines that quote members (progress, a report), where
// escaping each value would take more than the one place that writes.
// Each Write is escaped on its own, so a character split over two writes
// shows as escaped bytes; fmt writes each call's text whole. It reports
// len(p) written when the escaped text was.
func NewWriter(w io.Writer) io.Writer { return writer{w} }

func (w writer) Write(p []byte) (int, error) {
	if _, err := io.WriteString(w.w, Text(string(p))); err != nil {
		return 0, err
	}
	return len(p), nil
}

// JSON is the encoding/json text b with each unsafe character that the
// encoder leaves raw in a string (DEL, C1, format characters) written as
// a JSON escape, \u007f or a surrogate pair for those past U+FFFF: the
// same value for whoever decodes it, nothing to act on for a terminal
// that shows it. b must be what encoding/json wrote (valid UTF-8, no raw
// character outside a string); the result is a new slice.
func JSON(b []byte) []byte {
	var out bytes.Buffer
	out.Grow(len(b))
	for len(b) > 0 {
		r, w := utf8.DecodeRune(b)
		if r >= utf8.RuneSelf && isUnsafe(r) || r == 0x7f {
			if r > 0xFFFF {
				hi, lo := utf16.EncodeRune(r)
				fmt.Fprintf(&out, `\u%04x\u%04x`, hi, lo)
			} else {
				fmt.Fprintf(&out, `\u%04x`, r)
			}
		} else {
			out.Write(b[:w])
		}
		b = b[w:]
	}
	return out.Bytes()
}
