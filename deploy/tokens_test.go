package deploy

import (
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// requirePinned checks a recipe's settings: tokens are pinned to an
// issuer and an audience, which are Better Auth's defaults for its JWKS
// (the origin of its base URL in both), the opt-out is not taken, and any
// maximum lifetime is hours, not years.
func requirePinned(t *testing.T, recipe string, env map[string]string) {
	t.Helper()
	jwks, err := url.Parse(env["KEYBROKER_JWKS_URL"])
	require.NoError(t, err, recipe)
	origin := jwks.Scheme + "://" + jwks.Host
	require.Equal(t, origin, env["KEYBROKER_JWT_ISSUER"], "%s: the issuer Better Auth puts in iss", recipe)
	require.Equal(t, origin, env["KEYBROKER_JWT_AUDIENCE"], "%s: the audience Better Auth puts in aud", recipe)
	require.NotContains(t, env, "KEYBROKER_JWT_UNPINNED", "%s: a recipe never opts out of pinning", recipe)
	if v, ok := env["KEYBROKER_JWT_MAX_LIFETIME"]; ok {
		d, err := time.ParseDuration(v)
		require.NoError(t, err, recipe)
		require.LessOrEqual(t, d, 24*time.Hour, recipe)
	}
}

// TestRecipesPinTokens: every production recipe pins the issuer and the
// audience, so that a token the issuer signed for another service never
// opens a master key (and keybroker would refuse to start otherwise).
func TestRecipesPinTokens(t *testing.T) {
	t.Parallel()
	t.Run("Compose", func(t *testing.T) {
		project, err := loadCompose(t, "compose/.env.example")
		require.NoError(t, err)
		kb, err := project.GetService("keybroker")
		require.NoError(t, err)
		env := map[string]string{}
		for k, v := range kb.Environment {
			if v != nil {
				env[k] = *v
			}
		}
		requirePinned(t, "compose", env)

		// With .env.example's pins left out, compose refuses to render.
		raw, err := os.ReadFile("compose/.env.example")
		require.NoError(t, err)
		var kept []string
		for _, line := range strings.Split(string(raw), "\n") {
			if !strings.HasPrefix(line, "KEYBROKER_JWT_ISSUER=") && !strings.HasPrefix(line, "KEYBROKER_JWT_AUDIENCE=") {
				kept = append(kept, line)
			}
		}
		unpinned := filepath.Join(t.TempDir(), ".env")
		require.NoError(t, os.WriteFile(unpinned, []byte(strings.Join(kept, "\n")), 0o600))
		_, err = loadCompose(t, unpinned)
		require.ErrorContains(t, err, "KEYBROKER_JWT_")
	})
	t.Run("Systemd", func(t *testing.T) {
		env, _ := parseEnvFile(t, "systemd/keybroker.env.example")
		requirePinned(t, "systemd", env)
	})
	t.Run("Kubernetes", func(t *testing.T) {
		_, dep := one[deployment](t, loadManifests(t), "Deployment")
		env := map[string]string{}
		for _, e := range dep.Spec.Template.Spec.Containers[0].Env {
			env[e.Name] = e.Value
		}
		requirePinned(t, "kubernetes", env)
	})
}
