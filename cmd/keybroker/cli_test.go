package main

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/cmd/keybroker/internal/config"
)

// commandPaths lists every command of the tree, groups included.
func commandPaths() [][]string {
	var paths [][]string
	var walk func(c *command, path []string)
	walk = func(c *command, path []string) {
		for _, sub := range c.subs {
			p := append(append([]string(nil), path...), sub.name)
			paths = append(paths, p)
			walk(sub, p)
		}
	}
	walk(root, nil)
	return paths
}

// TestHelpEverywhere: -h and --help print the help of every command and
// group on stdout and succeed; nothing runs (kek generate -h prints no
// key, serve -h serves nothing).
func TestHelpEverywhere(t *testing.T) {
	t.Parallel()
	base64Key := regexp.MustCompile(`(?m)^[A-Za-z0-9+/]{43}=$`)
	paths := commandPaths()
	require.Greater(t, len(paths), 15)
	for _, path := range append(paths, []string{}) {
		for _, flag := range []string{"-h", "--help"} {
			args := append(append([]string(nil), path...), flag)
			t.Run(strings.Join(args, " "), func(t *testing.T) {
				t.Parallel()
				var stdout, stderr bytes.Buffer
				err := run(t.Context(), args, envFunc(nil), &stdout, &stderr, nil)
				require.NoError(t, err, "help is not a mistake")
				require.Contains(t, stdout.String(), "Usage")
				require.Empty(t, stderr.String(), "help goes to stdout")
				require.NotRegexp(t, base64Key, stdout.String(), "help prints no key")
			})
		}
	}
}

// TestCommandLineMistakesExit1: a mistake prints the usage on stderr and
// fails.
func TestCommandLineMistakesExit1(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{{"kek"}, {"kek", "frob"}, {"kek", "generate", "extra"}, {"frob"}, {"config"},
		{"completion", "tcsh"}, {"rewrap", "--frob"}, {"version", "now"}} {
		var stdout, stderr bytes.Buffer
		err := run(t.Context(), args, envFunc(nil), &stdout, &stderr, nil)
		require.ErrorIs(t, err, errUsage, "%v", args)
		require.Empty(t, stdout.String(), "%v", args)
		require.NotEmpty(t, stderr.String(), "%v", args)
	}
}

// TestInvalidNumbersAreRefused: a numeric flag out of its range or not a
// number stops the command before it opens anything, naming the flag.
func TestInvalidNumbersAreRefused(t *testing.T) {
	t.Parallel()
	env := envFunc(map[string]string{"KEYBROKER_KEK": "env://K?id=k", "KEYBROKER_DATA_DIR": t.TempDir()})
	for _, c := range []struct {
		args []string
		says string
	}{
		{[]string{"rewrap", "--batch", "0"}, `--batch: "0": want a whole number of rows between 1 and 10000`},
		{[]string{"rewrap", "--batch", "-5"}, "--batch: "},
		{[]string{"rewrap", "--batch", "many"}, "--batch: "},
		{[]string{"rewrap", "--rate", "-1"}, "--rate: must not be negative"},
		{[]string{"rewrap", "--concurrency", "0"}, "--concurrency: "},
		{[]string{"kek", "check", "--timeout", "0s"}, "--timeout: must be at least 1s"},
		{[]string{"dev", "token", "--user", "a", "--ttl", "-1h"}, "--ttl: must be at least 1s"},
		{[]string{"healthcheck", "--timeout", "0s"}, "--timeout: must be at least 10ms"},
		{[]string{"serve", "--db-pool-size", "0"}, "$KEYBROKER_DB_POOL_SIZE (--db-pool-size): "},
		{[]string{"serve", "--rate-burst", "-1"}, "$KEYBROKER_RATE_BURST (--rate-burst): "},
	} {
		err := run(t.Context(), c.args, env, &bytes.Buffer{}, &bytes.Buffer{}, nil)
		require.ErrorContains(t, err, c.says, "%v", c.args)
	}
}

// TestFlagHelpNamesTheVariableOnlyWhenThereIsOne: rewrap's --batch and
// --rate are flags alone; its store and KEK flags read serve's variables.
func TestFlagHelpNamesTheVariableOnlyWhenThereIsOne(t *testing.T) {
	t.Parallel()
	var stdout bytes.Buffer
	require.NoError(t, run(t.Context(), []string{"rewrap", "-h"}, envFunc(nil), &stdout, &bytes.Buffer{}, nil))
	help := stdout.String()
	for _, flag := range []string{"--batch ROWS", "--rate ROWS_PER_S", "--dry-run", "--concurrency N"} {
		line := regexp.MustCompile(`(?m)^  ` + regexp.QuoteMeta(flag) + `\n.*$`).FindString(help)
		require.NotEmpty(t, line, flag)
		require.NotContains(t, line, "$", "%s reads no variable", flag)
	}
	require.Contains(t, help, "--database-url URL\n    \tPostgreSQL URL; without one the embedded SQLite store in --data-dir is used ($DATABASE_URL)")
	require.Contains(t, help, "($KEYBROKER_KEK)")
	require.NotContains(t, help, "each also read from the environment")
}

// TestCompletionScripts: each shell's script is made from the command
// tree; bash's parses, and completes commands, subcommands and flags.
func TestCompletionScripts(t *testing.T) {
	t.Parallel()
	scripts := map[string]string{}
	for _, shell := range []string{"bash", "zsh", "fish"} {
		var out bytes.Buffer
		require.NoError(t, run(t.Context(), []string{"completion", shell}, envFunc(nil), &out, &bytes.Buffer{}, nil))
		require.Contains(t, out.String(), "rotate-data-key", shell)
		require.Contains(t, out.String(), "db-pool-size", shell)
		scripts[shell] = out.String()
	}
	require.Contains(t, scripts["fish"], "complete -c keybroker -n '__fish_seen_subcommand_from kek; and __fish_seen_subcommand_from check' -l timeout")

	dir := t.TempDir()
	script := filepath.Join(dir, "keybroker.bash")
	require.NoError(t, os.WriteFile(script, []byte(scripts["bash"]), 0o600))
	bash, err := exec.LookPath("bash")
	require.NoError(t, err, "bash is part of every machine this runs on")
	out, err := exec.Command(bash, "-n", script).CombinedOutput()
	require.NoError(t, err, "bash -n: %s", out)
	complete := func(words ...string) []string {
		t.Helper()
		probe := `source "$1"; shift; COMP_WORDS=("$@"); COMP_CWORD=$(( $# - 1 )); _keybroker; printf '%s\n' "${COMPREPLY[@]}"`
		out, err := exec.Command(bash, append([]string{"-c", probe, "probe", script}, words...)...).CombinedOutput()
		require.NoError(t, err, "%s", out)
		return strings.Fields(string(out))
	}
	require.Equal(t, []string{"kek"}, complete("keybroker", "k"))
	require.ElementsMatch(t, []string{"check", "show"}, complete("keybroker", "config", ""))
	require.ElementsMatch(t, []string{"check"}, complete("keybroker", "kek", "ch"))
	require.ElementsMatch(t, []string{"--batch"}, complete("keybroker", "rewrap", "--dry-run", "--ba"))
	require.Contains(t, complete("keybroker", "kek", "check", "--"), "--timeout")
	require.NotContains(t, complete("keybroker", "kek", "status", "--"), "--timeout", "only kek check takes it")

	for shell, check := range map[string][]string{"zsh": {"-n"}, "fish": {"--no-execute"}} {
		bin, err := exec.LookPath(shell)
		if err != nil {
			t.Logf("SKIPPED: %s is not installed here, its script's syntax is not checked (apt-get install %s)", shell, shell)
			continue
		}
		path := filepath.Join(dir, "keybroker."+shell)
		require.NoError(t, os.WriteFile(path, []byte(scripts[shell]), 0o600))
		out, err := exec.Command(bin, append(check, path)...).CombinedOutput()
		require.NoError(t, err, "%s %v: %s", shell, check, out)
	}
	if zsh, err := exec.LookPath("zsh"); err == nil {
		// The completion function itself, with compadd standing in for
		// zsh's completion system.
		probe := `compdef() { : }; source "$1"; compadd() { [[ $1 == -a ]] && print -l -- ${(P)2} }; words=(keybroker kek ""); CURRENT=3; _keybroker`
		out, err := exec.Command(zsh, "-fc", probe, "probe", filepath.Join(dir, "keybroker.zsh")).CombinedOutput()
		require.NoError(t, err, "%s", out)
		require.ElementsMatch(t, []string{"generate", "status", "check", "rotate-data-key"}, strings.Fields(string(out)))
	}
}

// TestJSONLogDurationsAreSeconds: a duration in a JSON log line is
// seconds, as a number, the way the README says.
func TestJSONLogDurationsAreSeconds(t *testing.T) {
	t.Parallel()
	var buf bytes.Buffer
	newLogger(config.Log{Format: "json"}, &buf).Info("x", slog.Duration("took", 1500*time.Millisecond),
		slog.Group("g", slog.Duration("grace", 20*time.Second)))
	var line map[string]any
	require.NoError(t, json.Unmarshal(buf.Bytes(), &line))
	require.Equal(t, 1.5, line["took"])
	require.Equal(t, 20.0, line["g"].(map[string]any)["grace"])
	buf.Reset()
	newLogger(config.Log{Format: "text"}, &buf).Info("x", slog.Duration("took", 1500*time.Millisecond))
	require.Contains(t, buf.String(), "took=1.5s", "text logs keep Go's notation")
}
