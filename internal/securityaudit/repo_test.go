package securityaudit

import (
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
)

// repoRoot is the module root: the nearest parent with a go.mod.
func repoRoot(t *testing.T) string {
	t.Helper()
	dir, err := os.Getwd()
	require.NoError(t, err)
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		require.NotEqual(t, dir, parent, "no go.mod above the test's directory")
		dir = parent
	}
}

// goFile is one parsed Go file of the repository.
type goFile struct {
	rel  string // slash-separated path from the module root
	test bool   // a _test.go file
	ast  *ast.File
}

// parseRepo parses every Go file of the module, skipping testdata and
// hidden directories.
func parseRepo(t *testing.T, fset *token.FileSet) []goFile {
	t.Helper()
	files, err := parseTree(repoRoot(t), fset)
	require.NoError(t, err)
	require.NotEmpty(t, files)
	return files
}

// shared is the module parsed once for the tests that only read it.
var shared struct {
	once  sync.Once
	fset  *token.FileSet
	files []goFile
	err   error
}

// sharedRepo is parseRepo done once per test binary: the checks that run
// in parallel read one copy of the ASTs instead of parsing the module
// each.
func sharedRepo(t *testing.T) (*token.FileSet, []goFile) {
	t.Helper()
	root := repoRoot(t)
	shared.once.Do(func() {
		shared.fset = token.NewFileSet()
		shared.files, shared.err = parseTree(root, shared.fset)
	})
	require.NoError(t, shared.err)
	require.NotEmpty(t, shared.files)
	return shared.fset, shared.files
}

// parseTree parses every Go file below root, skipping testdata and
// hidden directories.
func parseTree(root string, fset *token.FileSet) ([]goFile, error) {
	var files []goFile
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if path != root && (d.Name() == "testdata" || strings.HasPrefix(d.Name(), ".")) {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") {
			return nil
		}
		f, err := parser.ParseFile(fset, path, nil, parser.SkipObjectResolution)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, path)
		files = append(files, goFile{rel: filepath.ToSlash(rel), test: strings.HasSuffix(path, "_test.go"), ast: f})
		return nil
	})
	return files, err
}
