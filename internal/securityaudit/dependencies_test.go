package securityaudit

import (
	"fmt"
	"path"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// dependencyOwner names the only packages whose production code may
// import a dependency (an import path prefix), and why.
type dependencyOwner struct {
	dep    string
	owners []string // packages, exactly
	why    string
}

// covers reports whether imp is the dependency o rules or below it.
func (o dependencyOwner) covers(imp string) bool {
	return imp == strings.TrimSuffix(o.dep, "/") || strings.HasPrefix(imp, o.dep)
}

// dependencyOwners are the adapters of ../shared/design/STYLE.md, "Shape"
// and "Which way imports point": a KMS SDK is its provider's, the SQL
// drivers are the stores' (and the migration runner's; cmd/keybroker
// wires the pool), routing is vaultapi's, systemd is wiring. broker, the
// domain, therefore imports none of them. Tests and test kits may import
// anything.
var dependencyOwners = []dependencyOwner{
	{"github.com/aws/", []string{"kekproviders/awskms"}, "a KMS SDK lives behind its provider"},
	{"cloud.google.com/go/kms", []string{"kekproviders/gcpkms"}, "a KMS SDK lives behind its provider"},
	// kekproviders.Options passes Cloud KMS client options through to the provider.
	{"google.golang.org/", []string{"kekproviders/gcpkms", "kekproviders"}, "a KMS SDK lives behind its provider"},
	{"github.com/hashicorp/vault/", []string{"kekproviders/vaulttransit"}, "a KMS SDK lives behind its provider"},
	{"github.com/miekg/pkcs11", []string{"kekproviders/pkcs11"}, "a KMS SDK lives behind its provider"},
	{"github.com/jackc/", []string{"pgstore", "migrations", "cmd/keybroker"}, "the SQL driver lives behind the store"},
	{"modernc.org/sqlite", []string{"sqlitestore"}, "the SQL driver lives behind the store"},
	{"github.com/go-chi/", []string{"vaultapi"}, "routing is vaultapi's"},
	{"github.com/coreos/go-systemd", []string{"cmd/keybroker"}, "systemd is wiring"},
}

// dependencyViolation returns why the production code of pkg (a path
// inside the module) may not import imp, or "".
func dependencyViolation(pkg, imp string) string {
	if isTestKit(pkg) {
		return ""
	}
	if imp == "testing" || strings.HasPrefix(imp, "github.com/stretchr/testify") {
		return "production code never imports test support: a package that does is a test kit (list it in testKits)"
	}
	for _, o := range dependencyOwners {
		if !o.covers(imp) {
			continue
		}
		for _, owner := range o.owners {
			if pkg == owner {
				return ""
			}
		}
		return fmt.Sprintf("%s (only %s may import it)", o.why, strings.Join(o.owners, ", "))
	}
	return ""
}

// TestDependenciesStayBehindTheirAdapters reads every production file's
// imports: a KMS SDK, a SQL driver, the router or systemd imported
// outside the package that adapts it, or test support imported by a
// package that is not a registered test kit, fails CI.
func TestDependenciesStayBehindTheirAdapters(t *testing.T) {
	t.Parallel()
	var bad []string
	owned := map[string]bool{}
	_, files := sharedRepo(t)
	for _, f := range files {
		if f.test {
			continue
		}
		pkg := path.Dir(f.rel)
		for _, spec := range f.ast.Imports {
			imp, err := strconv.Unquote(spec.Path.Value)
			require.NoError(t, err)
			if why := dependencyViolation(pkg, imp); why != "" {
				bad = append(bad, fmt.Sprintf("%s imports %s: %s", f.rel, imp, why))
			}
			for _, o := range dependencyOwners {
				owned[o.dep] = owned[o.dep] || o.covers(imp)
			}
		}
	}
	for _, o := range dependencyOwners {
		require.True(t, owned[o.dep], "no production file imports %s: the rule for it is stale", o.dep)
	}
	require.Empty(t, bad, "dependencies outside their adapters (../shared/design/STYLE.md, \"Which way imports point\")")
}

// TestDependencyRulesCatchWhatTheyMust: the checker refuses each kind of
// misplaced dependency and lets the right ones through.
func TestDependencyRulesCatchWhatTheyMust(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		pkg, imp string
		refused  bool
	}{
		{"broker", "github.com/jackc/pgx/v5", true},
		{"broker", "github.com/aws/aws-sdk-go-v2/service/kms", true},
		{"broker", "github.com/go-chi/chi/v5", true},
		{"broker", "golang.org/x/time/rate", false},
		{"vaultapi", "modernc.org/sqlite", true},
		{"vaultapi", "github.com/go-chi/chi/v5", false},
		{"kekproviders/awskms", "cloud.google.com/go/kms/apiv1", true},
		{"kekproviders/awskms", "github.com/aws/aws-sdk-go-v2/service/kms", false},
		{"kekproviders/gcpkms", "google.golang.org/grpc/status", false},
		{"kekproviders/vaulttransit", "google.golang.org/grpc", true},
		{"pgstore", "github.com/jackc/pgx/v5/pgconn", false},
		{"sqlitestore", "github.com/jackc/pgx/v5", true},
		{"cmd/keybroker", "github.com/coreos/go-systemd/v22/daemon", false},
		{"vaultapi", "github.com/coreos/go-systemd/v22/daemon", true},
		{"broker", "testing", true},
		{"internal/jwtissuer", "github.com/stretchr/testify/require", true},
		{"internal/testkit/pgtest", "testing", false},
		{"internal/testkit/pgtest", "github.com/jackc/pgx/v5", false},
		{"kekproviders/pkcs11/softhsmtest", "github.com/miekg/pkcs11", false},
	} {
		got := dependencyViolation(c.pkg, c.imp) != ""
		require.Equal(t, c.refused, got, "%s importing %s", c.pkg, c.imp)
	}
}
