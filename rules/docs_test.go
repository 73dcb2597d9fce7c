package rules

import (
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/hashicorp/hcl/v2"
)

// referencePage is docs/reference.md, from this package's folder.
var referencePage = filepath.Join("..", "docs", "reference.md")

// blockSchemas are the schemas of the description's blocks, by the path of
// block types that leads to them. Nil is a block whose every attribute is
// free (compute: its commands are named by the module's author), whose
// entries are listed in freeAttributes instead.
var blockSchemas = map[string]*hcl.BodySchema{
	"policy":              policySchema,
	"backend":             backendSchema,
	"compute":             nil,
	"machine":             machineSchema,
	"machine.provisioner": provisionerSchema,
	"machine.scale":       scaleSchema,
	"hook":                hookSchema,
}

// freeAttributes are the attributes a block without a schema reads by
// name (decoder.compute), and the placeholder for the rest.
var freeAttributes = map[string][]string{
	"compute": {"source", "ref", "<command>"},
}

// descriptionFields walks the description's schema from topSchema and
// returns the dotted path of every block and attribute, a block's labels
// as <label> (machine.<name>.min). A block type this test knows no schema
// of is reported through unknown, so that a new block cannot slip by.
func descriptionFields(unknown func(path string)) []string {
	var out []string
	var walk func(s *hcl.BodySchema, prefix, typePath string)
	walk = func(s *hcl.BodySchema, prefix, typePath string) {
		for _, a := range s.Attributes {
			out = append(out, prefix+a.Name)
		}
		for _, b := range s.Blocks {
			path := prefix + b.Type
			for _, l := range b.LabelNames {
				path += ".<" + l + ">"
			}
			out = append(out, path)
			tp := b.Type
			if typePath != "" {
				tp = typePath + "." + b.Type
			}
			inner, known := blockSchemas[tp]
			switch {
			case !known:
				unknown(tp)
			case inner == nil:
				for _, a := range freeAttributes[tp] {
					out = append(out, path+"."+a)
				}
			default:
				walk(inner, path+".", tp)
			}
		}
	}
	walk(topSchema, "", "")
	return out
}

// referenceEntries reads the entries of one section of docs/reference.md
// (from the level-2 heading that starts with heading to the next): every
// table row whose first cell is a code span, such as
//
//	| `machine.<name>.min` | number | required | 0 to 100,000 | ... |
func referenceEntries(t *testing.T, heading string) map[string]bool {
	t.Helper()
	b, err := os.ReadFile(referencePage)
	if err != nil {
		t.Fatal(err)
	}
	entries := map[string]bool{}
	in, found := false, false
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "## ") {
			in = strings.HasPrefix(line, "## "+heading)
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
		t.Fatalf("%s has no section %q", referencePage, "## "+heading)
	}
	return entries
}

// TestDocsDescriptionFieldsHaveEntries holds docs/reference.md to the
// description's schema: every block and attribute the parser reads has a
// row there (type, default, bounds), and every row names one it reads.
func TestDocsDescriptionFieldsHaveEntries(t *testing.T) {
	fields := descriptionFields(func(path string) {
		t.Errorf("block %q has no schema known to this test: add it to blockSchemas, and its fields to %s", path, referencePage)
	})
	entries := referenceEntries(t, "The platform description")
	checkEntries(t, fields, entries)
}

// TestDocsModuleFieldsHaveEntries does the same for the fields of a module
// file in the original project's format.
func TestDocsModuleFieldsHaveEntries(t *testing.T) {
	fields := append([]string(nil), topFields...)
	for _, f := range computeFields {
		fields = append(fields, "compute.<compute type>.<server type>."+f)
	}
	for _, f := range serverFields {
		fields = append(fields, "server.<server type>.<provisioner>."+f)
	}
	for _, f := range platformFields {
		fields = append(fields, "platform.<platform type>."+f)
	}
	for _, f := range handlerFields {
		fields = append(fields, "platform.<platform type>.hooks.<event>.<handler>."+f)
	}
	checkEntries(t, fields, referenceEntries(t, "Module files"))
}

// checkEntries fails for each field without an entry, and for each entry
// that names no field (a field renamed or removed).
func checkEntries(t *testing.T, fields []string, entries map[string]bool) {
	t.Helper()
	want := map[string]bool{}
	for _, f := range fields {
		want[f] = true
		if !entries[f] {
			t.Errorf("field %s has no entry in %s: add a row | `%s` | type | default | bounds | what it does |", f, referencePage, f)
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
		t.Errorf("%s has an entry for %s, which the schema does not have", referencePage, e)
	}
}
