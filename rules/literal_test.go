package rules

import (
	"strings"
	"testing"
	"time"
)

// nestedTemplate is the 466-byte kind of description that hung every node:
// template directives nested six deep over 15 items, 15^6 strings.
func nestedTemplate(depth int) string {
	items := `["a","b","c","d","e","f","g","h","i","j","k","l","m","n","o"]`
	var open, close strings.Builder
	for i := 0; i < depth; i++ {
		open.WriteString("%{for x" + string(rune('0'+i)) + " in " + items + "}")
		close.WriteString("%{endfor}")
	}
	return `machine "server" {
  min           = 1
  consul_server = true
  backends      = ["local"]
  bootstrap     = [["/bin/echo", "` + open.String() + "x" + close.String() + `"]]
}
`
}

// A description is data: expressions that compute (for expressions,
// template directives and interpolations, function calls, operators,
// conditionals, references) are refused with file:line, at once. The
// nested template took 16 s and was accepted before.
func TestHostileDescriptionIsLiteral(t *testing.T) {
	for name, src := range map[string]string{
		"nested template directives": nestedTemplate(6),
		"a for expression":           `machine "server" {` + "\n" + `  min = 1` + "\n" + `  backends = [for b in ["local"] : b]` + "\n}\n",
		"an interpolation":           `cluster = "${"a"}b"` + "\n",
		"a function call":            `cluster = upper("a")` + "\n",
		"arithmetic":                 `machine "server" {` + "\n" + `  min = 1 + 1` + "\n}\n",
		"a conditional":              `machine "server" {` + "\n" + `  min = true ? 1 : 2` + "\n}\n",
	} {
		t.Run(name, func(t *testing.T) {
			start := time.Now()
			_, err := Parse("hostile.hcl", []byte(src), Options{})
			took := time.Since(start)
			if err == nil || !strings.Contains(err.Error(), "hostile.hcl:") || !strings.Contains(err.Error(), "literal") {
				t.Errorf("got %v, want a refusal naming the file and line and saying a description is literal", err)
			}
			if took > time.Second {
				t.Errorf("took %s to refuse", took)
			}
		})
	}
	// What a description is made of stays accepted: strings (with "$$"
	// and "%%" escapes), numbers, negative ones, bools, lists, objects.
	ok := `cluster = "e2e"
machine "server" {
  min           = 1
  max           = 3
  consul_server = true
  backends      = ["local"]
  bootstrap     = [["/bin/sh", "-c", "echo $${HOME} 100%%"]]
}
backend "local" {
  type     = "local"
  settings = { a = "b", "c d" = "e" }
}
`
	if _, err := Parse("ok.hcl", []byte(ok), Options{}); err != nil {
		t.Errorf("a literal description: %v", err)
	}
}

// A description larger than a description can sensibly be is refused
// before it is parsed.
func TestHostileDescriptionSize(t *testing.T) {
	src := "# " + strings.Repeat("x", MaxDescriptionSize) + "\n"
	if _, err := Parse("big.hcl", []byte(src), Options{}); err == nil || !strings.Contains(err.Error(), "big.hcl") {
		t.Errorf("a %d-byte description: %v, want a refusal naming the file", len(src), err)
	}
}

// One rule for the names of the cluster, machine types and backends, at
// parse time with file and line: a dot made machines that could never be
// destroyed, a slash broke every inventory write.
func TestHostileNames(t *testing.T) {
	base := "machine \"server\" {\n  min = 1\n  consul_server = true\n  backends = [\"local\"]\n}\n"
	for name, src := range map[string]string{
		"a dot in a type":        "machine \"web.v2\" {\n  min = 1\n}\n" + base,
		"a slash in a type":      "machine \"a/b\" {\n  min = 1\n}\n" + base,
		"a control character":    "cluster = \"a\\nb\\u0000c\"\n" + base,
		"an empty cluster":       "cluster = \"\"\n" + base,
		"upper case, a space":    "backend \"Docker Host\" {\n  type = \"docker\"\n}\n" + base,
		"a compute label":        "compute \"x\" \"y z\" {\n  available = \"true\"\n}\n" + base,
		"a 64-character cluster": "cluster = \"" + strings.Repeat("a", 64) + "\"\n" + base,
	} {
		t.Run(name, func(t *testing.T) {
			_, err := Parse("names.hcl", []byte(src), Options{})
			if err == nil || !strings.Contains(err.Error(), "names.hcl:") || !strings.Contains(err.Error(), "is not a name") {
				t.Errorf("got %v, want a refusal naming the file, line and the name", err)
			}
		})
	}
	if _, err := Parse("ok.hcl", []byte("cluster = \"rf-adopt-bd368a\"\n"+base), Options{}); err != nil {
		t.Errorf("good names: %v", err)
	}
}
