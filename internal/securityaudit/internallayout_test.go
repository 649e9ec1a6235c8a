package securityaudit

import (
	"path"
	"sort"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// productionInternal are the packages under internal/ that are not test
// kits, each with what it is. Everything else under internal/ exists for
// tests and is listed in testKits, so a package added there is placed on
// one side or the other on purpose.
var productionInternal = map[string]string{
	"internal/jwtissuer": "the built-in token issuer of `serve --dev` (tests use it too, as a real issuer)",
	"internal/cmd":       "build tools run by make: release, teststress",
}

// internalSide returns whether pkg, a package under internal/, is a
// registered test kit or registered production code, or "" when it is
// neither.
func internalSide(pkg string) string {
	if isTestKit(pkg) {
		return "test kit"
	}
	for dir := range productionInternal {
		if under(pkg, dir) {
			return "production"
		}
	}
	return ""
}

// TestInternalIsEitherProductionOrTestKit: every package under internal/
// says which side it is on, so production code shared with the kits
// (internal/jwtissuer) never sits among them unnoticed, and a new kit is
// covered by "production code never imports a test kit".
func TestInternalIsEitherProductionOrTestKit(t *testing.T) {
	t.Parallel()
	unplaced := map[string]bool{}
	seen := map[string]bool{}
	_, files := sharedRepo(t)
	for _, f := range files {
		pkg := path.Dir(f.rel)
		if !strings.HasPrefix(pkg, "internal/") {
			continue
		}
		seen[pkg] = true
		if internalSide(pkg) == "" {
			unplaced[pkg] = true
		}
	}
	for dir := range productionInternal {
		found := false
		for pkg := range seen {
			found = found || under(pkg, dir)
		}
		require.True(t, found, "productionInternal names %s, which has no Go files: remove it", dir)
		require.False(t, isTestKit(dir), "%s is listed both as production and as a test kit", dir)
	}
	var list []string
	for pkg := range unplaced {
		list = append(list, pkg)
	}
	sort.Strings(list)
	require.Empty(t, list, "packages under internal/ that are neither a test kit (testKits, and below internal/testkit "+
		"when tests of several packages share it) nor production code (productionInternal)")

	require.Equal(t, "test kit", internalSide("internal/testkit/pgtest"))
	require.Equal(t, "production", internalSide("internal/jwtissuer"))
	require.Equal(t, "production", internalSide("internal/cmd/release"))
	require.Equal(t, "", internalSide("internal/newthing"))
}
