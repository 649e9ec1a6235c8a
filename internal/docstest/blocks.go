// Package docstest keeps the documentation's commands honest: it finds
// every shell block of README.md, deploy/README.md, deploy/*/README.md,
// docs/*.md and sdk/js/README.md, and its tests check that each one
// either runs in a named test or says what it needs that a test machine
// lacks — and run the ones they can, against the real binary and
// PostgreSQL.
//
// A block says which by one or more HTML comments on the lines right
// above its fence (invisible once rendered):
//
//	<!-- runs-in: cmd/keybroker.TestX, deploy.TestY -->
//	<!-- needs: docker -->
//
// runs-in names tests as docs/security.md does (package directory from
// the repository root, a dot, the test); needs names one of Needs.
package docstest

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
)

// ShellLanguages are the info strings of fenced blocks that hold
// commands.
var ShellLanguages = []string{"sh", "bash", "shell", "console"}

// Needs are what a block may say it needs, with what a test machine
// lacks. A block that needs something else adds it here, with the reason
// no test can give it.
var Needs = map[string]string{
	"docker":          "a Docker engine (the tests load the compose file with compose-go and build no image)",
	"systemd host":    "root on a host booted with systemd (the tests verify the units with systemd-analyze and run keybroker as the unit would)",
	"tpm2":            "a TPM 2.0 chip for systemd-creds (none on the build machine)",
	"hsm":             "an HSM token made with OpenSC's pkcs11-tool and a cgo build (make build-pkcs11); the tests drive SoftHSM2 through the PKCS#11 API",
	"kubernetes":      "a Kubernetes cluster (the tests render and decode the manifests and the chart)",
	"helm":            "the helm CLI (the tests render the chart with the Helm SDK and run helm lint's rules)",
	"aws account":     "an AWS account (the tests use local-kms and check the IAM policies against what keybroker calls)",
	"gcp project":     "a Google Cloud project (the tests use an in-process Cloud KMS speaking its protocol)",
	"openbao":         "a Vault or OpenBao binary (none can be installed on the build machine)",
	"a quiet machine": "minutes of otherwise idle cores (the suite never runs the load benchmark)",
	"npm registry":    "the npm registry (npm ci and npm pack; .ci/run installs the SDK's packages, and the tests that need them skip loudly without)",
}

// Block is one fenced code block of a document.
type Block struct {
	File   string   // path from the repository root, slash-separated
	Line   int      // the line of the opening fence, from 1
	Lang   string   // the info string's first word
	Body   string   // the lines between the fences, indentation removed
	RunsIn []string // tests named by runs-in markers: "pkg/dir.TestName"
	Needs  []string // what needs markers name
	// BadMarkers are marker-like comments above the fence that did not
	// parse, verbatim.
	BadMarkers []string
}

// Shell reports whether the block holds commands.
func (b Block) Shell() bool { return slices.Contains(ShellLanguages, b.Lang) }

// String names the block for messages: file:line and its first command.
func (b Block) String() string {
	first := ""
	if cmds := b.Commands(); len(cmds) > 0 {
		first = cmds[0]
	}
	if len(first) > 60 {
		first = first[:60] + "…"
	}
	return fmt.Sprintf("%s:%d (%s)", b.File, b.Line, first)
}

var (
	// fence opens or closes a fenced block: three or more backticks (whose
	// info string holds no backtick, as CommonMark has it) or tildes.
	fence     = regexp.MustCompile("^(\\s*)(```+|~~~+)\\s*([A-Za-z0-9_+-]*)(?:\\s[^`]*)?$")
	markerRe  = regexp.MustCompile(`^\s*<!--\s*(runs-in|needs):\s*(.*?)\s*-->\s*$`)
	anyMarker = regexp.MustCompile(`^\s*<!--\s*(runs?[- ]?in|needs?)\b`)
	testRef   = regexp.MustCompile(`^[a-z0-9_]+(?:/[a-z0-9_]+)*\.(?:Test|Fuzz|Benchmark)[A-Za-z0-9_]+$`)
)

// Parse returns the fenced blocks of a document, with their markers.
func Parse(file, text string) []Block {
	lines := strings.Split(text, "\n")
	var blocks []Block
	for i := 0; i < len(lines); i++ {
		m := fence.FindStringSubmatch(lines[i])
		if m == nil {
			continue
		}
		indent, marks := m[1], m[2]
		b := Block{File: file, Line: i + 1, Lang: m[3]}
		for j := i - 1; j >= 0; j-- {
			line := lines[j]
			if mm := markerRe.FindStringSubmatch(line); mm != nil {
				ok := addMarker(&b, mm[1], mm[2])
				if !ok {
					b.BadMarkers = append(b.BadMarkers, strings.TrimSpace(line))
				}
				continue
			}
			if anyMarker.MatchString(line) {
				b.BadMarkers = append(b.BadMarkers, strings.TrimSpace(line))
				continue
			}
			break
		}
		var body []string
		for i++; i < len(lines); i++ {
			trimmed := strings.TrimSpace(lines[i])
			if strings.HasPrefix(trimmed, marks[:3]) && strings.Trim(trimmed, marks[:1]) == "" && len(trimmed) >= len(marks) {
				break
			}
			body = append(body, strings.TrimPrefix(lines[i], indent))
		}
		b.Body = strings.Join(body, "\n")
		blocks = append(blocks, b)
	}
	return blocks
}

// addMarker records one marker's value on b; false when it does not
// parse (an unknown need, a malformed test name, nothing named).
func addMarker(b *Block, kind, value string) bool {
	var items []string
	for item := range strings.SplitSeq(value, ",") {
		if item = strings.TrimSpace(item); item != "" {
			items = append(items, item)
		}
	}
	if len(items) == 0 {
		return false
	}
	for _, item := range items {
		switch kind {
		case "runs-in":
			if !testRef.MatchString(item) {
				return false
			}
			b.RunsIn = append(b.RunsIn, item)
		case "needs":
			if _, ok := Needs[item]; !ok {
				return false
			}
			b.Needs = append(b.Needs, item)
		}
	}
	return true
}

// Commands returns the block's commands: continuation lines joined,
// comments and blank lines dropped, and in a console block only the
// lines after a "$ " prompt (the rest is output). The lines of a
// here-document belong to the command that opens it.
func (b Block) Commands() []string {
	var cmds []string
	var cur strings.Builder
	heredoc := ""
	for _, line := range strings.Split(b.Body, "\n") {
		if heredoc != "" {
			cur.WriteString("\n" + line)
			if strings.TrimSpace(line) == heredoc {
				cmds = append(cmds, cur.String())
				cur.Reset()
				heredoc = ""
			}
			continue
		}
		if b.Lang == "console" && cur.Len() == 0 {
			rest, ok := strings.CutPrefix(line, "$ ")
			if !ok {
				continue
			}
			line = rest
		}
		trimmed := strings.TrimSpace(line)
		if cur.Len() == 0 && (trimmed == "" || strings.HasPrefix(trimmed, "#")) {
			continue
		}
		if cont, ok := strings.CutSuffix(line, "\\"); ok {
			cur.WriteString(cont)
			continue
		}
		cur.WriteString(line)
		if m := heredocStart.FindStringSubmatch(line); m != nil {
			heredoc = m[1]
			continue
		}
		cmds = append(cmds, strings.TrimSpace(cur.String()))
		cur.Reset()
	}
	if cur.Len() > 0 {
		cmds = append(cmds, strings.TrimSpace(cur.String()))
	}
	return cmds
}

var heredocStart = regexp.MustCompile(`<<-?\s*['"]?([A-Za-z_]+)['"]?\s*$`)

// IndentedLines returns the lines (from 1) that open an indented code
// block — four spaces or more after a blank line, outside fenced blocks —
// with their text: commands there would escape the markers.
func IndentedLines(text string) map[int]string {
	out := map[int]string{}
	inFence := ""
	lines := strings.Split(text, "\n")
	for i, line := range lines {
		if m := fence.FindStringSubmatch(line); m != nil {
			switch {
			case inFence == "":
				inFence = m[2][:3]
			case strings.HasPrefix(strings.TrimSpace(line), inFence):
				inFence = ""
			}
			continue
		}
		if inFence == "" && i > 0 && strings.TrimSpace(lines[i-1]) == "" && strings.HasPrefix(line, "    ") && strings.TrimSpace(line) != "" {
			out[i+1] = strings.TrimSpace(line)
		}
	}
	return out
}

// Documents returns the documents whose commands are kept honest, as
// paths from root: README.md, deploy/README.md, sdk/js/README.md,
// deploy/*/README.md and docs/*.md.
func Documents(root string) ([]string, error) {
	docs := []string{"README.md", "deploy/README.md", "sdk/js/README.md"}
	for _, pattern := range []string{"deploy/*/README.md", "docs/*.md"} {
		matches, err := filepath.Glob(filepath.Join(root, filepath.FromSlash(pattern)))
		if err != nil {
			return nil, err
		}
		for _, m := range matches {
			rel, err := filepath.Rel(root, m)
			if err != nil {
				return nil, err
			}
			docs = append(docs, filepath.ToSlash(rel))
		}
	}
	return docs, nil
}

// ParseFile reads and parses one document under root.
func ParseFile(root, doc string) ([]Block, error) {
	raw, err := os.ReadFile(filepath.Join(root, filepath.FromSlash(doc)))
	if err != nil {
		return nil, err
	}
	return Parse(doc, string(raw)), nil
}

// TestExists reports whether a _test.go file in dir declares func name(.
func TestExists(dir, name string) (bool, error) {
	files, err := filepath.Glob(filepath.Join(dir, "*_test.go"))
	if err != nil {
		return false, err
	}
	decl := regexp.MustCompile(`(?m)^func ` + regexp.QuoteMeta(name) + `\(`)
	for _, f := range files {
		src, err := os.ReadFile(f)
		if err != nil {
			return false, err
		}
		if decl.Match(src) {
			return true, nil
		}
	}
	return false, nil
}
