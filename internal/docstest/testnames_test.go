package docstest

import (
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// docTestRef is a test the prose names in code spans: `TestX`, `FuzzX`,
// `BenchmarkX`, or with its package directory, `pgstore.TestX`.
var docTestRef = regexp.MustCompile("`(?:([a-z0-9_]+(?:/[a-z0-9_]+)*)\\.)?((?:Test|Fuzz|Benchmark)[A-Z][A-Za-z0-9_]*)`")

var testDecl = regexp.MustCompile(`(?m)^func ((?:Test|Fuzz|Benchmark)[A-Za-z0-9_]*)\(`)

// repoTests maps each test, fuzz target and benchmark of the repository
// to the package directories (slash-separated, from the root) declaring it.
func repoTests(t *testing.T, repo string) map[string][]string {
	t.Helper()
	tests := map[string][]string{}
	err := filepath.WalkDir(repo, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (d.Name() == "node_modules" || strings.HasPrefix(d.Name(), ".")) && p != repo {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(p, "_test.go") {
			return nil
		}
		src, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(repo, filepath.Dir(p))
		if err != nil {
			return err
		}
		for _, m := range testDecl.FindAllStringSubmatch(string(src), -1) {
			tests[m[1]] = append(tests[m[1]], filepath.ToSlash(rel))
		}
		return nil
	})
	require.NoError(t, err)
	return tests
}

// staleTestNames lists the tests a document names that no _test.go
// declares (in the package it says, when it says one).
func staleTestNames(doc, text string, tests map[string][]string) []string {
	var out []string
	for _, m := range docTestRef.FindAllStringSubmatch(text, -1) {
		pkg, name := m[1], m[2]
		dirs, ok := tests[name]
		switch {
		case !ok:
			out = append(out, doc+": names "+m[0]+", which no test file declares")
		case pkg != "" && !contains(dirs, pkg):
			out = append(out, doc+": names "+m[0]+", declared in "+strings.Join(dirs, ", ")+" instead")
		}
	}
	return out
}

func contains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// TestDocTestNamesExist: the tests the documents cite as evidence exist
// (docs/security.md has its own, stricter check in internal/securityaudit).
func TestDocTestNamesExist(t *testing.T) {
	t.Parallel()
	repo := root(t)
	tests := repoTests(t, repo)
	require.Contains(t, tests, "TestDocTestNamesExist")
	docs, err := Documents(repo)
	require.NoError(t, err)
	var stale []string
	for _, doc := range docs {
		raw, err := os.ReadFile(filepath.Join(repo, filepath.FromSlash(doc)))
		require.NoError(t, err)
		stale = append(stale, staleTestNames(doc, string(raw), tests)...)
	}
	require.Empty(t, stale)

	t.Run("TheCheckNoticesAStaleName", func(t *testing.T) {
		got := staleTestNames("x.md", "`TestDocTestNamesExist`, `pgstore.TestDocTestNamesExist`, `TestNeverWritten`, `internal/docstest.TestDocTestNamesExist`", tests)
		require.Equal(t, []string{
			"x.md: names `pgstore.TestDocTestNamesExist`, declared in internal/docstest instead",
			"x.md: names `TestNeverWritten`, which no test file declares",
		}, got)
	})
}
