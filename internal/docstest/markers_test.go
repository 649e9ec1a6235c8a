package docstest

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// root is the repository root, two levels up.
func root(t *testing.T) string {
	t.Helper()
	dir, err := filepath.Abs(filepath.Join("..", ".."))
	require.NoError(t, err)
	_, err = os.Stat(filepath.Join(dir, "go.mod"))
	require.NoError(t, err, "the repository root has no go.mod")
	return dir
}

// indentedProblems lists the indented code blocks of a document that
// hold commands: they would escape the markers.
func indentedProblems(doc, text string) []string {
	var out []string
	for line, first := range IndentedLines(text) {
		if looksLikeCommands(first) {
			out = append(out, fmt.Sprintf("%s:%d (%s): a command in an indented block: fence it as ```sh and say where it runs", doc, line, first))
		}
	}
	slices.Sort(out)
	return out
}

// allBlocks parses every document Documents names.
func allBlocks(t *testing.T) []Block {
	t.Helper()
	docs, err := Documents(root(t))
	require.NoError(t, err)
	var blocks []Block
	for _, doc := range docs {
		b, err := ParseFile(root(t), doc)
		require.NoError(t, err)
		blocks = append(blocks, b...)
	}
	return blocks
}

// problems lists what is wrong with the shell blocks: a block without a
// marker, a marker that does not parse, a test that does not exist; and a
// block without a language that holds commands.
func problems(repo string, blocks []Block) []string {
	var out []string
	for _, b := range blocks {
		for _, bad := range b.BadMarkers {
			out = append(out, b.String()+": a marker that does not parse: "+bad+
				" (runs-in: pkg/dir.TestName, …; needs: one of docstest.Needs)")
		}
		if !b.Shell() {
			if b.Lang == "" && looksLikeCommands(b.Body) {
				out = append(out, b.String()+": commands in a block without a language: mark it ```sh (or ```console) and say where it runs")
			}
			continue
		}
		if len(b.RunsIn) == 0 && len(b.Needs) == 0 {
			out = append(out, b.String()+": runs in no test and needs nothing named: add <!-- runs-in: pkg/dir.TestName --> "+
				"for the test that runs it (internal/docstest.TestDocCommandsRun runs the cheap ones), or <!-- needs: … --> for what no test machine has")
		}
		for _, ref := range b.RunsIn {
			dot := strings.LastIndex(ref, ".")
			pkg, name := ref[:dot], ref[dot+1:]
			ok, err := TestExists(filepath.Join(repo, filepath.FromSlash(pkg)), name)
			if err != nil || !ok {
				out = append(out, b.String()+": names "+ref+", which does not exist: fix the marker or restore the test")
			}
		}
	}
	return out
}

// commandWords start a line of commands.
var commandWords = []string{"keybroker", "bin/keybroker", "/usr/local/bin/keybroker", "make", "curl", "sudo", "docker", "kubectl", "helm",
	"go", "export", "systemctl", "systemd-run", "systemd-creds", "vault", "bao", "aws", "gcloud", "softhsm2-util", "pkcs11-tool",
	"openssl", "psql", "pg_dump", "wrk", "cd", "cp", "mkdir", "install"}

func looksLikeCommands(body string) bool {
	for _, line := range strings.Split(body, "\n") {
		fields := strings.Fields(strings.TrimPrefix(strings.TrimSpace(line), "$ "))
		if len(fields) > 0 && (strings.HasPrefix(strings.TrimSpace(line), "$ ") || slices.Contains(commandWords, fields[0])) {
			return true
		}
	}
	return false
}

// TestEveryDocCommandRunsOrIsMarked: every shell block of the documents
// names the test that runs it or what it needs that no test machine has,
// and every test it names exists.
func TestEveryDocCommandRunsOrIsMarked(t *testing.T) {
	t.Parallel()
	blocks := allBlocks(t)
	shell := 0
	for _, b := range blocks {
		if b.Shell() {
			shell++
		}
	}
	require.Greater(t, shell, 30, "the documents' shell blocks were not found")
	p := problems(root(t), blocks)
	docs, err := Documents(root(t))
	require.NoError(t, err)
	for _, doc := range docs {
		raw, err := os.ReadFile(filepath.Join(root(t), doc))
		require.NoError(t, err)
		p = append(p, indentedProblems(doc, string(raw))...)
	}
	if len(p) > 0 {
		t.Fatalf("%d shell blocks are not kept honest:\n%s", len(p), strings.Join(p, "\n"))
	}

	t.Run("TheCheckNoticesEachMistake", func(t *testing.T) {
		doc := strings.Join([]string{
			"```sh", "keybroker kek generate", "```",
			"<!-- runs-in: vaultapi.TestThatWasNeverWritten -->", "```sh", "keybroker version", "```",
			"<!-- needs: a spaceship -->", "```sh", "keybroker version", "```",
			"<!-- runs in: cmd/keybroker.TestVersionAndUsage -->", "```console", "$ keybroker version", "```",
			"```", "$ keybroker kek status", "```",
			"<!-- runs-in: cmd/keybroker.TestVersionAndUsage -->", "<!-- needs: docker -->", "```bash", "keybroker version", "```",
			"```json", `{"a": 1}`, "```",
		}, "\n")
		got := problems(root(t), Parse("x.md", doc))
		require.Len(t, got, 7, "%s", strings.Join(got, "\n"))
		require.Contains(t, got[0], "x.md:1 (keybroker kek generate): runs in no test")
		require.Contains(t, got[1], "vaultapi.TestThatWasNeverWritten, which does not exist")
		require.Contains(t, got[2], "does not parse: <!-- needs: a spaceship -->")
		require.Contains(t, got[3], "x.md:9 (keybroker version): runs in no test", "a marker that does not parse marks nothing")
		require.Contains(t, got[4], "does not parse: <!-- runs in: cmd/keybroker.TestVersionAndUsage -->")
		require.Contains(t, got[5], "x.md:13 (keybroker version): runs in no test")
		require.Contains(t, got[6], "x.md:16 ($ keybroker kek status): commands in a block without a language")

		indented := indentedProblems("y.md", "Create the key:\n\n    vault write -f transit/keys/k derived=true\n\nThe policy:\n\n    path \"transit/keys/k\" {}\n")
		require.Equal(t, []string{"y.md:3 (vault write -f transit/keys/k derived=true): a command in an indented block: fence it as ```sh and say where it runs"}, indented)
	})
}

// TestParseBlocks: markers stack above an indented fence, continuation
// lines join, console output and comments are not commands, and a
// here-document stays with its command.
func TestParseBlocks(t *testing.T) {
	t.Parallel()
	doc := "1. Step\n\n   <!-- needs: docker -->\n   <!-- runs-in: deploy.TestCompose -->\n   ```sh\n" +
		"   docker compose up -d   # start\n   sudo systemd-run --pipe \\\n     /usr/local/bin/keybroker kek check\n   ```\n\n" +
		"```console\n$ keybroker kek status\nKEK id  format\n\n$ keybroker rewrap   # now\n[===>  ]\n```\n" +
		"```sh\ncat > a.lua <<LUA\nwrk.method = \"POST\"\nLUA\nwrk -s a.lua\n```\n"
	blocks := Parse("d.md", doc)
	require.Len(t, blocks, 3)
	require.Equal(t, 5, blocks[0].Line)
	require.Equal(t, []string{"docker"}, blocks[0].Needs)
	require.Equal(t, []string{"deploy.TestCompose"}, blocks[0].RunsIn)
	require.Equal(t, []string{"docker compose up -d   # start", "sudo systemd-run --pipe   /usr/local/bin/keybroker kek check"}, blocks[0].Commands())
	require.Equal(t, []string{"keybroker kek status", "keybroker rewrap   # now"}, blocks[1].Commands())
	require.Equal(t, []string{"cat > a.lua <<LUA\nwrk.method = \"POST\"\nLUA", "wrk -s a.lua"}, blocks[2].Commands())

	inline := Parse("z.md", "```` ```sh ```` in prose opens no block\n```sh\nkeybroker version\n```\n")
	require.Len(t, inline, 1, "a backtick fence's info string holds no backtick (CommonMark)")
	require.Equal(t, 2, inline[0].Line)
}
