package rules

import (
	"fmt"
	"regexp"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"
)

// MaxDescriptionSize is the largest description taken, in bytes: far more
// than any platform needs, and a bound on what every node parses on each
// change.
const MaxDescriptionSize = 1 << 20

// literalOnly reports, as problems, every expression of an HCL body that
// computes rather than states: a description is data. Every node parses it
// on each change, and one that computes (a template directive nested six
// deep over 15 items made 15^6 strings) can exhaust every node at once;
// only literal values, lists and objects are taken, which parse and decode
// in time linear in their size. JSON descriptions are literal already:
// HCL evaluates their strings as templates only with a context, which the
// decoder never gives.
func (d *decoder) literalOnly(body *hclsyntax.Body) {
	for _, a := range body.Attributes {
		d.literal(a.Expr)
	}
	for _, b := range body.Blocks {
		d.literalOnly(b.Body)
	}
}

// literal reports the outermost part of e that is not a literal value, a
// list or an object of them.
func (d *decoder) literal(e hclsyntax.Expression) {
	switch e := e.(type) {
	case *hclsyntax.LiteralValueExpr:
	case *hclsyntax.TemplateExpr:
		if !e.IsStringLiteral() {
			d.at(e.SrcRange, "", "a description is literal: this string interpolates or has template directives (write $${ and %%%%{ for the characters)")
		}
	case *hclsyntax.TupleConsExpr:
		for _, x := range e.Exprs {
			d.literal(x)
		}
	case *hclsyntax.ObjectConsExpr:
		for _, it := range e.Items {
			// A bare word as a key is its name, not a reference.
			if k, ok := it.KeyExpr.(*hclsyntax.ObjectConsKeyExpr); ok {
				if t, ok := k.Wrapped.(*hclsyntax.ScopeTraversalExpr); !ok || k.ForceNonLiteral || len(t.Traversal) != 1 {
					d.literal(k.Wrapped)
				}
			} else {
				d.literal(it.KeyExpr)
			}
			d.literal(it.ValueExpr)
		}
	case *hclsyntax.UnaryOpExpr:
		if _, ok := e.Val.(*hclsyntax.LiteralValueExpr); !ok || e.Op != hclsyntax.OpNegate {
			d.at(e.SrcRange, "", "a description is literal: no operators")
		}
	default:
		d.at(e.Range(), "", "a description is literal: only values, lists and objects (found %s)", exprKind(e))
	}
}

// exprKind names an expression for a person.
func exprKind(e hclsyntax.Expression) string {
	switch e.(type) {
	case *hclsyntax.ForExpr:
		return "a for expression"
	case *hclsyntax.FunctionCallExpr:
		return "a function call"
	case *hclsyntax.ConditionalExpr:
		return "a conditional"
	case *hclsyntax.BinaryOpExpr:
		return "an operator"
	case *hclsyntax.ScopeTraversalExpr:
		return "a reference: quote it if it is a string"
	case *hclsyntax.TemplateJoinExpr, *hclsyntax.TemplateWrapExpr:
		return "a template"
	default:
		return fmt.Sprintf("%T", e)
	}
}

// nameRule is what a cluster, machine type or backend name may be: a DNS
// label, lower case. Names become machine IDs, Consul node names, container
// and folder names, and KV keys: a dot made local machines that could
// never be destroyed, a slash broke every inventory write.
var nameRule = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

// name reports a name that breaks nameRule.
func (d *decoder) name(rng hcl.Range, field, s string) {
	if !nameRule.MatchString(s) {
		d.at(rng, field, "%q is not a name: lower-case letters, digits and hyphens, 1 to 63, starting and ending with a letter or digit", s)
	}
}
