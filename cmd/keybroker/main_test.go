package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/internal/jwtissuer"
	"github.com/keybroker/keybroker/internal/testkit/apitest"
	"github.com/keybroker/keybroker/internal/testkit/pgtest"
	"github.com/keybroker/keybroker/vaultapi"
)

// syncBuffer collects a server's logs (apitest.LogBuffer).
type syncBuffer = apitest.LogBuffer

func envFunc(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

func TestKEKGeneratePrintsA32ByteKey(t *testing.T) {
	var out, errOut bytes.Buffer
	require.NoError(t, run(context.Background(), []string{"kek", "generate"}, envFunc(nil), &out, &errOut, nil))
	key, err := base64.StdEncoding.DecodeString(strings.TrimSpace(out.String()))
	require.NoError(t, err)
	require.Len(t, key, 32)
	var again bytes.Buffer
	require.NoError(t, run(context.Background(), []string{"kek", "generate"}, envFunc(nil), &again, &errOut, nil))
	require.NotEqual(t, out.String(), again.String())
}

func TestVersionAndUsage(t *testing.T) {
	var out, errOut bytes.Buffer
	require.NoError(t, run(context.Background(), []string{"version"}, envFunc(nil), &out, &errOut, nil))
	require.Contains(t, out.String(), "keybroker")
	require.ErrorIs(t, run(context.Background(), nil, envFunc(nil), &out, &errOut, nil), errUsage)
	require.ErrorIs(t, run(context.Background(), []string{"frobnicate"}, envFunc(nil), &out, &errOut, nil), errUsage)
}

// TestServeRefusesUnsafeKEKs: a missing, malformed or all-zero KEK stops
// the start with a message that says how to make one; --dev allows the
// zero key with a loud warning.
func TestServeRefusesUnsafeKEKs(t *testing.T) {
	base := map[string]string{
		"DATABASE_URL":           "postgres://postgres@127.0.0.1:1/none?sslmode=disable",
		"KEYBROKER_JWKS_URL":     "http://127.0.0.1:1/jwks",
		"KEYBROKER_JWT_ISSUER":   "https://auth.test",
		"KEYBROKER_JWT_AUDIENCE": "https://auth.test",
	}
	zero := base64.StdEncoding.EncodeToString(make([]byte, 32))
	cases := map[string]struct {
		env  map[string]string
		want string
	}{
		"Missing":   {map[string]string{}, "keybroker kek generate"},
		"Zero":      {map[string]string{"MANA_AUTH_KEK": zero}, "32 zero bytes"},
		"Malformed": {map[string]string{"MANA_AUTH_KEK": "not base64!"}, "MANA_AUTH_KEK"},
		"Short":     {map[string]string{"MANA_AUTH_KEK": base64.StdEncoding.EncodeToString(make([]byte, 16))}, "16 bytes"},
		"FileNoID":  {map[string]string{"KEYBROKER_KEK": "file:///etc/keybroker/kek"}, "?id="},
		"Scheme":    {map[string]string{"KEYBROKER_KEK": "ftp://x?id=a"}, "unknown scheme"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			env := map[string]string{}
			for k, v := range base {
				env[k] = v
			}
			for k, v := range c.env {
				env[k] = v
			}
			var errOut syncBuffer
			err := run(context.Background(), []string{"serve"}, envFunc(env), io.Discard, &errOut, nil)
			require.Error(t, err)
			require.Contains(t, err.Error(), c.want)
			require.NotContains(t, err.Error(), zero)
		})
	}
	t.Run("DevAllowsZeroKEK", func(t *testing.T) {
		env := map[string]string{"MANA_AUTH_KEK": zero, "KEYBROKER_DATA_DIR": t.TempDir()}
		for k, v := range base {
			env[k] = v
		}
		var errOut syncBuffer
		err := run(context.Background(), []string{"serve", "--dev"}, envFunc(env), io.Discard, &errOut, nil)
		// It gets past the KEK and fails on the (absent) database instead.
		require.Error(t, err)
		require.NotContains(t, err.Error(), "zero bytes")
		require.Contains(t, errOut.String(), "DEV MODE")
	})
}

// TestServeInitAndFetchOverHTTP is the README's promise: a PostgreSQL
// URL, a generated KEK and a token are enough to init and fetch a key.
func TestServeInitAndFetchOverHTTP(t *testing.T) {
	role, _ := pgtest.NewPlainDatabase(t)
	dbURL := role.URL
	issuer, err := jwtissuer.New("https://auth.test")
	require.NoError(t, err)
	jwks := httptest.NewServer(issuer.JWKSHandler())
	defer jwks.Close()

	var kek bytes.Buffer
	require.NoError(t, run(context.Background(), []string{"kek", "generate"}, envFunc(nil), &kek, io.Discard, nil))
	env := map[string]string{
		"DATABASE_URL":           dbURL,
		"MANA_AUTH_KEK":          strings.TrimSpace(kek.String()),
		"KEYBROKER_JWKS_URL":     jwks.URL,
		"KEYBROKER_JWT_ISSUER":   "https://auth.test",
		"KEYBROKER_JWT_AUDIENCE": "https://auth.test",
		"KEYBROKER_ADDR":         "127.0.0.1:0",
	}

	var migrateOut bytes.Buffer
	require.NoError(t, run(context.Background(), []string{"migrate"}, envFunc(env), &migrateOut, io.Discard, nil))
	require.Contains(t, migrateOut.String(), "applied")

	srv := startServe(t, env, "serve")
	addr := srv.addr
	tok, err := issuer.Mint(jwtissuer.Claims{Subject: "alice"})
	require.NoError(t, err)
	call := func(method, path string) map[string]any {
		req, _ := http.NewRequest(method, "http://"+addr+vaultapi.BasePath+path, nil)
		req.Header.Set("Authorization", "Bearer "+tok)
		res, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		defer res.Body.Close()
		require.Equal(t, http.StatusOK, res.StatusCode)
		var body map[string]any
		require.NoError(t, json.NewDecoder(res.Body).Decode(&body))
		return body
	}
	initBody := call(http.MethodPost, "/init")
	keyBody := call(http.MethodGet, "/key")
	require.Equal(t, initBody["masterKey"], keyBody["masterKey"])
	require.Equal(t, "env-v1", keyBody["kekId"])

	require.NoError(t, srv.stop()) // SIGTERM
	require.Contains(t, srv.logs.String(), "stopped")
	require.NotContains(t, srv.logs.String(), initBody["masterKey"])
	require.NotContains(t, srv.logs.String(), tok)
}

// server is a keybroker serve running in-process.
type server struct {
	addr string
	logs *syncBuffer
	stop func() error
}

// startServe runs keybroker with args until the test ends or stop is
// called, and waits until it listens.
func startServe(t *testing.T, env map[string]string, args ...string) *server {
	t.Helper()
	return startServeHooked(t, env, &hooks{}, args...)
}

// startServeHooked is startServe with hooks of the caller's; their
// listening hook is replaced.
func startServeHooked(t *testing.T, env map[string]string, h *hooks, args ...string) *server {
	t.Helper()
	s, err := launchServe(t, env, h, args...)
	if err != nil {
		t.Fatalf("serve stopped: %v", err)
	}
	return s
}

// launchServe runs keybroker with args until the test ends or stop is
// called, and returns once it listens — or, with its logs, the error it
// stopped with before that (so a server that should have refused fails a
// test instead of hanging it).
func launchServe(t *testing.T, env map[string]string, h *hooks, args ...string) (*server, error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	addrc := make(chan string, 1)
	done := make(chan error, 1)
	logs := &syncBuffer{}
	h.listening = func(a string) { addrc <- a }
	go func() { done <- run(ctx, args, envFunc(env), io.Discard, logs, h) }()
	s := &server{logs: logs}
	select {
	case s.addr = <-addrc:
	case err := <-done:
		cancel()
		if err == nil {
			err = errors.New("serve returned before it listened")
		}
		return nil, fmt.Errorf("%w\n%s", err, logs.String())
	case <-time.After(30 * time.Second):
		cancel()
		t.Fatal("serve did not start listening")
	}
	var once sync.Once
	var stopErr error
	s.stop = func() error {
		once.Do(func() {
			cancel()
			select {
			case stopErr = <-done:
			case <-time.After(30 * time.Second):
				stopErr = context.DeadlineExceeded
			}
		})
		return stopErr
	}
	t.Cleanup(func() { _ = s.stop() })
	return s, nil
}
