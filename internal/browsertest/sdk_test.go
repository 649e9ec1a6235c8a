package browsertest_test

import (
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestSDKNodeTests runs the SDK's own tests (sdk/js/test: the recovery
// code, the HKDF recipe and the wrap against testdata/legacy-vectors.json,
// the client against a scripted fetch) with Node's test runner on the
// compiled output, so that `make test` runs them too.
func TestSDKNodeTests(t *testing.T) {
	t.Parallel()
	dir := builtSDK(t)
	out, err := runNode(dir, nil, filepath.Join("node_modules", "typescript", "bin", "tsc"), "-p", "tsconfig.test.json")
	require.NoError(t, err, "tsc -p tsconfig.test.json:\n%s", out)
	vectors := "KEYBROKER_LEGACY_VECTORS=" + filepath.Join(repoRoot, "testdata", "legacy-vectors.json")
	out, err = runNode(dir, []string{vectors}, "--test", "dist-test/")
	require.NoError(t, err, "node --test:\n%s", out)
	pass := regexp.MustCompile(`(?m)^# pass (\d+)$`).FindSubmatch(out)
	require.NotNil(t, pass, "%s", out)
	n, _ := strconv.Atoi(string(pass[1]))
	require.Greater(t, n, 40, "the SDK's tests did not all run:\n%s", out)
	require.Regexp(t, `(?m)^# fail 0$`, string(out))
}

// TestSDKKnowsEveryErrorCode: every machine code the vault API can send
// has its place in the SDK's table (sdk/js/src/errors.ts), so that an app
// gets the right error family. A new code in vaultapi fails this test
// until the SDK learns it.
func TestSDKKnowsEveryErrorCode(t *testing.T) {
	t.Parallel()
	table, err := os.ReadFile(filepath.Join(sdkSource(), "src", "errors.ts"))
	require.NoError(t, err)
	codes := vaultAPICodes(t)
	require.Equal(t, "KEY_PROOF_REQUIRED", codes["CodeKeyProofRequired"], "the parser found the codes")
	for name, code := range codes {
		if name == "CodeNotReady" {
			continue // /readyz only; the SDK does not call it
		}
		require.Contains(t, string(table), code+`: "`+code+`"`, "vaultapi.%s (%s) is not in sdk/js/src/errors.ts's ErrorCode", name, code)
		require.Regexp(t, `(?m)^\s+`+code+`: [A-Z][A-Za-z]+Error,$`, string(table), "%s has no error family in sdk/js/src/errors.ts", code)
	}
}

// vaultAPICodes reads the string constants named Code* from vaultapi's
// sources.
func vaultAPICodes(t *testing.T) map[string]string {
	t.Helper()
	fset := token.NewFileSet()
	dir := filepath.Join(repoRoot, "vaultapi")
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	codes := map[string]string{}
	for _, e := range entries {
		if !strings.HasSuffix(e.Name(), ".go") || strings.HasSuffix(e.Name(), "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, filepath.Join(dir, e.Name()), nil, 0)
		require.NoError(t, err)
		for _, decl := range f.Decls {
			gen, ok := decl.(*ast.GenDecl)
			if !ok || gen.Tok != token.CONST {
				continue
			}
			for _, spec := range gen.Specs {
				vs := spec.(*ast.ValueSpec)
				for i, name := range vs.Names {
					if !strings.HasPrefix(name.Name, "Code") || i >= len(vs.Values) {
						continue
					}
					if lit, ok := vs.Values[i].(*ast.BasicLit); ok && lit.Kind == token.STRING {
						codes[name.Name], _ = strconv.Unquote(lit.Value)
					}
				}
			}
		}
	}
	return codes
}
