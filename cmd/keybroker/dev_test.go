package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/cmd/keybroker/internal/config"
	"github.com/keybroker/keybroker/internal/testkit/pgtest"
	"github.com/keybroker/keybroker/vaultapi"
)

func devToken(t *testing.T, dataDir, user string) string {
	t.Helper()
	var out bytes.Buffer
	require.NoError(t, run(context.Background(), []string{"dev", "token", "--user", user, "--data-dir", dataDir}, envFunc(nil), &out, io.Discard, nil))
	return strings.TrimSpace(out.String())
}

func fetch(t *testing.T, addr, method, path, token string) (int, map[string]any) {
	t.Helper()
	req, _ := http.NewRequest(method, "http://"+addr+vaultapi.BasePath+path, nil)
	req.Header.Set("Authorization", "Bearer "+token)
	res, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer res.Body.Close()
	var body map[string]any
	require.NoError(t, json.NewDecoder(res.Body).Decode(&body))
	return res.StatusCode, body
}

// TestDevModeEndToEnd: serve --dev generates a KEK file once and reuses it,
// runs its own issuer, and `dev token` mints tokens the server accepts.
func TestDevModeEndToEnd(t *testing.T) {
	t.Run("EmbeddedStore", func(t *testing.T) { testDevMode(t, "") })
	t.Run("PostgreSQL", func(t *testing.T) {
		role, _ := pgtest.NewPlainDatabase(t) // dev mode refuses a superuser too
		testDevMode(t, role.URL)
	})
}

func testDevMode(t *testing.T, databaseURL string) {
	dataDir := t.TempDir()
	env := map[string]string{"KEYBROKER_DATA_DIR": dataDir, "PORT": "0"}
	if databaseURL != "" {
		env["DATABASE_URL"] = databaseURL
	}
	srv := startServe(t, env, "serve", "--dev")
	require.True(t, strings.HasPrefix(srv.addr, "127.0.0.1:"), "dev mode listens on loopback only, got %s", srv.addr)
	require.Contains(t, srv.logs.String(), "DEV MODE")

	kekPath := filepath.Join(dataDir, config.DevKEKFile)
	info, err := os.Stat(kekPath)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), info.Mode().Perm())
	raw, err := os.ReadFile(kekPath)
	require.NoError(t, err)
	key, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(raw)))
	require.NoError(t, err)
	require.Len(t, key, 32)
	require.NotEqual(t, make([]byte, 32), key, "the dev KEK is never the all-zero key")

	tok := devToken(t, dataDir, "alice")
	status, body := fetch(t, srv.addr, http.MethodPost, "/init", tok)
	require.Equal(t, http.StatusOK, status)
	require.Equal(t, config.DevKEKID, body["kekId"])
	require.NoError(t, srv.stop())

	// A restart reuses the KEK file and the issuer key: the old token and
	// the stored key still work.
	srv2 := startServe(t, env, "serve", "--dev")
	status, again := fetch(t, srv2.addr, http.MethodGet, "/key", tok)
	require.Equal(t, http.StatusOK, status)
	require.Equal(t, body["masterKey"], again["masterKey"])
	raw2, err := os.ReadFile(kekPath)
	require.NoError(t, err)
	require.Equal(t, raw, raw2)
	if databaseURL == "" {
		_, err := os.Stat(filepath.Join(dataDir, "keybroker.db"))
		require.NoError(t, err, "without DATABASE_URL the embedded store lives in the data directory")
	}
}

func TestDevModeRefusals(t *testing.T) {
	base := func(t *testing.T) (map[string]string, string) {
		dir := t.TempDir()
		return map[string]string{"DATABASE_URL": "postgres://postgres@127.0.0.1:1/none?sslmode=disable", "KEYBROKER_DATA_DIR": dir}, dir
	}
	t.Run("Production", func(t *testing.T) {
		env, _ := base(t)
		env["KEYBROKER_ENV"] = "production"
		err := run(context.Background(), []string{"serve", "--dev"}, envFunc(env), io.Discard, io.Discard, nil)
		require.ErrorContains(t, err, "production")
		err = run(context.Background(), []string{"dev", "token", "--user", "a"}, envFunc(env), io.Discard, io.Discard, nil)
		require.ErrorContains(t, err, "production")
	})
	// The dev KEK is guarded as a file:// KEK is: readable or writable by
	// group or others, it is refused (and left alone), owner-only it opens.
	for name, mode := range map[string]os.FileMode{"WorldReadable": 0o644, "GroupWritable": 0o620, "OtherReadable": 0o604} {
		t.Run("LooseKEKPermissions"+name, func(t *testing.T) {
			env, dir := base(t)
			path := filepath.Join(dir, config.DevKEKFile)
			content := base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{7}, 32))
			require.NoError(t, os.WriteFile(path, []byte(content), 0o600))
			require.NoError(t, os.Chmod(path, mode))
			err := run(context.Background(), []string{"serve", "--dev"}, envFunc(env), io.Discard, io.Discard, nil)
			require.ErrorContains(t, err, "dev KEK: file: "+path+" has mode")
			require.ErrorContains(t, err, "chmod 600 "+path)
			got, _ := os.ReadFile(path)
			require.Equal(t, content, string(got), "the file is left alone")
			info, _ := os.Stat(path)
			require.Equal(t, mode, info.Mode().Perm(), "and so are its permissions")
		})
	}
	t.Run("WrongKEKLength", func(t *testing.T) {
		env, dir := base(t)
		path := filepath.Join(dir, config.DevKEKFile)
		require.NoError(t, os.WriteFile(path, []byte(base64.StdEncoding.EncodeToString(make([]byte, 16))), 0o600))
		err := run(context.Background(), []string{"serve", "--dev"}, envFunc(env), io.Discard, io.Discard, nil)
		require.ErrorContains(t, err, "16 bytes")
		require.ErrorContains(t, err, "remove it")
	})
	t.Run("TokenNeedsUser", func(t *testing.T) {
		err := run(context.Background(), []string{"dev", "token"}, envFunc(nil), io.Discard, io.Discard, nil)
		require.ErrorIs(t, err, errUsage)
	})
}

// TestDevModeOpensAnOwnerOnlyKEK: a dev KEK its owner made read-only
// (0400) opens, as 0600 does.
func TestDevModeOpensAnOwnerOnlyKEK(t *testing.T) {
	dataDir := t.TempDir()
	path := filepath.Join(dataDir, config.DevKEKFile)
	require.NoError(t, os.WriteFile(path, []byte(base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{7}, 32))), 0o400))
	srv := startServe(t, map[string]string{"KEYBROKER_DATA_DIR": dataDir, "PORT": "0"}, "serve", "--dev")
	status, body := fetch(t, srv.addr, http.MethodPost, "/init", devToken(t, dataDir, "alice"))
	require.Equal(t, http.StatusOK, status)
	require.Equal(t, config.DevKEKID, body["kekId"])
}

// TestOperatorCommandsFindTheDevKEK: with a dev server's data directory,
// the operator commands take --dev to mean its generated KEK, the way
// serve --dev opens it.
func TestOperatorCommandsFindTheDevKEK(t *testing.T) {
	dataDir := t.TempDir()
	env := map[string]string{"KEYBROKER_DATA_DIR": dataDir, "PORT": "0"}
	var out bytes.Buffer
	err := run(t.Context(), []string{"kek", "check", "--dev"}, envFunc(env), &out, io.Discard, nil)
	require.ErrorContains(t, err, "1 of 1 KEKs failed the check")
	require.Contains(t, out.String(), "open: dev KEK: ")
	require.Contains(t, out.String(), `"keybroker serve --dev" makes it`)

	srv := startServe(t, env, "serve", "--dev")
	status, _ := fetch(t, srv.addr, http.MethodPost, "/init", devToken(t, dataDir, "alice"))
	require.Equal(t, http.StatusOK, status)
	require.NoError(t, srv.stop())

	out.Reset()
	require.NoError(t, run(t.Context(), []string{"kek", "check", "--dev"}, envFunc(env), &out, io.Discard, nil))
	require.Regexp(t, config.DevKEKID+`\s+active\s+ok`, out.String())
	out.Reset()
	require.NoError(t, run(t.Context(), []string{"kek", "status", "--dev"}, envFunc(env), &out, io.Discard, nil))
	require.Regexp(t, config.DevKEKID+`\s+2\s+1\s+100.0%\s+active`, out.String())
	err = run(t.Context(), []string{"kek", "check"}, envFunc(env), &out, io.Discard, nil)
	require.ErrorIs(t, err, config.ErrNoKEK, "without --dev the dev KEK is not taken")
}
