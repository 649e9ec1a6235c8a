package securityaudit

import (
	"go/ast"
	"go/parser"
	"go/token"
	"regexp"
	"testing"

	"github.com/stretchr/testify/require"
)

// constantTimeComparers are the functions through which keybroker compares
// secrets; each must do it with crypto/subtle. The key check value decides
// whether a client-sent master key is the user's (MASTER_KEY_MISMATCH), the
// key possession proof whether a client may replace a zero-knowledge
// recovery wrap (KEY_PROOF_MISMATCH), the service key guards export and
// erasure: an early-exit comparison of any would let a caller learn it
// byte by byte from response times.
var constantTimeComparers = []struct{ file, function string }{
	{"broker/crypto.go", "keyCheckMatches"},
	{"broker/crypto.go", "equalConstantTime"},
	{"broker/crypto.go", "keyProofMatches"},
	{"vaultapi/service.go", "matches"}, // (*serviceKey).matches
}

// secretIdent matches identifiers that hold secrets or values derived
// from them.
var secretIdent = regexp.MustCompile(`(?i)^(mk|masterkeys?|kcv|keycheck(value)?|storedkcv|(key)?proofs?|(stored)?hash|digest|servicekey|secret(id)?|password|plaintext|token|mac|wrappedmk|recoverywrappedmk)$`)

// comparisonExempt lists non-test files that may compare such values
// directly, with the reason.
var comparisonExempt = map[string]string{
	"cmd/keybroker-demo/main.go":                        "a client checking the keys it holds itself: no attacker-controlled input, no oracle",
	"kekproviders/kektest/outages.go":                   "the provider conformance suite (test helper) compares its own probe plaintexts",
	"internal/testkit/kmstest/faketransit/auth.go":      "an in-process Vault fake for tests",
	"internal/testkit/kmstest/fakegcpkms/fakegcpkms.go": "an in-process Cloud KMS fake for tests",
	"internal/testkit/kmstest/localkms/localkms.go":     "test plumbing",
	"internal/jwtissuer/jwtissuer.go":                   "the test and dev token issuer",
}

// TestSecretComparisonsAreConstantTime checks the source, not the clock:
// timing tests are flaky and prove little. Each comparer above must call
// subtle.ConstantTimeCompare, and no other non-test code may compare a
// secret-named value with ==, !=, bytes.Equal, bytes.Compare,
// strings.EqualFold, strings.Compare, slices.Equal or reflect.DeepEqual
// (comparisons with nil, "", literals and lengths are not comparisons of
// secrets).
func TestSecretComparisonsAreConstantTime(t *testing.T) {
	t.Parallel()
	fset := token.NewFileSet()
	files := parseRepo(t, fset)

	for _, c := range constantTimeComparers {
		found := false
		for _, f := range files {
			if f.rel != c.file {
				continue
			}
			for _, decl := range f.ast.Decls {
				fn, ok := decl.(*ast.FuncDecl)
				if !ok || fn.Name.Name != c.function {
					continue
				}
				found = true
				require.True(t, callsSelector(fn.Body, "subtle", "ConstantTimeCompare"),
					"%s: %s must compare with subtle.ConstantTimeCompare", c.file, c.function)
			}
		}
		require.True(t, found, "%s: function %s is gone; update this test with its replacement", c.file, c.function)
	}

	var findings []string
	for _, f := range files {
		if !f.test && comparisonExempt[f.rel] == "" {
			findings = append(findings, variableTimeComparisons(fset, f.ast)...)
		}
	}
	require.Empty(t, findings, "secrets compared in variable time; use subtle.ConstantTimeCompare (or add a reasoned exemption)")

	t.Run("TheScanFindsAnEarlyExitComparison", func(t *testing.T) {
		const src = `package p
func f(mk []byte, v *V, kcv string) bool {
	if v.KeyCheck == nil || len(mk) != 32 { return false }
	return *v.KeyCheck == kcv || bytes.Equal(v.MasterKey, mk) || string(mk) != "x" && strings.EqualFold(kcv, v.Other)
}`
		fset := token.NewFileSet()
		f, err := parser.ParseFile(fset, "p.go", src, 0)
		require.NoError(t, err)
		require.Len(t, variableTimeComparisons(fset, f), 3)
	})
}

// variableTimeComparisons lists the comparisons of secret-named values in
// f that are not constant-time.
func variableTimeComparisons(fset *token.FileSet, f *ast.File) []string {
	var findings []string
	ast.Inspect(f, func(n ast.Node) bool {
		switch x := n.(type) {
		case *ast.BinaryExpr:
			if (x.Op == token.EQL || x.Op == token.NEQ) && (secretOperand(x.X) || secretOperand(x.Y)) && !trivialOperand(x.X) && !trivialOperand(x.Y) {
				findings = append(findings, fset.Position(x.Pos()).String()+": "+x.Op.String())
			}
		case *ast.CallExpr:
			if isVariableTimeCompare(x.Fun) {
				for _, arg := range x.Args {
					if secretOperand(arg) {
						findings = append(findings, fset.Position(x.Pos()).String()+": variable-time comparison")
						break
					}
				}
			}
		}
		return true
	})
	return findings
}

func callsSelector(body ast.Node, pkg, name string) bool {
	found := false
	ast.Inspect(body, func(n ast.Node) bool {
		if sel, ok := n.(*ast.SelectorExpr); ok {
			if id, ok := sel.X.(*ast.Ident); ok && id.Name == pkg && sel.Sel.Name == name {
				found = true
			}
		}
		return !found
	})
	return found
}

func isVariableTimeCompare(fun ast.Expr) bool {
	sel, ok := fun.(*ast.SelectorExpr)
	if !ok {
		return false
	}
	id, ok := sel.X.(*ast.Ident)
	if !ok {
		return false
	}
	switch id.Name + "." + sel.Sel.Name {
	case "bytes.Equal", "bytes.Compare", "strings.EqualFold", "strings.Compare", "slices.Equal", "reflect.DeepEqual":
		return true
	}
	return false
}

// secretOperand reports whether e names a secret: an identifier, or the
// last name of a selector (v.KeyCheck, res.MasterKey), that secretIdent
// matches, possibly dereferenced, indexed or converted.
func secretOperand(e ast.Expr) bool {
	switch x := e.(type) {
	case *ast.Ident:
		return secretIdent.MatchString(x.Name)
	case *ast.SelectorExpr:
		return secretIdent.MatchString(x.Sel.Name)
	case *ast.StarExpr:
		return secretOperand(x.X)
	case *ast.ParenExpr:
		return secretOperand(x.X)
	case *ast.IndexExpr:
		return secretOperand(x.X)
	case *ast.SliceExpr:
		return secretOperand(x.X)
	case *ast.CallExpr:
		// A conversion such as string(mk) or []byte(kcv); other calls
		// (len(mk), subtle.ConstantTimeCompare(...)) compute something else.
		if len(x.Args) == 1 && isConversion(x.Fun) {
			return secretOperand(x.Args[0])
		}
	}
	return false
}

func isConversion(fun ast.Expr) bool {
	switch f := fun.(type) {
	case *ast.Ident:
		return f.Name == "string"
	case *ast.ArrayType:
		return true
	}
	return false
}

// trivialOperand is nil, a literal, or a length: comparing a secret with
// one of these reveals nothing a constant-time comparison would hide.
func trivialOperand(e ast.Expr) bool {
	switch x := e.(type) {
	case *ast.Ident:
		return x.Name == "nil" || x.Name == "true" || x.Name == "false"
	case *ast.BasicLit:
		return true
	case *ast.CallExpr:
		if id, ok := x.Fun.(*ast.Ident); ok && (id.Name == "len" || id.Name == "cap") {
			return true
		}
	case *ast.ParenExpr:
		return trivialOperand(x.X)
	}
	return false
}
