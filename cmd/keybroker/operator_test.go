package main

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/cmd/keybroker/internal/config"
	"github.com/keybroker/keybroker/internal/testkit/pgtest"
	"github.com/keybroker/keybroker/sqlitestore"
)

// TestOperatorCommandsNeverCreateAStore: pointed at no store — no
// DATABASE_URL, a data directory without keybroker.db — every operator
// command refuses, naming both settings, and leaves nothing behind; it
// used to make an empty store and report 0 rows.
func TestOperatorCommandsNeverCreateAStore(t *testing.T) {
	t.Parallel()
	dataDir := filepath.Join(t.TempDir(), "not-here")
	env := map[string]string{"KEYBROKER_DATA_DIR": dataDir, "KEYBROKER_KEK": "env://K?id=k",
		"K": "fF2aN6o7Q2x1k9P0s3V4d5E6f7G8h9I0j1K2l3M4n5o="}
	for _, args := range [][]string{{"kek", "status"}, {"rewrap"}, {"rewrap", "--dry-run"}, {"vault", "restore-recovery", "--user", "a"},
		{"audit", "status"}, {"audit", "upkeep"}} {
		var stdout, stderr bytes.Buffer
		err := run(t.Context(), args, envFunc(env), &stdout, &stderr, nil)
		require.ErrorContains(t, err, "no store to read: $DATABASE_URL (--database-url) is not set, and there is no embedded store at "+
			filepath.Join(dataDir, sqlitestore.FileName), "%v", args)
		require.ErrorContains(t, err, "$KEYBROKER_DATA_DIR (--data-dir)", "%v", args)
		require.NotContains(t, stdout.String(), "0 rows", "%v", args)
		_, statErr := os.Stat(dataDir)
		require.ErrorIs(t, statErr, os.ErrNotExist, "%v made a store", args)
	}
	// An existing but empty directory is no store either.
	empty := t.TempDir()
	env["KEYBROKER_DATA_DIR"] = empty
	err := run(t.Context(), []string{"kek", "status"}, envFunc(env), io.Discard, io.Discard, nil)
	require.ErrorContains(t, err, "no store to read")
	entries, err := os.ReadDir(empty)
	require.NoError(t, err)
	require.Empty(t, entries)
}

// TestMigrateCreatesAStoreOnlyWhereTold: migrate without DATABASE_URL
// and without an explicit data directory refuses to make
// ./.keybroker/keybroker.db; with --data-dir (or its variable) it creates
// and migrates it, and says which store it wrote.
func TestMigrateCreatesAStoreOnlyWhereTold(t *testing.T) {
	dir := t.TempDir()
	t.Chdir(dir) // the default data directory, ./.keybroker, is relative
	err := run(t.Context(), []string{"migrate"}, envFunc(nil), io.Discard, io.Discard, nil)
	require.ErrorContains(t, err, "no store to read")
	_, statErr := os.Stat(filepath.Join(dir, config.DefaultDataDir))
	require.ErrorIs(t, statErr, os.ErrNotExist)

	var stdout, stderr bytes.Buffer
	require.NoError(t, run(t.Context(), []string{"migrate", "--data-dir", config.DefaultDataDir}, envFunc(nil), &stdout, &stderr, nil))
	path := filepath.Join(dir, config.DefaultDataDir, sqlitestore.FileName)
	require.Contains(t, stderr.String(), "store: sqlite "+path+"\n")
	require.Contains(t, stdout.String(), "applied")
	stdout.Reset()
	require.NoError(t, run(t.Context(), []string{"migrate"}, envFunc(nil), &stdout, &bytes.Buffer{}, nil), "an existing store is migrated")
	require.Contains(t, stdout.String(), "is up to date")
}

// TestOperatorCommandsNameTheStore: each operator command says on stderr
// which store it read, without a password.
func TestOperatorCommandsNameTheStore(t *testing.T) {
	t.Parallel()
	role, _ := pgtest.NewPlainDatabase(t)
	env := map[string]string{"DATABASE_URL": role.URL}
	var stderr bytes.Buffer
	require.NoError(t, run(t.Context(), []string{"migrate"}, envFunc(env), io.Discard, &stderr, nil))
	u, err := url.Parse(role.URL)
	require.NoError(t, err)
	want := "store: postgres://" + role.Name + "@" + u.Host + u.Path + " schema keybroker\n"
	require.Contains(t, stderr.String(), want)
	stderr.Reset()
	require.NoError(t, run(t.Context(), []string{"kek", "status"}, envFunc(env), io.Discard, &stderr, nil))
	require.Contains(t, stderr.String(), want)
	if pw, ok := u.User.Password(); ok {
		require.NotContains(t, stderr.String(), pw)
	}
}

// TestOperatorCommandsUseTheDevKEKOfMakeRun is the README's promise, as
// an operator on a fresh clone meets it: with `make run` going (serve
// --dev in the repository, its state in ./.keybroker), the operator
// commands with --dev read that store and open its KEK.
func TestOperatorCommandsUseTheDevKEKOfMakeRun(t *testing.T) {
	dir := t.TempDir()
	t.Chdir(dir)
	srv := startServe(t, map[string]string{"PORT": "0"}, "serve", "--dev") // make run, on a free port
	status, _ := fetch(t, srv.addr, http.MethodPost, "/init", devToken(t, config.DefaultDataDir, "alice"))
	require.Equal(t, http.StatusOK, status)

	// While it runs, in another terminal:
	store := "store: sqlite " + filepath.Join(dir, config.DefaultDataDir, sqlitestore.FileName) + "\n"
	var stdout, stderr bytes.Buffer
	require.NoError(t, run(t.Context(), []string{"kek", "check", "--dev"}, envFunc(nil), &stdout, &stderr, nil))
	require.Regexp(t, config.DevKEKID+`\s+active\s+ok`, stdout.String())
	stdout.Reset()
	require.NoError(t, run(t.Context(), []string{"kek", "status", "--dev"}, envFunc(nil), &stdout, &stderr, nil))
	require.Regexp(t, config.DevKEKID+`\s+2\s+1\s+100.0%\s+active`, stdout.String())
	require.Contains(t, stdout.String(), "re-wrap job: runs in serve's background and with \"keybroker rewrap\"",
		"the job runs on the embedded store: status does not call it unavailable")
	require.NotContains(t, stdout.String(), "not available")
	require.Contains(t, stderr.String(), store)
	stdout.Reset()
	require.NoError(t, run(t.Context(), []string{"rewrap", "--dev"}, envFunc(nil), &stdout, io.Discard, nil))
	require.Contains(t, stdout.String(), "moved 0 rows to KEK "+config.DevKEKID)
	stdout.Reset()
	require.NoError(t, run(t.Context(), []string{"config", "check", "--dev"}, envFunc(nil), &stdout, io.Discard, nil))
	require.Contains(t, stdout.String(), "serve would start")

	err := run(t.Context(), []string{"kek", "check"}, envFunc(nil), io.Discard, io.Discard, nil)
	require.ErrorIs(t, err, config.ErrNoKEK, "without --dev the dev KEK is not taken")
	require.ErrorContains(t, err, "--dev")
}

// writeCert writes a self-signed certificate for name (not for the
// loopback address a health check calls) and its key to dir.
func writeCert(t *testing.T, dir, name string) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(90 * 24 * time.Hour), DNSNames: []string{name},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	require.NoError(t, err)
	keyDER, err := x509.MarshalECPrivateKey(key)
	require.NoError(t, err)
	certFile, keyFile = filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key")
	require.NoError(t, os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600))
	require.NoError(t, os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600))
	return certFile, keyFile
}

// TestHealthcheckSpeaksTLS: the container's health check against a real
// serve over TLS. With serve's own settings it calls https and trusts
// exactly serve's certificate, under the name it carries (not the
// loopback address it calls); without them plain http gets 400 and says
// why; another certificate is not trusted.
func TestHealthcheckSpeaksTLS(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	cert, key := writeCert(t, dir, "keys.example.com")
	other, _ := writeCert(t, dir, "other.example.com")
	srv := startServe(t, map[string]string{"KEYBROKER_DATA_DIR": t.TempDir(), "PORT": "0",
		"KEYBROKER_TLS_CERT": cert, "KEYBROKER_TLS_KEY": key}, "serve", "--dev")
	_, port, err := net.SplitHostPort(srv.addr)
	require.NoError(t, err)
	check := func(env map[string]string, args ...string) (string, error) {
		var out bytes.Buffer
		err := run(t.Context(), append([]string{"healthcheck"}, args...), envFunc(env), &out, &out, nil)
		return out.String(), err
	}

	// The container's environment is serve's: PORT and the TLS settings.
	serveEnv := map[string]string{"PORT": port, "KEYBROKER_TLS_CERT": cert, "KEYBROKER_TLS_KEY": key}
	out, err := check(serveEnv)
	require.NoError(t, err)
	require.Equal(t, "ok\n", out)
	_, err = check(serveEnv, "--url", "https://127.0.0.1:"+port+"/healthz")
	require.NoError(t, err, "an explicit loopback URL trusts serve's certificate too")
	_, err = check(serveEnv, "--url", "https://localhost:"+port+"/healthz")
	require.NoError(t, err)
	_, err = check(serveEnv, "--ca-file", cert)
	require.NoError(t, err, "the certificate as its own CA")

	_, err = check(map[string]string{"PORT": port})
	require.ErrorContains(t, err, "400 Bad Request")
	require.ErrorContains(t, err, "a TLS server answers plain http with 400")
	_, err = check(serveEnv, "--ca-file", other)
	require.ErrorContains(t, err, "certificate signed by unknown authority", "another certificate is not trusted")
	_, err = check(map[string]string{"PORT": port}, "--url", "https://127.0.0.1:"+port+"/healthz")
	require.Error(t, err, "without serve's certificate nothing vouches for it")
}

// TestServeLogsTheConnectionBudget: at start serve reads max_connections
// and logs the room it leaves, warning when a second replica would not
// fit.
func TestServeLogsTheConnectionBudget(t *testing.T) {
	t.Parallel()
	s := startOpsServe(t, map[string]string{"KEYBROKER_DB_POOL_SIZE": "60"})
	logs := s.logs.String()
	require.Contains(t, logs, "database connections: pool 60 per replica; max_connections ")
	require.Contains(t, logs, "room for 1 replicas; TIGHT")
	require.Contains(t, logs, "lower $KEYBROKER_DB_POOL_SIZE (--db-pool-size) or raise max_connections")
	require.Contains(t, logs, `"room_for_replicas":1`)
}

// TestServeRefusesAJWKSMistake: a JWKS URL with a typo (404) or pointing
// at a web page stops serve with the URL, the status and the setting; it
// used to start, report healthy and answer 401 to everyone.
func TestServeRefusesAJWKSMistake(t *testing.T) {
	t.Parallel()
	page := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/api/auth/jwks" {
			_, _ = w.Write([]byte(`<html>sign in</html>`))
			return
		}
		http.NotFound(w, r)
	}))
	t.Cleanup(page.Close)
	for jwksURL, says := range map[string]string{
		page.URL + "/api/auth/jwk":  "answered 404 Not Found",
		page.URL + "/api/auth/jwks": "answered 200 OK with something that is not a JWK set",
	} {
		env := map[string]string{"KEYBROKER_DATA_DIR": t.TempDir(), "PORT": "0", "KEYBROKER_JWKS_URL": jwksURL,
			"KEYBROKER_JWT_ISSUER": "https://auth.test", "KEYBROKER_JWT_AUDIENCE": "https://auth.test",
			"MANA_AUTH_KEK": "fF2aN6o7Q2x1k9P0s3V4d5E6f7G8h9I0j1K2l3M4n5o="}
		_, err := launchServe(t, env, &hooks{}, "serve")
		require.ErrorContains(t, err, "$KEYBROKER_JWKS_URL (--jwks-url): jwtauth: the JWKS URL "+jwksURL+" "+says)
	}
}
