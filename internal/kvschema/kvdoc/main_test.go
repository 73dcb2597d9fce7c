package main

import (
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite docs/kv.md from the doc comments")

// kvPage is docs/kv.md, from this package's folder.
var kvPage = filepath.Join("..", "..", "..", "docs", "kv.md")

// TestDocsKVMapIsGenerated holds docs/kv.md to the doc comments of package
// kvschema: a key added, moved or explained anew in the code shows on the
// page, or this fails and says how to bring it up to date.
func TestDocsKVMapIsGenerated(t *testing.T) {
	want, err := render("..")
	if err != nil {
		t.Fatal(err)
	}
	if *update {
		if err := os.WriteFile(kvPage, want, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, err := os.ReadFile(kvPage)
	if err != nil {
		t.Fatalf("%v: generate it with `go generate ./internal/kvschema/`", err)
	}
	if string(got) != string(want) {
		gl, wl := strings.Split(string(got), "\n"), strings.Split(string(want), "\n")
		line := 0
		for line < len(gl) && line < len(wl) && gl[line] == wl[line] {
			line++
		}
		t.Errorf("docs/kv.md is not what the doc comments of internal/kvschema give (first difference at line %d);\n"+
			"regenerate it: go generate ./internal/kvschema/ (or go test ./internal/kvschema/kvdoc -run TestDocsKVMapIsGenerated -update)", line+1)
	}
}

// A key constant without a doc comment is refused: the page would list
// the key without saying what it holds.
func TestDocsKVMapRefusesAnUndocumentedKey(t *testing.T) {
	dir := t.TempDir()
	src := "// Package kvschema is a test.\npackage kvschema\n\n" +
		"const (\n\t// Prefix is the folder.\n\tPrefix = \"raptiformica/\"\n\tSecret = Prefix + \"secret\"\n)\n"
	if err := os.WriteFile(filepath.Join(dir, "k.go"), []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := render(dir)
	if err == nil || !strings.Contains(err.Error(), "Secret") {
		t.Fatalf("got %v, want an error naming Secret", err)
	}
	src = strings.Replace(src, "\tSecret", "\t// Secret is a secret.\n\tSecret", 1)
	if err := os.WriteFile(filepath.Join(dir, "k.go"), []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	page, err := render(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(page), "| `raptiformica/secret` | `Secret` | Secret is a secret. |") {
		t.Errorf("the page has no row for the key, with its value worked out:\n%s", page)
	}
}
