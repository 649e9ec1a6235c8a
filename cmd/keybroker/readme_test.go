package main

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/cmd/keybroker/internal/config"
)

// TestREADMEConfigurationTableMatchesTheCode keeps the README's
// configuration table honest: every setting serve reads is a row of it,
// with its variable and its flag side by side, and every environment
// variable the command's code names is documented there.
func TestREADMEConfigurationTableMatchesTheCode(t *testing.T) {
	readme, err := os.ReadFile(filepath.Join("..", "..", "README.md"))
	require.NoError(t, err)
	rows := map[string]string{} // variable or flag → the flag column of its row
	row := regexp.MustCompile("(?m)^\\| (?:`([A-Z_]+)`|—) \\| (?:`--([a-z0-9-]+)`|—) \\|")
	for _, m := range row.FindAllStringSubmatch(string(readme), -1) {
		if m[1] != "" {
			rows["$"+m[1]] = m[2]
		}
		if m[2] != "" {
			rows["--"+m[2]] = m[2]
		}
	}
	require.NotEmpty(t, rows)
	checked := 0
	for _, s := range config.Settings() {
		if s.Commands&config.Serve == 0 {
			continue // the operator commands document their flags in their usage
		}
		flag := ""
		if s.FlagCommands&config.Serve != 0 {
			flag = s.Flag
		}
		for _, env := range []string{s.Env, s.AltEnv} {
			if env == "" {
				continue
			}
			got, ok := rows["$"+env]
			require.True(t, ok, "README's configuration table misses $%s", env)
			if env == s.Env {
				require.Equal(t, flag, got, "README's row of $%s names another flag", env)
			}
		}
		if flag != "" {
			_, ok := rows["--"+flag]
			require.True(t, ok, "README's configuration table misses --%s", flag)
		}
		checked++
	}
	require.Greater(t, checked, 30)

	// Variables named outside the table (the legacy KEK, $KEYBROKER_ENV).
	envName := regexp.MustCompile(`"((?:KEYBROKER|MANA)_[A-Z_]+|DATABASE_URL|PORT)"`)
	sources, err := filepath.Glob("*.go")
	require.NoError(t, err)
	more, err := filepath.Glob(filepath.Join("internal", "config", "*.go"))
	require.NoError(t, err)
	for _, src := range append(sources, more...) {
		if strings.HasSuffix(src, "_test.go") {
			continue
		}
		code, err := os.ReadFile(src)
		require.NoError(t, err)
		for _, m := range envName.FindAllStringSubmatch(string(code), -1) {
			require.Contains(t, string(readme), "`"+m[1]+"`", "README's configuration table misses $%s (%s)", m[1], src)
		}
	}
}
