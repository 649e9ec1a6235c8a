package main

import (
	"bytes"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/internal/jwtissuer"
	"github.com/keybroker/keybroker/internal/testkit/pgtest"
)

// checkEnv is a configuration serve starts with: a plain database role,
// a file KEK, a JWKS, TLS and a service key.
func checkEnv(t *testing.T) map[string]string {
	t.Helper()
	role, _ := pgtest.NewPlainDatabase(t)
	issuer, err := jwtissuer.New("https://auth.test")
	require.NoError(t, err)
	jwks := httptest.NewServer(issuer.JWKSHandler())
	t.Cleanup(jwks.Close)
	dir := t.TempDir()
	kekFile := filepath.Join(dir, "kek")
	key, _ := newKEKMaterial(t, "kek-1")
	require.NoError(t, os.WriteFile(kekFile, []byte(key), 0o600))
	cert, certKey := writeCert(t, dir, "keys.example.com")
	return map[string]string{
		"DATABASE_URL":           role.URL,
		"KEYBROKER_KEK":          "file://" + kekFile + "?id=kek-1",
		"KEYBROKER_JWKS_URL":     jwks.URL + "/api/auth/jwks",
		"KEYBROKER_JWT_ISSUER":   "https://auth.test",
		"KEYBROKER_JWT_AUDIENCE": "https://auth.test",
		"KEYBROKER_TLS_CERT":     cert,
		"KEYBROKER_TLS_KEY":      certKey,
		"KEYBROKER_SERVICE_KEY":  "s3rvice-key-0123456789abcdef",
	}
}

func configCheck(t *testing.T, env map[string]string, args ...string) (string, error) {
	t.Helper()
	var stdout bytes.Buffer
	err := run(t.Context(), append([]string{"config", "check"}, args...), envFunc(env), &stdout, io.Discard, nil)
	return stdout.String(), err
}

// TestConfigCheckPassesWhatServeStarts: a configuration serve starts
// with passes, every part probed, the settings shown with secrets
// redacted — and serve does start with it.
func TestConfigCheckPassesWhatServeStarts(t *testing.T) {
	t.Parallel()
	env := checkEnv(t)
	out, err := configCheck(t, env)
	require.NoError(t, err, out)
	for _, want := range []string{
		"settings (as serve reads them):",
		"$KEYBROKER_REWRAP_BATCH (--rewrap-batch)",
		"active KEK: kek-1, from $KEYBROKER_KEK (--kek)",
		"ok    KEK kek-1 (active, $KEYBROKER_KEK (--kek)): ok via file, wrap ",
		"ok    store postgres://",
		"reachable; the role is bound by row-level security",
		"ok    connections: pool ",
		"ok    migrations: the role may apply them to schema keybroker",
		"ok    JWKS $KEYBROKER_JWKS_URL (--jwks-url): fetched and parsed",
		"ok    TLS $KEYBROKER_TLS_CERT (--tls-cert): " + env["KEYBROKER_TLS_CERT"] + ", names keys.example.com",
		"serve would start (0 warnings)",
	} {
		require.Contains(t, out, want)
	}
	require.Regexp(t, regexp.MustCompile(`\$KEYBROKER_REWRAP_BATCH \(--rewrap-batch\)\s+1000\s+default`), out)
	require.Regexp(t, regexp.MustCompile(`\$KEYBROKER_SERVICE_KEY \(--service-key\)\s+REDACTED\s+environment`), out)
	require.NotContains(t, out, env["KEYBROKER_SERVICE_KEY"])

	env["KEYBROKER_ADDR"] = "127.0.0.1:0"
	srv := startServe(t, env, "serve")
	require.NoError(t, srv.stop())
	out, err = configCheck(t, env)
	require.NoError(t, err, out)
	require.Contains(t, out, "ok    rows: every row with a server wrap opens with the configured KEKs", "once migrated, the rows are checked")
}

// TestConfigCheckListsEveryProblemWithItsFix: one run names every
// problem of each class — a setting, a KEK that does not open, a
// misspelt KEK URI parameter, a privileged database role, a JWKS URL with
// a typo, TLS files that are missing — each with its fix, and fails.
func TestConfigCheckListsEveryProblemWithItsFix(t *testing.T) {
	t.Parallel()
	env := checkEnv(t)
	jwks := httptest.NewServer(http.NotFoundHandler())
	t.Cleanup(jwks.Close)
	env["KEYBROKER_REWRAP_BATCH"] = "0"
	env["KEYBROKER_KEK"] = "file:///etc/keybroker/no-such-kek?id=kek-1"
	env["KEYBROKER_KEK_RETIRED"] = "file:///etc/keybroker/kek-2025?idd=kek-2025"
	env["DATABASE_URL"] = pgtest.AdminURL() // a superuser
	env["KEYBROKER_JWKS_URL"] = jwks.URL + "/api/auth/jwk"
	env["KEYBROKER_TLS_CERT"] = "/etc/keybroker/missing.crt"

	out, err := configCheck(t, env)
	require.ErrorContains(t, err, "serve would not start: 6 problems")
	for _, want := range []string{
		`$KEYBROKER_REWRAP_BATCH (--rewrap-batch): "0": want a whole number of rows between 1 and 10000`,
		"$KEYBROKER_KEK_RETIRED (--kek-retired): kekproviders: unknown parameter idd (did you mean id?) in file:///etc/keybroker/kek-2025?idd=kek-2025",
		"KEK kek-1 (active, $KEYBROKER_KEK (--kek)): active KEK, $KEYBROKER_KEK (--kek): file: ",
		"is a superuser: row-level security does not apply to it",
		`CREATE ROLE "keybroker" LOGIN NOSUPERUSER NOBYPASSRLS`,
		"JWKS $KEYBROKER_JWKS_URL (--jwks-url): jwtauth: the JWKS URL " + env["KEYBROKER_JWKS_URL"] + " answered 404 Not Found",
		"TLS $KEYBROKER_TLS_CERT (--tls-cert): certificate /etc/keybroker/missing.crt with key ",
	} {
		require.Contains(t, out, want)
	}
	require.Regexp(t, `(?m)^6\. `, out, "the problems are numbered")
	require.NotContains(t, out, "serve would start")
}

// TestConfigCheckWarnsOnAnOutage: an unreachable JWKS does not stop
// serve (it starts not ready), so it is a warning, and the check passes.
func TestConfigCheckWarnsOnAnOutage(t *testing.T) {
	t.Parallel()
	env := checkEnv(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	env["KEYBROKER_JWKS_URL"] = "http://" + ln.Addr().String() + "/jwks"
	ln.Close()
	out, err := configCheck(t, env, "--timeout", "2s")
	require.NoError(t, err, out)
	require.Contains(t, out, "WARN  JWKS $KEYBROKER_JWKS_URL (--jwks-url): unreachable now, serve starts not ready until it loads")
	require.Contains(t, out, "serve would start (1 warning)")
}

// TestConfigCheckNamesTheGrant: a role that may not create keybroker's
// schema is told the GRANT to run, before serve would meet SQLSTATE
// 42501.
func TestConfigCheckNamesTheGrant(t *testing.T) {
	t.Parallel()
	env := checkEnv(t)
	role := pgtest.NewRole(t, pgtest.NewDatabase(t)) // no CREATE on its database
	env["DATABASE_URL"] = role.URL
	out, err := configCheck(t, env)
	require.Error(t, err)
	require.Contains(t, out, `FAIL  migrations: pgstore: the database role "`+role.Name+`" may not create the schema "keybroker"`)
	require.Contains(t, out, "GRANT CREATE ON DATABASE ")

	var stderr bytes.Buffer
	err = run(t.Context(), []string{"migrate"}, envFunc(map[string]string{"DATABASE_URL": role.URL}), io.Discard, &stderr, nil)
	require.ErrorContains(t, err, "GRANT CREATE ON DATABASE ", "migrate says the same")
	require.NotContains(t, err.Error(), "SQLSTATE")
}

// TestConfigCheckFindsRowsOfARetiredKEK: rows still wrapped by a KEK the
// configuration dropped would stop serve; the check says which and how
// to keep them opening.
func TestConfigCheckFindsRowsOfARetiredKEK(t *testing.T) {
	t.Parallel()
	db := newRotationDB(t, 3, 0)
	env := checkEnv(t)
	env["DATABASE_URL"] = db.env["DATABASE_URL"]
	env["KEYBROKER_KEK"] = db.env["KEYBROKER_KEK"]
	env["NEW_KEK"] = db.env["NEW_KEK"]
	out, err := configCheck(t, env)
	require.Error(t, err)
	require.Contains(t, out, `rows: rows are still wrapped by KEKs that are not configured: "env-v1" (3 rows)`)
	require.Contains(t, out, "Keep each as a decrypt-only KEK ($KEYBROKER_KEK_RETIRED (--kek-retired))")
}

// TestConfigShow prints the settings without opening anything.
func TestConfigShow(t *testing.T) {
	t.Parallel()
	env := map[string]string{"DATABASE_URL": "postgres://kb:pa55word@db.internal:5432/kb?sslmode=verify-full",
		"KEYBROKER_KEK": "env://K?id=k", "KEYBROKER_JWKS_URL": "https://auth.test/jwks", "KEYBROKER_JWT_ISSUER": "https://auth.test",
		"KEYBROKER_JWT_AUDIENCE": "https://auth.test", "MANA_SERVICE_KEY": "legacy-service-key-123456"}
	var out bytes.Buffer
	require.NoError(t, run(t.Context(), []string{"config", "show", "--rate-limit", "5"}, envFunc(env), &out, io.Discard, nil))
	require.Regexp(t, `\$DATABASE_URL \(--database-url\)\s+postgres://kb:xxxxx@db.internal:5432/kb\?sslmode=verify-full\s+environment`, out.String())
	require.Regexp(t, `\$KEYBROKER_RATE_LIMIT \(--rate-limit\)\s+5\s+flag`, out.String())
	require.Regexp(t, `\$KEYBROKER_SERVICE_KEY \(--service-key\)\s+REDACTED\s+environment`, out.String())
	require.NotContains(t, out.String(), "pa55word")
	require.NotContains(t, out.String(), "legacy-service-key")

	env["KEYBROKER_REWRAP_RATE"] = "-3"
	out.Reset()
	err := run(t.Context(), []string{"config", "show"}, envFunc(env), &out, io.Discard, nil)
	require.ErrorContains(t, err, "serve would not start: 1 problem")
	require.Contains(t, out.String(), "1. $KEYBROKER_REWRAP_RATE (--rewrap-rate): must not be negative")
}
