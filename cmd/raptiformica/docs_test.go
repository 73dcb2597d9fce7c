package main

import (
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
	"unicode"

	"github.com/spf13/cobra"
)

// repoRoot is the repository's root, from this package's folder.
var repoRoot = filepath.Join("..", "..")

// commandWord is a word of a command's path, as opposed to an argument
// (FILE, [--dir D], bash|zsh).
var commandWord = regexp.MustCompile(`^[a-z][a-z-]*$`)

// readmeCommands returns the command paths the README's commands table
// names ("platform apply"), each with the row it is on. A row's first cell
// may name several, one per code span (`token create` / `token list`).
func readmeCommands(t *testing.T) map[string]string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	in, found := false, false
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "## ") {
			in = strings.TrimSpace(line) == "## Commands"
			found = found || in
			continue
		}
		if !in || !strings.HasPrefix(line, "| `") {
			continue
		}
		for _, span := range codeSpans(firstCell(line)) {
			var words []string
			for _, w := range strings.Fields(span) {
				if !commandWord.MatchString(w) {
					break
				}
				words = append(words, w)
			}
			if len(words) == 0 {
				t.Errorf("README commands table: %q in row %q names no command", span, line)
				continue
			}
			out[strings.Join(words, " ")] = line
		}
	}
	if !found || len(out) == 0 {
		t.Fatal("README.md has no commands table under \"## Commands\"")
	}
	return out
}

// firstCell is a table row's first cell: up to the first | that is not in
// a code span nor escaped.
func firstCell(row string) string {
	row = strings.TrimPrefix(strings.TrimSpace(row), "|")
	code := false
	for i := 0; i < len(row); i++ {
		switch {
		case row[i] == '`':
			code = !code
		case row[i] == '|' && !code && (i == 0 || row[i-1] != '\\'):
			return row[:i]
		}
	}
	return row
}

// codeSpans returns the text of each code span of s.
func codeSpans(s string) []string {
	var out []string
	for {
		_, rest, ok := strings.Cut(s, "`")
		if !ok {
			return out
		}
		span, after, ok := strings.Cut(rest, "`")
		if !ok {
			return out
		}
		out = append(out, span)
		s = after
	}
}

// cliCommands returns the path of every command of the CLI that a user
// sees: not hidden, not cobra's own help.
func cliCommands() map[string]bool {
	out := map[string]bool{}
	var walk func(c *cobra.Command, prefix string)
	walk = func(c *cobra.Command, prefix string) {
		for _, sub := range c.Commands() {
			if sub.Hidden || sub.Name() == "help" {
				continue
			}
			path := strings.TrimSpace(prefix + " " + sub.Name())
			out[path] = true
			walk(sub, path)
		}
	}
	walk(newRoot(), "")
	return out
}

// TestDocsCommandsTable holds the README's commands table to the CLI: each
// command it names exists, and each command a user can run (subcommands
// included) is in it. A group such as `platform` counts as named when one
// of its subcommands is.
func TestDocsCommandsTable(t *testing.T) {
	documented := readmeCommands(t)
	cli := cliCommands()
	var paths []string
	for p := range documented {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	covered := map[string]bool{}
	for _, p := range paths {
		if !cli[p] {
			t.Errorf("the README's commands table names `%s`, which the CLI does not have (row %q)", p, documented[p])
		}
		words := strings.Fields(p)
		for i := range words {
			covered[strings.Join(words[:i+1], " ")] = true
		}
	}
	paths = paths[:0]
	for p := range cli {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	for _, p := range paths {
		if !covered[p] {
			t.Errorf("command `raptiformica %s` is missing from the README's commands table", p)
		}
	}
}

// markdownLink is an inline link or image: its target up to a space or
// the closing parenthesis.
var markdownLink = regexp.MustCompile(`\]\(([^)\s]+)(?:\s+"[^"]*")?\)`)

// docFiles are the Markdown files whose links must resolve.
func docFiles(t *testing.T) []string {
	t.Helper()
	files := []string{filepath.Join(repoRoot, "README.md"), filepath.Join(repoRoot, "CHANGELOG.md")}
	more, err := filepath.Glob(filepath.Join(repoRoot, "docs", "*.md"))
	if err != nil || len(more) == 0 {
		t.Fatalf("no docs/*.md (%v)", err)
	}
	return append(files, more...)
}

// TestDocsLinks checks every relative link of the README, the changelog
// and docs/: the file it names exists, and an anchor it names is a heading
// of that file (or of the file itself, for #anchor).
func TestDocsLinks(t *testing.T) {
	anchors := map[string]map[string]bool{}
	anchorsOf := func(file string) map[string]bool {
		if a, ok := anchors[file]; ok {
			return a
		}
		b, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		anchors[file] = headingAnchors(string(b))
		return anchors[file]
	}
	for _, file := range docFiles(t) {
		b, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		for n, line := range proseLines(string(b)) {
			if line == "" {
				continue
			}
			for _, m := range markdownLink.FindAllStringSubmatch(line, -1) {
				target := m[1]
				if strings.Contains(target, "://") || strings.HasPrefix(target, "mailto:") {
					continue
				}
				path, anchor, _ := strings.Cut(target, "#")
				dest := file
				if path != "" {
					dest = filepath.Join(filepath.Dir(file), path)
					if _, err := os.Stat(dest); err != nil {
						t.Errorf("%s:%d: link to %s: %v", file, n+1, target, err)
						continue
					}
				}
				if anchor != "" && strings.HasSuffix(dest, ".md") && !anchorsOf(dest)[anchor] {
					t.Errorf("%s:%d: link to %s: %s has no heading with anchor #%s", file, n+1, target, dest, anchor)
				}
			}
		}
	}
}

// proseLines returns the lines of a Markdown text with fenced code blocks
// and inline code blanked (kept as "" so that line numbers hold): links in
// code are not links.
func proseLines(text string) []string {
	lines := strings.Split(text, "\n")
	fenced := false
	for i, l := range lines {
		if strings.HasPrefix(strings.TrimSpace(l), "```") {
			fenced = !fenced
			lines[i] = ""
			continue
		}
		if fenced {
			lines[i] = ""
			continue
		}
		spans := strings.Split(l, "`")
		for j := 1; j < len(spans); j += 2 {
			spans[j] = ""
		}
		lines[i] = strings.Join(spans, "`")
	}
	return lines
}

// headingAnchors returns the anchors GitHub gives the headings of a
// Markdown text: lower-case, punctuation dropped, spaces made hyphens, a
// repeated one suffixed -1, -2.
func headingAnchors(text string) map[string]bool {
	out := map[string]bool{}
	seen := map[string]int{}
	fenced := false
	for _, l := range strings.Split(text, "\n") {
		if strings.HasPrefix(strings.TrimSpace(l), "```") {
			fenced = !fenced
		}
		if fenced || !strings.HasPrefix(l, "#") {
			continue
		}
		h := strings.TrimSpace(strings.TrimLeft(l, "#"))
		var b strings.Builder
		for _, r := range strings.ToLower(h) {
			switch {
			case unicode.IsLetter(r) || unicode.IsDigit(r) || r == '-' || r == '_':
				b.WriteRune(r)
			case r == ' ':
				b.WriteRune('-')
			}
		}
		a := b.String()
		if n := seen[a]; n > 0 {
			seen[a]++
			a = a + "-" + strconv.Itoa(n)
		} else {
			seen[a] = 1
		}
		out[a] = true
	}
	return out
}
