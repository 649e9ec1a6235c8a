package securityaudit

import (
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"path"
	"sort"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// kekInterfaces reads the interfaces the KEK contract declares (kek/*.go)
// and returns each one's method names.
func kekInterfaces(files []goFile) map[string][]string {
	ifaces := map[string][]string{}
	for _, f := range files {
		if f.test || path.Dir(f.rel) != "kek" {
			continue
		}
		ast.Inspect(f.ast, func(n ast.Node) bool {
			spec, ok := n.(*ast.TypeSpec)
			if !ok {
				return true
			}
			it, ok := spec.Type.(*ast.InterfaceType)
			if !ok {
				return true
			}
			for _, m := range it.Methods.List {
				for _, name := range m.Names {
					ifaces[spec.Name.Name] = append(ifaces[spec.Name.Name], name.Name)
				}
			}
			return true
		})
	}
	return ifaces
}

// missingAbilityAssertions returns, for each type of a provider package
// (production code below kekproviders/) that has the methods of kek.KEK,
// the interfaces of the contract whose methods it has but that no
// `var _ kek.X = (*T)(nil)` of its package asserts (io.Closer for a Close
// method too). Without the assertion a changed signature silently drops
// the ability: the type assertion that finds it fails at run time.
func missingAbilityAssertions(files []goFile, ifaces map[string][]string) (missing []string, providers int) {
	methods := map[string]map[string]bool{} // "pkg.Type" → method names
	asserted := map[string]bool{}           // "pkg.Type kek.X"
	for _, f := range files {
		pkg := path.Dir(f.rel)
		if f.test || !strings.HasPrefix(pkg, "kekproviders/") || isTestKit(pkg) {
			continue
		}
		for _, decl := range f.ast.Decls {
			switch d := decl.(type) {
			case *ast.FuncDecl:
				if recv := receiverType(d); recv != "" {
					key := pkg + "." + recv
					if methods[key] == nil {
						methods[key] = map[string]bool{}
					}
					methods[key][d.Name.Name] = true
				}
			case *ast.GenDecl:
				for _, spec := range d.Specs {
					if iface, typ := assertion(spec); typ != "" {
						asserted[pkg+"."+typ+" "+iface] = true
					}
				}
			}
		}
	}
	has := func(set map[string]bool, names []string) bool {
		for _, n := range names {
			if !set[n] {
				return false
			}
		}
		return len(names) > 0
	}
	for typ, set := range methods {
		if !has(set, ifaces["KEK"]) {
			continue
		}
		providers++
		want := []string{"io.Closer"}
		if !set["Close"] {
			want = nil
		}
		for name, ms := range ifaces {
			if has(set, ms) {
				want = append(want, "kek."+name)
			}
		}
		for _, w := range want {
			if !asserted[typ+" "+w] {
				missing = append(missing, fmt.Sprintf("%s has the methods of %s but does not assert it (var _ %s = (*%s)(nil))",
					typ, w, w, typ[strings.LastIndex(typ, ".")+1:]))
			}
		}
	}
	sort.Strings(missing)
	return missing, providers
}

// receiverType is the name of a method's receiver type, or "".
func receiverType(fn *ast.FuncDecl) string {
	if fn.Recv == nil || len(fn.Recv.List) != 1 {
		return ""
	}
	t := fn.Recv.List[0].Type
	if star, ok := t.(*ast.StarExpr); ok {
		t = star.X
	}
	if id, ok := t.(*ast.Ident); ok {
		return id.Name
	}
	return ""
}

// assertion reads `_ pkg.Iface = (*T)(nil)` and returns "pkg.Iface" and
// "T", or "" for anything else.
func assertion(spec ast.Spec) (iface, typ string) {
	vs, ok := spec.(*ast.ValueSpec)
	if !ok || len(vs.Names) != 1 || vs.Names[0].Name != "_" || len(vs.Values) != 1 {
		return "", ""
	}
	sel, ok := vs.Type.(*ast.SelectorExpr)
	if !ok {
		return "", ""
	}
	pkg, ok := sel.X.(*ast.Ident)
	if !ok {
		return "", ""
	}
	call, ok := vs.Values[0].(*ast.CallExpr)
	if !ok || len(call.Args) != 1 {
		return "", ""
	}
	paren, ok := call.Fun.(*ast.ParenExpr)
	if !ok {
		return "", ""
	}
	star, ok := paren.X.(*ast.StarExpr)
	if !ok {
		return "", ""
	}
	id, ok := star.X.(*ast.Ident)
	if !ok {
		return "", ""
	}
	return pkg.Name + "." + sel.Sel.Name, id.Name
}

// TestProvidersAssertEveryAbilityTheyHave: ../shared/design/STYLE.md,
// "Each claimed interface gets var _ broker.KEK = (*Provider)(nil)" — now
// kek.KEK and its optional abilities, read from the contract itself.
func TestProvidersAssertEveryAbilityTheyHave(t *testing.T) {
	t.Parallel()
	_, files := sharedRepo(t)
	ifaces := kekInterfaces(files)
	require.Contains(t, ifaces, "KEK", "kek/ declares the KEK interface")
	require.Greater(t, len(ifaces), 2, "kek/ declares optional abilities")
	missing, providers := missingAbilityAssertions(files, ifaces)
	require.GreaterOrEqual(t, providers, 5, "the providers' KEK types were found")
	require.Empty(t, missing)

	t.Run("TheCheckFindsAMissingAssertion", func(t *testing.T) {
		const src = `package fake
var (
	_ kek.KEK = (*KEK)(nil)
)
type KEK struct{}
func (k *KEK) ID() string { return "" }
func (k *KEK) Wrap() {}
func (k *KEK) Unwrap() {}
func (k *KEK) Status() {}
func (k *KEK) Close() error { return nil }
func (k *KEK) KeyVersion() {}
`
		f, err := parser.ParseFile(token.NewFileSet(), "fake.go", src, 0)
		require.NoError(t, err)
		missing, providers := missingAbilityAssertions([]goFile{{rel: "kekproviders/fake/fake.go", ast: f}}, ifaces)
		require.Equal(t, 1, providers)
		require.Len(t, missing, 2, "StatusChecker and io.Closer are missing; half of Versioner claims nothing: %v", missing)
		require.Contains(t, missing[0], "io.Closer")
		require.Contains(t, missing[1], "kek.StatusChecker")
	})
}
