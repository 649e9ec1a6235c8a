package docstest

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/internal/faults"
)

// commandPath is the command words of a usage: "kek status" of
// "keybroker kek status [flags]", "completion bash|zsh|fish" expanded.
func commandPaths(usage string) []string {
	fields := strings.Fields(strings.ReplaceAll(usage, `\|`, "|"))
	if len(fields) == 0 || fields[0] != "keybroker" {
		return nil
	}
	paths := []string{""}
	for _, f := range fields[1:] {
		if !regexp.MustCompile(`^[a-z][a-z0-9-]*(\|[a-z][a-z0-9-]*)*$`).MatchString(f) {
			break
		}
		var next []string
		for _, p := range paths {
			for alt := range strings.SplitSeq(f, "|") {
				next = append(next, strings.TrimSpace(p+" "+alt))
			}
		}
		paths = next
	}
	return paths
}

var flagRe = regexp.MustCompile(`(?:^|[\s(\[` + "`" + `])(--[a-z][a-z0-9-]*)`)

// readmeCommands returns the README's command table: each row's command
// paths and the flags the row names.
func readmeCommands(t *testing.T) map[string][]string {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(root(t), "README.md"))
	require.NoError(t, err)
	_, section, ok := strings.Cut(string(raw), "\n## Commands\n")
	require.True(t, ok, "README.md has no Commands section")
	section, _, _ = strings.Cut(section, "\n## ")
	rows := map[string][]string{}
	for _, line := range strings.Split(section, "\n") {
		if !strings.HasPrefix(line, "| `keybroker") {
			continue
		}
		cells := strings.SplitN(strings.Trim(line, "|"), " | ", 2)
		usage := strings.Trim(strings.TrimSpace(cells[0]), "`")
		var flags []string
		for _, m := range flagRe.FindAllStringSubmatch(strings.Join(cells, " "), -1) {
			if m[1] != "--help" {
				flags = append(flags, m[1])
			}
		}
		for _, p := range commandPaths(usage) {
			rows[p] = flags
		}
	}
	return rows
}

// TestREADMECommandTableMatchesHelp: the README's command table lists
// exactly the commands `keybroker --help` lists, and every flag a row
// names is one that command's -h lists.
func TestREADMECommandTableMatchesHelp(t *testing.T) {
	t.Parallel()
	bin := faults.Keybroker(t)
	out, err := exec.Command(bin, "--help").Output()
	require.NoError(t, err)
	var help []string
	for _, line := range strings.Split(string(out), "\n") {
		usage := regexp.MustCompile(`\s{2,}`).Split(strings.TrimSpace(line), 2)[0] // the description follows two spaces
		for _, p := range commandPaths(usage) {
			if p != "" {
				help = append(help, p)
			}
		}
	}
	require.Contains(t, help, "kek status", "keybroker --help lists no commands:\n%s", out)
	readme := readmeCommands(t)
	var documented []string
	for p := range readme {
		documented = append(documented, p)
	}
	slices.Sort(help)
	slices.Sort(documented)
	require.Equal(t, help, documented, "the README's Commands table and keybroker --help list other commands")

	for path, flags := range readme {
		if len(flags) == 0 {
			continue
		}
		args := append(strings.Fields(path), "-h")
		out, err := exec.Command(bin, args...).CombinedOutput()
		require.NoError(t, err, "keybroker %s: %s", strings.Join(args, " "), out)
		for _, f := range flags {
			require.Regexp(t, `(?m)^\s*`+regexp.QuoteMeta(f)+`\b`, string(out), "the README's row of keybroker %s names %s, which its -h does not list", path, f)
		}
	}

	t.Run("TheCheckReadsUsages", func(t *testing.T) {
		require.Equal(t, []string{"completion bash", "completion zsh", "completion fish"}, commandPaths(`keybroker completion bash\|zsh\|fish`))
		require.Equal(t, []string{"grant keygen"}, commandPaths("keybroker grant keygen --algorithm ALG --private-key PATH"))
		require.Equal(t, []string{"healthcheck"}, commandPaths("keybroker healthcheck [--url URL]"))
		require.Nil(t, commandPaths("Usage:"))
	})
}

// TestREADMEConfigurationDefaultsMatchConfigShow: each default the
// README's configuration table gives as a plain value is the value
// `keybroker config show` reports, from "default", with nothing set; a
// setting the table says has none ("—") shows none.
func TestREADMEConfigurationDefaultsMatchConfigShow(t *testing.T) {
	t.Parallel()
	bin := faults.Keybroker(t)
	cmd := exec.Command(bin, "config", "show")
	cmd.Dir = t.TempDir()
	cmd.Env = []string{"PATH=" + os.Getenv("PATH")}
	out, _ := cmd.Output() // exit 1: nothing configured, serve would not start
	shown := map[string]string{}
	for _, m := range regexp.MustCompile(`(?m)^\s+(\$[A-Z0-9_]+|--[a-z0-9-]+)(?: \(--[a-z0-9-]+\))?\s+(\S+)\s+default$`).FindAllStringSubmatch(string(out), -1) {
		shown[m[1]] = m[2]
	}
	require.Contains(t, shown, "$KEYBROKER_REWRAP_BATCH", "config show printed no settings:\n%s", out)

	raw, err := os.ReadFile(filepath.Join(root(t), "README.md"))
	require.NoError(t, err)
	row := regexp.MustCompile("(?m)^\\| (?:`([A-Z0-9_]+)`|—) \\| (?:`(--[a-z0-9-]+)`|—) \\| ([^|]*) \\|")
	plain := regexp.MustCompile("^`([^`$ ]+)`$")
	checked := 0
	for _, m := range row.FindAllStringSubmatch(string(raw), -1) {
		name := "$" + m[1]
		if m[1] == "" {
			name = m[2]
		}
		got, ok := shown[name]
		if !ok {
			continue // not a setting of serve's, or shown with a value from elsewhere
		}
		def := strings.TrimSpace(m[3])
		switch {
		case def == "—" || strings.HasPrefix(def, "— ("):
			require.Equal(t, "-", got, "the README says %s has no default; config show says %s", name, got)
		case plain.MatchString(def):
			want := plain.FindStringSubmatch(def)[1]
			if dw, errW := time.ParseDuration(want); errW == nil {
				dg, errG := time.ParseDuration(got)
				require.NoError(t, errG, "%s: config show says %s, the README %s", name, got, want)
				require.Equal(t, dw, dg, "%s: the README's default %s, config show's %s", name, want, got)
			} else {
				require.Equal(t, want, got, "%s: the README's default, config show's", name)
			}
		default:
			continue // a rule, not a value: max(8, 4 × CPUs), :$PORT, …
		}
		checked++
	}
	require.Greater(t, checked, 20)
}
