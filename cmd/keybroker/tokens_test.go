package main

import (
	"bytes"
	"encoding/base64"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/internal/jwtissuer"
	"github.com/keybroker/keybroker/internal/testkit/pgtest"
)

// The attacks of issue 15 items 3 and 7 on `keybroker serve` as production
// runs it: tokens the issuer signed for someone else, or for years, and
// KEK files other local users can read or write.

const testIssuerName = "https://auth.test"

// serveOrRefuse runs `keybroker serve [flags]` with env until the test
// ends and returns it once it listens, or the error it stopped with.
func serveOrRefuse(t *testing.T, env map[string]string, flags ...string) (*server, error) {
	t.Helper()
	return launchServe(t, env, &hooks{}, append([]string{"serve"}, flags...)...)
}

// status makes one vault call with token and returns its status and code.
func status(t *testing.T, addr, token string) (int, string) {
	t.Helper()
	code, body := fetch(t, addr, http.MethodPost, "/init", token)
	c, _ := body["code"].(string)
	return code, c
}

// TestServeProductionRefusesForeignTokens: whatever an operator configures
// for production, a token the issuer signed for another service (another
// aud), under another iss, for ten years, or without exp never gets a
// master key. A configuration that could not tell (no pinned issuer and
// audience: the old README example and the old recipes) does not start;
// the pinned one answers such tokens 401, and a token meant for it 200.
func TestServeProductionRefusesForeignTokens(t *testing.T) {
	issuer, err := jwtissuer.New(testIssuerName)
	require.NoError(t, err)
	jwks := httptest.NewServer(issuer.JWKSHandler())
	t.Cleanup(jwks.Close)
	role, _ := pgtest.NewPlainDatabase(t)
	dbURL := role.URL
	mint := func(c jwtissuer.Claims) string {
		c.Subject = "mallory"
		tok, err := issuer.Mint(c)
		require.NoError(t, err)
		return tok
	}
	now := time.Now()
	attacks := map[string]string{
		"OtherAudience": mint(jwtissuer.Claims{Audience: []string{"https://other-service.example.com"}}),
		"NoAudience":    mint(jwtissuer.Claims{OmitAudience: true}),
		"OtherIssuer":   mint(jwtissuer.Claims{Issuer: "https://other-tenant.example.com"}),
		"TenYears":      mint(jwtissuer.Claims{IssuedAt: now, Expiry: now.Add(10 * 365 * 24 * time.Hour)}),
		"NoExpiry":      mint(jwtissuer.Claims{OmitExpiry: true}),
	}
	base := map[string]string{
		"DATABASE_URL":         dbURL,
		"MANA_AUTH_KEK":        base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{7}, 32)),
		"KEYBROKER_JWKS_URL":   jwks.URL,
		"KEYBROKER_ADDR":       "127.0.0.1:0",
		"KEYBROKER_ENV":        "production",
		"KEYBROKER_RATE_LIMIT": "0",
	}
	for name, pins := range map[string]map[string]string{
		"JWKSOnly":   {},
		"IssuerOnly": {"KEYBROKER_JWT_ISSUER": testIssuerName},
		"Pinned":     {"KEYBROKER_JWT_ISSUER": testIssuerName, "KEYBROKER_JWT_AUDIENCE": testIssuerName},
	} {
		t.Run(name, func(t *testing.T) {
			env := map[string]string{}
			for k, v := range base {
				env[k] = v
			}
			for k, v := range pins {
				env[k] = v
			}
			srv, err := serveOrRefuse(t, env)
			if err != nil {
				require.ErrorContains(t, err, "not pinned")
				return
			}
			for attack, token := range attacks {
				code, errCode := status(t, srv.addr, token)
				require.Equal(t, http.StatusUnauthorized, code, "%s: a foreign token got a master key", attack)
				require.Equal(t, "UNAUTHORIZED", errCode, attack)
			}
			code, _ := status(t, srv.addr, mint(jwtissuer.Claims{}))
			require.Equal(t, http.StatusOK, code, "a token meant for this deployment works")
			require.NoError(t, srv.stop())
			for _, token := range attacks {
				require.NotContains(t, srv.logs.String(), token)
			}
			require.Contains(t, srv.logs.String(), "lifetime exceeds", "the log says why the long-lived token was refused")
		})
	}
}

// TestServeRefusesToStartUnpinned: production without a pinned issuer and
// audience stops with exit status 1 and a message that names the
// variables, says what Better Auth puts there (guessed from the JWKS
// URL) and names the opt-out.
func TestServeRefusesToStartUnpinned(t *testing.T) {
	kek := base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{7}, 32))
	cmd := helperProcess(t, map[string]string{
		"DATABASE_URL":       "postgres://postgres@127.0.0.1:1/none?sslmode=disable",
		"MANA_AUTH_KEK":      kek,
		"KEYBROKER_JWKS_URL": "https://auth.example.org/api/auth/jwks",
		"KEYBROKER_ENV":      "production",
	}, "serve")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err := cmd.Run()
	var exit *exec.ExitError
	require.True(t, errors.As(err, &exit), "serve must fail: %v\n%s", err, stderr.String())
	require.Equal(t, 1, exit.ExitCode())
	msg := stderr.String()
	for _, want := range []string{
		"not pinned",
		"$KEYBROKER_JWT_ISSUER (--jwt-issuer)", "$KEYBROKER_JWT_AUDIENCE (--jwt-audience)",
		"Better Auth", "BETTER_AUTH_URL",
		"KEYBROKER_JWT_ISSUER=https://auth.example.org", "KEYBROKER_JWT_AUDIENCE=https://auth.example.org",
		"KEYBROKER_JWT_UNPINNED=true (--jwt-unpinned)",
	} {
		require.Contains(t, msg, want)
	}
	require.NotContains(t, msg, "127.0.0.1:1", "it stops before it opens the store")

	// Half pinned: the message names what is missing, and keeps the value given.
	_, err = serveOrRefuse(t, map[string]string{
		"KEYBROKER_DATA_DIR": t.TempDir(), "KEYBROKER_ADDR": "127.0.0.1:0",
		"MANA_AUTH_KEK": kek, "KEYBROKER_JWKS_URL": "https://auth.example.org/api/auth/jwks",
	}, "--jwt-issuer", "https://iss.example.org")
	require.ErrorContains(t, err, "set $KEYBROKER_JWT_AUDIENCE (--jwt-audience).")
	require.ErrorContains(t, err, "KEYBROKER_JWT_ISSUER=https://iss.example.org")
}

// TestServeStartsUnpinnedWithTheOptOut: the documented opt-out starts the
// server with a loud warning; the lifetime and exp checks still hold.
func TestServeStartsUnpinnedWithTheOptOut(t *testing.T) {
	issuer, err := jwtissuer.New(testIssuerName)
	require.NoError(t, err)
	jwks := httptest.NewServer(issuer.JWKSHandler())
	t.Cleanup(jwks.Close)
	srv, err := serveOrRefuse(t, map[string]string{
		"KEYBROKER_DATA_DIR":     t.TempDir(),
		"MANA_AUTH_KEK":          base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{7}, 32)),
		"KEYBROKER_JWKS_URL":     jwks.URL,
		"KEYBROKER_JWT_UNPINNED": "true",
		"KEYBROKER_ADDR":         "127.0.0.1:0",
		"KEYBROKER_LOG_FORMAT":   "json",
		"KEYBROKER_ENV":          "production",
	})
	require.NoError(t, err)
	logs := srv.logs.String()
	require.Contains(t, logs, `"level":"WARN","msg":"TOKENS NOT PINNED: tokens the issuer signed for any audience are accepted; set KEYBROKER_JWT_AUDIENCE"`)
	require.Contains(t, logs, `"level":"WARN","msg":"TOKENS NOT PINNED: tokens from any issuer behind this JWKS are accepted; set KEYBROKER_JWT_ISSUER"`)

	now := time.Now()
	for name, c := range map[string]jwtissuer.Claims{
		"TenYears": {Subject: "u", IssuedAt: now, Expiry: now.Add(10 * 365 * 24 * time.Hour)},
		"NoExpiry": {Subject: "u", OmitExpiry: true},
	} {
		tok, err := issuer.Mint(c)
		require.NoError(t, err)
		code, _ := status(t, srv.addr, tok)
		require.Equal(t, http.StatusUnauthorized, code, name)
	}
	tok, err := issuer.Mint(jwtissuer.Claims{Subject: "u", Audience: []string{"anyone"}})
	require.NoError(t, err)
	code, _ := status(t, srv.addr, tok)
	require.Equal(t, http.StatusOK, code, "unpinned means what it says")
}

// TestServeTokenLifetimeSettings: the maximum lifetime and the leeway are
// settings, checked at start.
func TestServeTokenLifetimeSettings(t *testing.T) {
	issuer, err := jwtissuer.New(testIssuerName)
	require.NoError(t, err)
	jwks := httptest.NewServer(issuer.JWKSHandler())
	t.Cleanup(jwks.Close)
	env := map[string]string{
		"KEYBROKER_DATA_DIR":         t.TempDir(),
		"MANA_AUTH_KEK":              base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{7}, 32)),
		"KEYBROKER_JWKS_URL":         jwks.URL,
		"KEYBROKER_JWT_ISSUER":       testIssuerName,
		"KEYBROKER_JWT_AUDIENCE":     testIssuerName,
		"KEYBROKER_ADDR":             "127.0.0.1:0",
		"KEYBROKER_JWT_MAX_LIFETIME": "3h",
	}
	for value, want := range map[string]string{"10s": "$KEYBROKER_JWT_MAX_LIFETIME (--jwt-max-lifetime): must be at least 1m", "forever": "KEYBROKER_JWT_MAX_LIFETIME"} {
		bad := map[string]string{}
		for k, v := range env {
			bad[k] = v
		}
		bad["KEYBROKER_JWT_MAX_LIFETIME"] = value
		_, err := serveOrRefuse(t, bad)
		require.ErrorContains(t, err, want)
	}
	for _, value := range []string{"0s", "10m"} {
		_, err := serveOrRefuse(t, env, "--jwt-leeway", value)
		require.ErrorContains(t, err, "$KEYBROKER_JWT_LEEWAY (--jwt-leeway): must be between 1s and 5m0s")
	}

	srv, err := serveOrRefuse(t, env)
	require.NoError(t, err)
	now := time.Now()
	for lifetime, want := range map[time.Duration]int{2 * time.Hour: http.StatusOK, 4 * time.Hour: http.StatusUnauthorized} {
		tok, err := issuer.Mint(jwtissuer.Claims{Subject: "u", IssuedAt: now, Expiry: now.Add(lifetime)})
		require.NoError(t, err)
		code, _ := status(t, srv.addr, tok)
		require.Equal(t, want, code, "a token of %s under a 3h maximum", lifetime)
	}
}

// TestDevModePinsTheBuiltInIssuer: dev mode checks iss and aud like
// production, pinned to its built-in issuer: a token that issuer's key
// signed for another audience is refused.
func TestDevModePinsTheBuiltInIssuer(t *testing.T) {
	dataDir := t.TempDir()
	srv := startServe(t, map[string]string{"KEYBROKER_DATA_DIR": dataDir, "PORT": "0"}, "serve", "--dev")
	code, _ := status(t, srv.addr, devToken(t, dataDir, "alice"))
	require.Equal(t, http.StatusOK, code)

	devIssuer, err := jwtissuer.Load(filepath.Join(dataDir, devIssuerFile))
	require.NoError(t, err)
	for name, c := range map[string]jwtissuer.Claims{
		"OtherAudience": {Subject: "alice", Audience: []string{"https://other-service.example.com"}},
		"OtherIssuer":   {Subject: "alice", Issuer: "https://other.example.com"},
		"TenYears":      {Subject: "alice", Expiry: time.Now().Add(10 * 365 * 24 * time.Hour)},
	} {
		tok, err := devIssuer.Mint(c)
		require.NoError(t, err)
		code, _ := status(t, srv.addr, tok)
		require.Equal(t, http.StatusUnauthorized, code, name)
	}

	var stderr bytes.Buffer
	require.NoError(t, run(t.Context(), []string{"dev", "token", "--user", "a", "--ttl", "2h", "--data-dir", dataDir}, envFunc(nil), io.Discard, &stderr, nil))
	require.Contains(t, stderr.String(), "KEYBROKER_JWT_MAX_LIFETIME")
}

// TestServeRefusesLooseKEKFiles: `keybroker serve` with a file:// KEK that
// other local users may read or write stops with the chmod that fixes it;
// owner-only files (0600, 0400) serve.
func TestServeRefusesLooseKEKFiles(t *testing.T) {
	issuer, err := jwtissuer.New(testIssuerName)
	require.NoError(t, err)
	jwks := httptest.NewServer(issuer.JWKSHandler())
	t.Cleanup(jwks.Close)
	env := func(kekPath string) map[string]string {
		return map[string]string{
			"KEYBROKER_DATA_DIR":     t.TempDir(),
			"KEYBROKER_KEK":          "file://" + kekPath + "?id=file-1",
			"KEYBROKER_JWKS_URL":     jwks.URL,
			"KEYBROKER_JWT_ISSUER":   testIssuerName,
			"KEYBROKER_JWT_AUDIENCE": testIssuerName,
			"KEYBROKER_ADDR":         "127.0.0.1:0",
		}
	}
	for _, mode := range []os.FileMode{0o644, 0o620, 0o604, 0o600, 0o400} {
		t.Run(mode.String(), func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "kek")
			require.NoError(t, os.WriteFile(path, []byte(base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{9}, 32))), 0o600))
			require.NoError(t, os.Chmod(path, mode))
			srv, err := serveOrRefuse(t, env(path))
			if mode&0o077 != 0 {
				require.Error(t, err, "a KEK file with mode %04o must be refused", mode)
				require.ErrorContains(t, err, "active KEK, $KEYBROKER_KEK (--kek): file: "+path+" has mode")
				require.ErrorContains(t, err, "chmod 600 "+path)
				return
			}
			require.NoError(t, err)
			code, body := fetch(t, srv.addr, http.MethodPost, "/init", mustMint(t, issuer, "alice"))
			require.Equal(t, http.StatusOK, code)
			require.Equal(t, "file-1", body["kekId"])
		})
	}
}

func mustMint(t *testing.T, issuer *jwtissuer.Issuer, user string) string {
	t.Helper()
	tok, err := issuer.Mint(jwtissuer.Claims{Subject: user})
	require.NoError(t, err)
	return tok
}
