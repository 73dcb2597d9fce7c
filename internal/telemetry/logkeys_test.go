package telemetry

import (
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"path/filepath"
	"strings"
	"testing"
)

// TestFloorPlanOneSetOfLogKeys: every field of every structured log line
// in the project is named by one of the Key constants of this package,
// never by a string written where the line is logged: a field that names
// the same thing in two packages has one name, which a person searching
// the logs of a whole cluster can rely on.
func TestFloorPlanOneSetOfLogKeys(t *testing.T) {
	fset := token.NewFileSet()
	keys := map[string]bool{}
	own, err := parser.ParseFile(fset, "telemetry.go", nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range own.Decls {
		if g, ok := d.(*ast.GenDecl); ok && g.Tok == token.CONST {
			for _, s := range g.Specs {
				for _, n := range s.(*ast.ValueSpec).Names {
					if strings.HasPrefix(n.Name, "Key") {
						keys[n.Name] = true
					}
				}
			}
		}
	}
	if len(keys) < 20 {
		t.Fatalf("found %d Key constants in telemetry.go: the test reads the wrong file", len(keys))
	}
	root := filepath.Join("..", "..")
	checked := 0
	err = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (strings.HasPrefix(d.Name(), ".") && p != root || d.Name() == "test") {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(p, ".go") || strings.HasSuffix(p, "_test.go") {
			return nil
		}
		f, err := parser.ParseFile(fset, p, nil, 0)
		if err != nil {
			return err
		}
		ast.Inspect(f, func(n ast.Node) bool {
			call, ok := n.(*ast.CallExpr)
			if !ok {
				return true
			}
			sel, ok := call.Fun.(*ast.SelectorExpr)
			if !ok {
				return true
			}
			if x, ok := sel.X.(*ast.Ident); ok && (x.Name == "http" || x.Name == "fmt") {
				return true
			}
			first := 0
			switch sel.Sel.Name {
			case "Trace", "Debug", "Info", "Warn", "Error":
				// After the message, which is written where the line is
				// logged: a call whose first argument is none is another
				// method of that name.
				if len(call.Args) == 0 {
					return true
				}
				if msg, ok := call.Args[0].(*ast.BasicLit); !ok || msg.Kind != token.STRING {
					return true
				}
				first = 1
			case "With":
			default:
				return true
			}
			last := len(call.Args)
			if call.Ellipsis.IsValid() {
				last-- // fields made elsewhere: their own Key constants
			}
			for i := first; i < last; i += 2 {
				checked++
				switch k := call.Args[i].(type) {
				case *ast.SelectorExpr:
					if pkg, ok := k.X.(*ast.Ident); ok && pkg.Name == "telemetry" && keys[k.Sel.Name] {
						continue
					}
				case *ast.Ident:
					if f.Name.Name == "telemetry" && keys[k.Name] {
						continue
					}
				}
				t.Errorf("%s: a log field not named by a telemetry.Key constant", fset.Position(call.Args[i].Pos()))
			}
			return true
		})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if checked < 100 {
		t.Errorf("checked %d log fields: the walk missed the code", checked)
	}
}
