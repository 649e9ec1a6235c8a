package securityaudit

import (
	"fmt"
	"path"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// module is the import path prefix of this repository's packages.
const module = "github.com/keybroker/keybroker/"

// testKits are packages that exist for tests: production code never
// imports them (a test kit may import another).
var testKits = []string{
	"broker/storetest",
	"kekproviders/kektest",
	"internal/bench",
	"internal/browsertest",
	"internal/docstest",
	"internal/faults",
	"internal/securityaudit",
	"internal/testkit",
	"kekproviders/pkcs11/softhsmtest",
}

// importRule says which of this module's packages a package below dir
// may not import, and why. Rules apply to non-test files; a prefix names
// a package and everything below it.
type importRule struct {
	dir    string
	denied []string
	why    string
}

// importRules are the directions of ../shared/design/STYLE.md, "Which way
// imports point": cmd wires everything; vaultapi reaches keys only
// through broker; broker knows no adapter; providers know no domain; the
// stores may use broker's types; the leaf KEK contract and the Go client
// stand alone.
var importRules = []importRule{
	{"broker", []string{"vaultapi", "pgstore", "sqlitestore", "kekproviders", "migrations", "client", "cmd"},
		"broker is the domain: adapters are injected, never imported"},
	{"kek", []string{""}, "the KEK contract is a leaf: the standard library only"},
	{"kekproviders", []string{"broker", "vaultapi", "pgstore", "sqlitestore", "migrations", "client", "cmd"},
		"a provider knows its SDK and the KEK contract, never the domain"},
	{"vaultapi", []string{"pgstore", "sqlitestore", "kekproviders", "migrations", "client", "cmd"},
		"handlers reach keys only through the domain"},
	{"pgstore", []string{"vaultapi", "sqlitestore", "kekproviders", "client", "cmd"},
		"a store may use broker's types, and nothing else of ours but migrations"},
	{"sqlitestore", []string{"vaultapi", "pgstore", "kekproviders", "client", "cmd"},
		"a store may use broker's types, and nothing else of ours but migrations"},
	{"migrations", []string{"broker", "vaultapi", "pgstore", "sqlitestore", "kekproviders", "client", "cmd"},
		"migrations are SQL and their runner"},
	{"client", []string{"broker", "kek", "kekproviders", "vaultapi", "pgstore", "sqlitestore", "migrations", "cmd", "internal"},
		"the Go client is for other programs: it imports none of the server (the grant format is shared, not the server's)"},
	{"grant", []string{"broker", "kek", "kekproviders", "vaultapi", "pgstore", "sqlitestore", "migrations", "client", "cmd", "internal"},
		"the grant format is read by workers: it imports none of the server"},
}

// importViolation returns why pkg (a path inside the module) may not
// import imp (any import path), or "".
func importViolation(pkg, imp string, test bool) string {
	if !strings.HasPrefix(imp, module) {
		return ""
	}
	target := strings.TrimPrefix(imp, module)
	if strings.HasPrefix(target, "cmd/") && !strings.HasPrefix(pkg, "cmd/") {
		return "nothing imports a command"
	}
	if test {
		return ""
	}
	if !isTestKit(pkg) && isTestKit(target) {
		return "production code never imports a test kit"
	}
	for _, r := range importRules {
		if !under(pkg, r.dir) || isTestKit(pkg) {
			continue
		}
		for _, d := range r.denied {
			if d == "" || under(target, d) {
				if under(target, r.dir) && d == "" {
					continue // a package may import its own subpackages
				}
				return r.why
			}
		}
	}
	return ""
}

func under(p, dir string) bool { return p == dir || strings.HasPrefix(p, dir+"/") }

func isTestKit(p string) bool {
	for _, k := range testKits {
		if under(p, k) {
			return true
		}
	}
	return false
}

// TestImportsPointTheWayTheDesignSays reads every Go file's imports and
// fails on one that points against the design, so a wrong import fails CI.
func TestImportsPointTheWayTheDesignSays(t *testing.T) {
	t.Parallel()
	var bad []string
	checked := 0
	_, files := sharedRepo(t)
	for _, f := range files {
		pkg := path.Dir(f.rel)
		for _, spec := range f.ast.Imports {
			imp, err := strconv.Unquote(spec.Path.Value)
			require.NoError(t, err)
			checked++
			if why := importViolation(pkg, imp, f.test); why != "" {
				bad = append(bad, fmt.Sprintf("%s imports %s: %s", f.rel, strings.TrimPrefix(imp, module), why))
			}
		}
	}
	require.Greater(t, checked, 500, "the imports of the repository were read")
	require.Empty(t, bad, "imports against the design (../shared/design/STYLE.md, \"Which way imports point\")")
}

// TestImportRulesCatchWhatTheyMust: the checker itself refuses each kind
// of wrong import and lets the right ones through.
func TestImportRulesCatchWhatTheyMust(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		pkg, imp string
		test     bool
		refused  bool
	}{
		{"broker", module + "pgstore", false, true},
		{"broker", module + "kek", false, false},
		{"broker", module + "kekproviders/awskms", false, true},
		{"broker", module + "internal/testkit/pgtest", false, true},
		{"broker", module + "internal/testkit/pgtest", true, false},
		{"broker/storetest", module + "broker", false, false},
		{"kek", module + "broker", false, true},
		{"kek", "errors", false, false},
		{"kekproviders/awskms", module + "broker", false, true},
		{"kekproviders/awskms", module + "kek", false, false},
		{"kekproviders/awskms", module + "kekproviders/internal/inflight", false, false},
		{"vaultapi", module + "sqlitestore", false, true},
		{"vaultapi", module + "broker", false, false},
		{"pgstore", module + "broker", false, false},
		{"pgstore", module + "migrations", false, false},
		{"sqlitestore", module + "vaultapi", false, true},
		{"migrations", module + "broker", false, true},
		{"client", module + "vaultapi", false, true},
		{"client", module + "kek", false, true},
		{"client", "net/http", false, false},
		{"client", module + "grant", false, false},
		{"grant/worker", module + "grant", false, false},
		{"grant/worker", module + "broker", false, true},
		{"vaultapi", module + "cmd/keybroker", true, true},
		{"cmd/keybroker", module + "pgstore", false, false},
		{"internal/testkit/apitest", module + "internal/testkit/pgtest", false, false},
	} {
		got := importViolation(c.pkg, c.imp, c.test) != ""
		require.Equal(t, c.refused, got, "%s importing %s (test file: %v)", c.pkg, c.imp, c.test)
	}
}
