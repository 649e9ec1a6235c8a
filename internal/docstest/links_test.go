package docstest

import (
	"os"
	"path"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

var (
	linkRe    = regexp.MustCompile(`\]\(([^)\s]+)\)`)
	headingRe = regexp.MustCompile(`(?m)^#{1,6} +(.+?)\s*$`)
	// anchorDrop is what GitHub drops from a heading to make its anchor:
	// everything but letters, digits, spaces, hyphens and underscores.
	anchorDrop = regexp.MustCompile(`[^\p{L}\p{N} _-]`)
)

// anchors returns the anchors GitHub makes of a document's headings
// (outside fenced blocks).
func anchors(text string) map[string]bool {
	var outside []string
	inFence := false
	for _, line := range strings.Split(text, "\n") {
		if fence.MatchString(line) {
			inFence = !inFence
			continue
		}
		if !inFence {
			outside = append(outside, line)
		}
	}
	out := map[string]bool{}
	for _, m := range headingRe.FindAllStringSubmatch(strings.Join(outside, "\n"), -1) {
		h := strings.ToLower(strings.ReplaceAll(m[1], "`", ""))
		a := strings.ReplaceAll(anchorDrop.ReplaceAllString(h, ""), " ", "-")
		for n := 1; out[a]; n++ { // a repeated heading gets -1, -2, …
			if !out[a+"-"+itoa(n)] {
				a += "-" + itoa(n)
				break
			}
		}
		out[a] = true
	}
	return out
}

func itoa(n int) string {
	const digits = "0123456789"
	if n < 10 {
		return digits[n : n+1]
	}
	return itoa(n/10) + digits[n%10:n%10+1]
}

// brokenLinks lists the relative links of doc (under repo) whose file
// does not exist or whose #anchor is no heading of that document.
func brokenLinks(repo, doc, text string) []string {
	var out []string
	for _, m := range linkRe.FindAllStringSubmatch(text, -1) {
		target := m[1]
		if strings.Contains(target, "://") || strings.HasPrefix(target, "mailto:") {
			continue
		}
		file, anchor, _ := strings.Cut(target, "#")
		resolved := doc
		if file != "" {
			resolved = path.Join(path.Dir(doc), file)
		}
		raw, err := os.ReadFile(filepath.Join(repo, filepath.FromSlash(resolved)))
		if err != nil {
			if _, statErr := os.Stat(filepath.Join(repo, filepath.FromSlash(resolved))); statErr != nil {
				out = append(out, doc+": link to "+target+": "+resolved+" does not exist")
			}
			continue // a directory
		}
		if anchor != "" && strings.HasSuffix(resolved, ".md") && !anchors(string(raw))[anchor] {
			out = append(out, doc+": link to "+target+": "+resolved+" has no heading #"+anchor)
		}
	}
	return out
}

// TestDocLinksResolve: every relative link of the documents names a file
// that exists and, with an anchor, a heading of that document.
func TestDocLinksResolve(t *testing.T) {
	t.Parallel()
	docs, err := Documents(root(t))
	require.NoError(t, err)
	var broken []string
	for _, doc := range append(docs, "SECURITY.md", "CHANGELOG.md") {
		raw, err := os.ReadFile(filepath.Join(root(t), doc))
		if os.IsNotExist(err) {
			continue
		}
		require.NoError(t, err)
		broken = append(broken, brokenLinks(root(t), doc, string(raw))...)
	}
	require.Empty(t, broken)

	t.Run("TheCheckNoticesABrokenLink", func(t *testing.T) {
		a := anchors("# Vault / OpenBao Transit\n## Data keys (cached envelope mode)\n## `keybroker kek status`\n## Notes\n## Notes\n```sh\n# not a heading\n```\n")
		require.Equal(t, map[string]bool{"vault--openbao-transit": true, "data-keys-cached-envelope-mode": true,
			"keybroker-kek-status": true, "notes": true, "notes-1": true}, a)
		got := brokenLinks(root(t), "docs/x.md", "[a](rotation.md#the-job) [b](rotation.md#no-such) [c](../nowhere.md) [d](https://x.org/a#b)")
		require.Equal(t, []string{"docs/x.md: link to rotation.md#no-such: docs/rotation.md has no heading #no-such",
			"docs/x.md: link to ../nowhere.md: nowhere.md does not exist"}, got)
	})
}

var (
	codeSpan   = regexp.MustCompile("`([^`\n]+)`")
	makeTarget = regexp.MustCompile(`(?:^|[\s;&|(])make((?:\s+-[a-zA-Z]+|\s+[A-Z_]+=\S*)*)\s+([a-z][a-z0-9-]*)`)
	ruleRe     = regexp.MustCompile(`(?m)^([a-z][a-z0-9-]*):`)
)

// makeTargets returns the make targets the commands of a document name:
// in code spans and in shell blocks.
func makeTargets(doc, text string) []string {
	var code []string
	for _, m := range codeSpan.FindAllStringSubmatch(text, -1) {
		code = append(code, m[1])
	}
	for _, b := range Parse(doc, text) {
		if b.Shell() {
			code = append(code, b.Commands()...)
		}
	}
	var targets []string
	for _, c := range code {
		for _, m := range makeTarget.FindAllStringSubmatch(c, -1) {
			targets = append(targets, m[2])
		}
	}
	return targets
}

// TestDocMakeTargetsExist: every `make X` the documents give is a target
// of the Makefile.
func TestDocMakeTargetsExist(t *testing.T) {
	t.Parallel()
	raw, err := os.ReadFile(filepath.Join(root(t), "Makefile"))
	require.NoError(t, err)
	rules := map[string]bool{}
	for _, m := range ruleRe.FindAllStringSubmatch(string(raw), -1) {
		rules[m[1]] = true
	}
	docs, err := Documents(root(t))
	require.NoError(t, err)
	seen := 0
	for _, doc := range docs {
		text, err := os.ReadFile(filepath.Join(root(t), filepath.FromSlash(doc)))
		require.NoError(t, err)
		for _, target := range makeTargets(doc, string(text)) {
			require.True(t, rules[target], "%s gives make %s, which the Makefile does not have", doc, target)
			seen++
		}
	}
	require.Greater(t, seen, 10)
	require.Equal(t, []string{"bench", "version", "run"},
		makeTargets("x.md", "`make bench`, `KEYBROKER_X=1 make -s version`, to make a point\n```sh\nmake VERSION=x run\n```\n"))
}
