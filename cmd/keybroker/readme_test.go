package main

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestREADMEConfigurationTableMatchesTheCode keeps the README's
// configuration table honest: every environment variable the command
// reads and every flag serve takes is documented there.
func TestREADMEConfigurationTableMatchesTheCode(t *testing.T) {
	readme, err := os.ReadFile(filepath.Join("..", "..", "README.md"))
	require.NoError(t, err)
	sources, err := filepath.Glob("*.go")
	require.NoError(t, err)

	envName := regexp.MustCompile(`"((?:KEYBROKER|MANA)_[A-Z_]+|DATABASE_URL|PORT)"`)
	flagName := regexp.MustCompile(`fs\.(?:String|Bool|Duration|Int|Float64|Func)(?:Var)?\([^"]*"([a-z][a-z0-9-]*)"`)
	envs, flags := map[string]bool{}, map[string]bool{}
	for _, src := range sources {
		if strings.HasSuffix(src, "_test.go") {
			continue
		}
		code, err := os.ReadFile(src)
		require.NoError(t, err)
		for _, m := range envName.FindAllStringSubmatch(string(code), -1) {
			envs[m[1]] = true
		}
		// serve's flags live in config.go and ops.go; other subcommands
		// document their flags in their own usage text.
		if src == "config.go" || src == "ops.go" {
			for _, m := range flagName.FindAllStringSubmatch(string(code), -1) {
				flags[m[1]] = true
			}
		}
	}
	require.NotEmpty(t, envs)
	require.NotEmpty(t, flags)
	for name := range envs {
		require.Contains(t, string(readme), "`"+name+"`", "README's configuration table misses $%s", name)
	}
	for name := range flags {
		require.Contains(t, string(readme), "`--"+name+"`", "README's configuration table misses --%s", name)
	}
}
