package securityaudit

import (
	"go/token"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestBrokerKnowsNoHTTP: the domain returns outcomes (broker.Outcome) and
// the HTTP layer alone turns them into statuses and codes, from its one
// table. A broker file that imports net/http, or the HTTP layer itself,
// would grow a second table beside it.
func TestBrokerKnowsNoHTTP(t *testing.T) {
	t.Parallel()
	checked := 0
	for _, f := range parseRepo(t, token.NewFileSet()) {
		if f.test || !strings.HasPrefix(f.rel, "broker/") {
			continue
		}
		checked++
		for _, imp := range f.ast.Imports {
			path, err := strconv.Unquote(imp.Path.Value)
			require.NoError(t, err)
			require.False(t, path == "net/http" || strings.HasPrefix(path, "net/http/"), "%s imports %s", f.rel, path)
			require.False(t, strings.HasSuffix(path, "/vaultapi") || strings.Contains(path, "/vaultapi/"), "%s imports %s", f.rel, path)
		}
	}
	require.Greater(t, checked, 10, "the broker's files were read")
}
