package securityaudit

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/internal/docstest"
)

// testRef is a test named in the threat model: `package/path.TestName`.
var testRef = regexp.MustCompile("`([a-z0-9_]+(?:/[a-z0-9_]+)*)\\.((?:Test|Fuzz)[A-Za-z0-9_]+)`")

// requiredRows are the threats the issue asked the document to cover; a
// table row must mention each.
var requiredRows = []string{
	"database leak", "operator with database and kek", "court order", "lost recovery code",
	"a wrap copied between users", "kms outage", "a compromised replica", "a stolen backup",
	"a missing secret at deploy time",
}

// TestSecurityDocNamesExistingTests keeps docs/security.md from rotting:
// every row of its tables that is a threat names at least one test, every
// test it names exists in the package it says (func TestX( or func FuzzX(
// in a _test.go file of that directory), and the threats the document
// must cover have their rows.
func TestSecurityDocNamesExistingTests(t *testing.T) {
	t.Parallel()
	root := repoRoot(t)
	raw, err := os.ReadFile(filepath.Join(root, "docs", "security.md"))
	require.NoError(t, err)
	doc := string(raw)

	var threatRows []string
	inThreatTable := false
	for _, line := range strings.Split(doc, "\n") {
		if !strings.HasPrefix(line, "|") {
			inThreatTable = false
			continue
		}
		cells := strings.Split(strings.Trim(line, "|"), "|")
		header := strings.ToLower(strings.TrimSpace(cells[0]))
		switch {
		case header == "threat":
			inThreatTable = true // a table whose first column is the threat
		case strings.HasPrefix(header, "---"):
		case inThreatTable:
			threatRows = append(threatRows, line)
			require.Regexp(t, testRef, cells[len(cells)-1], "a threat row names no test in its last column: %s", line)
		}
	}
	require.GreaterOrEqual(t, len(threatRows), len(requiredRows))
	rowsText := strings.ToLower(strings.Join(threatRows, "\n"))
	for _, r := range requiredRows {
		require.Contains(t, rowsText, r, "the threat model has no row for %q", r)
	}

	refs := testRef.FindAllStringSubmatch(doc, -1)
	require.NotEmpty(t, refs)
	for _, ref := range refs {
		pkg, name := ref[1], ref[2]
		require.True(t, testExists(t, filepath.Join(root, filepath.FromSlash(pkg)), name),
			"docs/security.md names %s.%s, which does not exist: fix the document or restore the test", pkg, name)
	}

	t.Run("TheCheckNoticesAMissingTest", func(t *testing.T) {
		require.False(t, testExists(t, filepath.Join(root, "vaultapi"), "TestThatWasNeverWritten"))
		require.False(t, testExists(t, filepath.Join(root, "no", "such", "package"), "TestX"))
	})
}

// testExists reports whether a _test.go file in dir declares func name(.
func testExists(t *testing.T, dir, name string) bool {
	t.Helper()
	ok, err := docstest.TestExists(dir, name)
	require.NoError(t, err)
	return ok
}
