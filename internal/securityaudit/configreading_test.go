package securityaudit

import (
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"path"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// configReaders are where production code may read flags and the
// environment (../shared/design/STYLE.md: cmd/keybroker "is the only place
// that reads flags and the environment (providers that read secrets from
// env/files by design are the exception)").
var configReaders = []struct{ dir, why string }{
	{"cmd", "the commands wire everything"},
	{"internal/cmd", "the build tools are commands"},
	{"kekproviders", "a provider reads its SDK's standard variables and secrets by design"},
}

// envFuncs are the os functions that read or change the environment.
var envFuncs = map[string]bool{"Getenv": true, "LookupEnv": true, "Environ": true, "Setenv": true, "ExpandEnv": true}

// configReadViolations returns where the production file f (rel, a
// slash-separated path from the module root) reads flags or the
// environment outside configReaders.
func configReadViolations(fset *token.FileSet, rel string, f *ast.File) []string {
	pkg := path.Dir(rel)
	if isTestKit(pkg) {
		return nil
	}
	for _, r := range configReaders {
		if under(pkg, r.dir) {
			return nil
		}
	}
	var found []string
	osName := ""
	for _, spec := range f.Imports {
		imp, _ := strconv.Unquote(spec.Path.Value)
		switch imp {
		case "flag":
			found = append(found, fmt.Sprintf("%s:%d: imports flag", rel, fset.Position(spec.Pos()).Line))
		case "os":
			osName = "os"
			if spec.Name != nil {
				osName = spec.Name.Name
			}
		}
	}
	if osName == "" {
		return found
	}
	ast.Inspect(f, func(n ast.Node) bool {
		sel, ok := n.(*ast.SelectorExpr)
		if !ok {
			return true
		}
		if id, ok := sel.X.(*ast.Ident); ok && id.Name == osName && envFuncs[sel.Sel.Name] {
			found = append(found, fmt.Sprintf("%s:%d: os.%s", rel, fset.Position(sel.Pos()).Line, sel.Sel.Name))
		}
		return true
	})
	return found
}

// TestOnlyCommandsReadFlagsAndEnvironment: the domain, the HTTP layer and
// the stores take their settings as typed values from cmd/keybroker,
// which resolves them once; one of them reading a flag or a variable of
// its own would be a setting the one settings table does not know.
func TestOnlyCommandsReadFlagsAndEnvironment(t *testing.T) {
	t.Parallel()
	fset, files := sharedRepo(t)
	var bad []string
	for _, f := range files {
		if !f.test {
			bad = append(bad, configReadViolations(fset, f.rel, f.ast)...)
		}
	}
	require.Empty(t, bad, "flags or the environment read outside the commands (../shared/design/STYLE.md, \"Shape\")")

	t.Run("TheScanFindsEachWay", func(t *testing.T) {
		const src = `package p
import (
	"flag"
	sys "os"
)
var _ = flag.String("x", "", "")
func f() string { v, _ := sys.LookupEnv("A"); return sys.Getenv("B") + v }`
		fset := token.NewFileSet()
		f, err := parser.ParseFile(fset, "p.go", src, 0)
		require.NoError(t, err)
		require.Len(t, configReadViolations(fset, "broker/p.go", f), 3)
		require.Empty(t, configReadViolations(fset, "cmd/keybroker/p.go", f))
		require.Empty(t, configReadViolations(fset, "kekproviders/awskms/p.go", f))
		require.Empty(t, configReadViolations(fset, "internal/testkit/pgtest/p.go", f))
		require.Len(t, configReadViolations(fset, "vaultapi/jwtauth/p.go", f), 3)
		require.True(t, strings.HasPrefix(configReadViolations(fset, "pgstore/p.go", f)[0], "pgstore/p.go:3:"), "the finding names the line")
	})
}
