package nodeconfig

import (
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"
)

// referencePage is docs/reference.md, from this package's folder.
var referencePage = filepath.Join("..", "..", "docs", "reference.md")

// jsonFields returns the dotted JSON path of every field of t a node config
// file may hold, walking nested structs, pointers to them and slices of
// them (tls.ca_cert, mesh.listen_port). Fields tagged "-" are the agent's
// own, never read from the file.
func jsonFields(t reflect.Type, prefix string) []string {
	for t.Kind() == reflect.Pointer || t.Kind() == reflect.Slice {
		t = t.Elem()
	}
	var out []string
	for i := range t.NumField() {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name == "-" || !f.IsExported() {
			continue
		}
		if name == "" {
			name = f.Name
		}
		path := prefix + name
		out = append(out, path)
		ft := f.Type
		for ft.Kind() == reflect.Pointer || ft.Kind() == reflect.Slice {
			ft = ft.Elem()
		}
		if ft.Kind() == reflect.Struct {
			out = append(out, jsonFields(ft, path+".")...)
		}
	}
	return out
}

// TestDocsNodeConfigFieldsHaveEntries holds docs/reference.md to the node
// config: every field a node config file may hold has a row in its
// section, and every row names a field.
func TestDocsNodeConfigFieldsHaveEntries(t *testing.T) {
	b, err := os.ReadFile(referencePage)
	if err != nil {
		t.Fatal(err)
	}
	entries := map[string]bool{}
	in, found := false, false
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "## ") {
			in = strings.HasPrefix(line, "## The node config")
			found = found || in
			continue
		}
		if !in || !strings.HasPrefix(line, "| `") {
			continue
		}
		first := strings.TrimPrefix(line, "| `")
		if end := strings.Index(first, "`"); end > 0 {
			entries[first[:end]] = true
		}
	}
	if !found {
		t.Fatalf("%s has no section \"## The node config\"", referencePage)
	}
	fields := jsonFields(reflect.TypeFor[Config](), "")
	want := map[string]bool{}
	for _, f := range fields {
		want[f] = true
		if !entries[f] {
			t.Errorf("node config field %s has no entry in %s: add a row | `%s` | type | default | bounds | what it does |", f, referencePage, f)
		}
	}
	var extra []string
	for e := range entries {
		if !want[e] {
			extra = append(extra, e)
		}
	}
	sort.Strings(extra)
	for _, e := range extra {
		t.Errorf("%s has an entry for node config field %s, which Config does not have", referencePage, e)
	}
}
