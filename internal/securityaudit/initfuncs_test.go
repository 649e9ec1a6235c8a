package securityaudit

import (
	"go/ast"
	"go/parser"
	"go/token"
	"path"
	"testing"

	"github.com/stretchr/testify/require"
)

// initFuncs returns the number of func init() declarations of f.
func initFuncs(f *ast.File) int {
	n := 0
	for _, decl := range f.Decls {
		if fn, ok := decl.(*ast.FuncDecl); ok && fn.Recv == nil && fn.Name.Name == "init" {
			n++
		}
	}
	return n
}

// TestNoInitRegistries: ../shared/design/STYLE.md, "One Open(ctx, uri)
// factory with a plain switch on the scheme — no init() registries".
// Production code outside the commands declares no init function, so
// what a package does on import is nothing.
func TestNoInitRegistries(t *testing.T) {
	t.Parallel()
	var bad []string
	_, files := sharedRepo(t)
	for _, f := range files {
		pkg := path.Dir(f.rel)
		if f.test || isTestKit(pkg) || under(pkg, "cmd") || under(pkg, "internal/cmd") {
			continue
		}
		if initFuncs(f.ast) > 0 {
			bad = append(bad, f.rel)
		}
	}
	require.Empty(t, bad, "func init() outside the commands: register by a switch or a constructor instead")

	f, err := parser.ParseFile(token.NewFileSet(), "p.go", "package p\nfunc init() {}\nfunc (T) init() {}\nfunc initAll() {}\n", 0)
	require.NoError(t, err)
	require.Equal(t, 1, initFuncs(f), "only a package-level init counts")
}
