package securityaudit

import (
	"go/token"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestGrantPackagesUseTheStandardLibraryOnly: the mission grant format
// (grant/) and the worker's package (grant/worker/) are what a worker
// imports to hold a private key and mission keys. They import the
// standard library and each other only — no third-party code beside
// the keys, and none of the server's packages, which would drag the
// server's dependencies (and its master-key code) into a worker.
func TestGrantPackagesUseTheStandardLibraryOnly(t *testing.T) {
	t.Parallel()
	const module = "github.com/keybroker/keybroker/"
	checked := 0
	for _, f := range parseRepo(t, token.NewFileSet()) {
		if f.test || !strings.HasPrefix(f.rel, "grant/") {
			continue
		}
		checked++
		for _, imp := range f.ast.Imports {
			path, err := strconv.Unquote(imp.Path.Value)
			require.NoError(t, err)
			first, _, _ := strings.Cut(path, "/")
			standard := !strings.Contains(first, ".")
			require.True(t, standard || path == module+"grant", "%s imports %s: the grant packages use the standard library only", f.rel, path)
		}
	}
	require.GreaterOrEqual(t, checked, 4, "the grant packages' files were read")
}
