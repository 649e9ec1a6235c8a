package securityaudit

import (
	"bytes"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// maxFileLines is the length past which a Go source file, production or
// test, must be split by what it holds (../shared/design/STYLE.md: files
// under about 500 lines, named for what is inside).
const maxFileLines = 500

// splitIssue16 is the reason of a file that issue 16 ("one seam, one
// runtime") splits once the parallel work on its package has landed.
const splitIssue16 = "to be split in issue 16"

// longFiles are the Go files allowed past maxFileLines, each with the
// reason. An entry whose file has gone or has come back under the limit
// fails the test, so the list only shrinks: remove the line when you
// split the file.
var longFiles = map[string]string{
	"broker/datakeys.go":    splitIssue16,
	"broker/rewrap.go":      splitIssue16,
	"broker/rewrap_test.go": splitIssue16,
	"broker/runtime.go":     splitIssue16,
	"broker/vault.go":       splitIssue16,
	"cmd/keybroker/internal/config/settings.go": "the one settings table: every setting in one place, " +
		"one row each, is the point of the file (" + splitIssue16 + " if its helpers grow)",
	"internal/bench/bench_test.go":                        splitIssue16,
	"vaultapi/api.go":                                     splitIssue16,
	"vaultapi/api_test.go":                                splitIssue16,
	"vaultapi/ops_test.go":                                splitIssue16,
	"vaultapi/jwtauth/jwtauth.go":                         splitIssue16,
	"vaultapi/jwtauth/jwtauth_test.go":                    splitIssue16,
	"broker/storetest/storetest.go":                       splitIssue16,
	"deploy/compose_db_test.go":                           splitIssue16,
	"deploy/helm_test.go":                                 splitIssue16,
	"deploy/monitoring_test.go":                           splitIssue16,
	"internal/browsertest/harness_test.go":                splitIssue16,
	"internal/testkit/kmstest/faketransit/faketransit.go": splitIssue16,
}

// generatedHeader is Go's marker of a generated file
// (https://go.dev/s/generatedcode); such files are exempt.
var generatedHeader = regexp.MustCompile(`(?m)^// Code generated .* DO NOT EDIT\.$`)

// packageClause finds the line that starts a file's package clause.
var packageClause = regexp.MustCompile(`(?m)^package `)

// goFileLines returns the number of lines of every hand-written Go file
// of the repository, by slash-separated path from the module root. It
// skips hidden directories, testdata, node_modules and vendor.
func goFileLines(t *testing.T) map[string]int {
	t.Helper()
	root := repoRoot(t)
	lines := map[string]int{}
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			name := d.Name()
			if path != root && (strings.HasPrefix(name, ".") || name == "testdata" || name == "node_modules" || name == "vendor") {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") {
			return nil
		}
		src, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		if isGenerated(src) {
			return nil
		}
		rel, _ := filepath.Rel(root, path)
		lines[filepath.ToSlash(rel)] = countLines(src)
		return nil
	})
	require.NoError(t, err)
	return lines
}

// isGenerated reports whether src carries the generated-code marker
// before its package clause.
func isGenerated(src []byte) bool {
	if loc := packageClause.FindIndex(src); loc != nil {
		src = src[:loc[0]]
	}
	return generatedHeader.Match(src)
}

// countLines counts lines as wc -l does, plus a last line without its
// newline.
func countLines(src []byte) int {
	n := bytes.Count(src, []byte("\n"))
	if len(src) > 0 && src[len(src)-1] != '\n' {
		n++
	}
	return n
}

// TestNoSourceFileIsTooLong fails on a Go file over maxFileLines lines
// that longFiles does not name with a reason, and on a longFiles entry
// that no longer needs to be there.
func TestNoSourceFileIsTooLong(t *testing.T) {
	t.Parallel()
	lines := goFileLines(t)
	require.Greater(t, len(lines), 200, "the Go files of the repository were read")
	var tooLong, stale []string
	for rel, n := range lines {
		if n > maxFileLines && longFiles[rel] == "" {
			tooLong = append(tooLong, rel)
		}
	}
	for rel, why := range longFiles {
		require.NotEmpty(t, strings.TrimSpace(why), "%s: longFiles needs a reason", rel)
		if lines[rel] <= maxFileLines {
			stale = append(stale, rel)
		}
	}
	sort.Strings(tooLong)
	sort.Strings(stale)
	require.Empty(t, tooLong, "Go files over %d lines: split each by what it holds, "+
		"or name it in longFiles with the reason it must stay whole", maxFileLines)
	require.Empty(t, stale, "longFiles names files that are gone or no longer over %d lines: remove them", maxFileLines)
}

// TestFileLengthCheckCountsWhatItMust: generated files are recognised by
// their marker only, and lines are counted as wc -l counts them.
func TestFileLengthCheckCountsWhatItMust(t *testing.T) {
	t.Parallel()
	require.True(t, isGenerated([]byte("// Code generated by protoc-gen-go. DO NOT EDIT.\n\npackage x\n")))
	require.False(t, isGenerated([]byte("// Package x is not generated.\npackage x\n")))
	require.False(t, isGenerated([]byte("package x\n\n// Code generated by hand. DO NOT EDIT.\n")),
		"the marker counts only before the package clause")
	require.Equal(t, 0, countLines(nil))
	require.Equal(t, 2, countLines([]byte("a\nb\n")))
	require.Equal(t, 2, countLines([]byte("a\nb")))
}
