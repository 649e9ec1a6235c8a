package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/cmd/keybroker/internal/config"
	"github.com/keybroker/keybroker/internal/jwtissuer"
	"github.com/keybroker/keybroker/internal/testkit/kmstest/localkms"
	"github.com/keybroker/keybroker/internal/testkit/pgtest"
	"github.com/keybroker/keybroker/kekproviders/awskms"
	"github.com/keybroker/keybroker/kekproviders/localkek"
	"github.com/keybroker/keybroker/pgstore"
)

// testClock is the clock serve's hooks inject: tests move it, nothing
// sleeps.
type testClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *testClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *testClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// jobRuns collects the background re-wrap job's runs.
type jobRuns struct {
	ch chan *broker.RewrapResult
}

func (r *jobRuns) hook(res *broker.RewrapResult, err error) {
	if err != nil || res == nil {
		return
	}
	select {
	case r.ch <- res:
	default: // a test that stopped listening must not block the job
	}
}

// await waits, bounded, for a run of which done holds.
func (r *jobRuns) await(t *testing.T, what string, done func(*broker.RewrapResult) bool) *broker.RewrapResult {
	t.Helper()
	timeout := time.After(90 * time.Second)
	for {
		select {
		case res := <-r.ch:
			if done(res) {
				return res
			}
		case <-timeout:
			t.Fatalf("no run of the re-wrap job %s", what)
		}
	}
}

// cachedKMSEnv starts local-kms with key alias/kb and returns serve's
// environment for it in cached envelope mode, a token issuer, and an AWS
// KMS client on the same key (for the test's own look at the data keys).
func cachedKMSEnv(t *testing.T) (map[string]string, *jwtissuer.Issuer, broker.KEK) {
	t.Helper()
	t.Setenv("AWS_ACCESS_KEY_ID", "AKIDLOCALKMS")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "local-kms-secret")
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	kms := localkms.Start(t)
	key := kms.CreateKey(t, "kb")
	issuer, err := jwtissuer.New("https://auth.test")
	require.NoError(t, err)
	jwks := httptest.NewServer(issuer.JWKSHandler())
	t.Cleanup(jwks.Close)
	kek, err := awskms.New(t.Context(), awskms.Config{ID: "aws-1", KeyID: key.ARN, Endpoint: kms.URL,
		Region: localkms.Region, Credentials: localkms.Credentials(), Timeout: 5 * time.Second})
	require.NoError(t, err)
	role, adminURL := pgtest.NewPlainDatabase(t)
	return map[string]string{
		"DATABASE_URL":              role.URL,
		testAdminURL:                adminURL,
		"KEYBROKER_KEK":             "awskms:///alias/kb?id=aws-1&region=" + localkms.Region + "&endpoint=" + url.QueryEscape(kms.URL),
		"KEYBROKER_JWKS_URL":        jwks.URL,
		"KEYBROKER_JWT_ISSUER":      "https://auth.test",
		"KEYBROKER_JWT_AUDIENCE":    "https://auth.test",
		"KEYBROKER_ADDR":            "127.0.0.1:0",
		"KEYBROKER_REWRAP_INTERVAL": "1s",
	}, issuer, kek
}

// testAdminURL is the key, in cachedKMSEnv's map, of a superuser URL of
// the same database: the test reads every user's row, which row-level
// security hides from keybroker's own role. keybroker ignores it.
const testAdminURL = "TEST_ADMIN_DATABASE_URL"

// TestRotateDataKeyCommand walks the runbook for a suspected exposure of a
// server's memory, on a running server in cached envelope mode (local-kms
// as AWS KMS): the attacker has the plaintext of the data key; `keybroker
// kek rotate-data-key` mints a new one; the server's re-wrap job takes it
// up, moves every row to it and, once the grace period is over (the
// server's clock is injected), deletes the old one. Afterwards the stolen
// key opens no stored row, every user still gets their key, and `kek
// status` shows the one data key left.
func TestRotateDataKeyCommand(t *testing.T) {
	env, issuer, kms := cachedKMSEnv(t)
	env["KEYBROKER_DATA_KEY_MAX_AGE"] = "0" // this test rotates by hand only
	clock := &testClock{now: time.Now()}
	runs := &jobRuns{ch: make(chan *broker.RewrapResult, 1000)}
	srv := startServeHooked(t, env, &hooks{now: clock.Now, rewrapRun: runs.hook}, "serve")

	keys := map[string]any{}
	var oldID string
	for _, user := range []string{"alice", "bob", "carol"} {
		status, body := fetch(t, srv.addr, http.MethodPost, "/init", tokenFor(t, issuer, user))
		require.Equal(t, http.StatusOK, status)
		keys[user] = body["masterKey"]
		oldID, _ = body["kekId"].(string)
	}
	require.True(t, strings.HasPrefix(oldID, "dk-"))

	pool := pgtest.NewPool(t, env[testAdminURL])
	store, err := pgstore.New(t.Context(), pgstore.Config{Pool: pool, Schema: "keybroker"})
	require.NoError(t, err)
	list, err := store.DataKeyList(t.Context())
	require.NoError(t, err)
	require.Len(t, list, 1)
	// The exposure: the data key's plaintext, as a core dump holds it.
	stolen, err := kms.Unwrap(t.Context(), list[0].Wrapped, broker.DataKeyBinding(list[0].ID, list[0].WrappedBy))
	require.NoError(t, err)
	require.Equal(t, 3, countOpening(t, pool, oldID, stolen), "the stolen data key opens every row")

	var out, errOut bytes.Buffer
	require.NoError(t, run(t.Context(), []string{"kek", "rotate-data-key"}, envFunc(env), &out, &errOut, nil), errOut.String())
	newID := strings.TrimSpace(out.String())
	require.True(t, strings.HasPrefix(newID, "dk-"), "prints the new data key's id: %q", out.String())
	require.NotEqual(t, oldID, newID)
	require.Contains(t, errOut.String(), "new wraps use data key "+newID)

	// The server's job takes the new key up and moves every row to it.
	runs.await(t, "moving the rows to the new data key", func(res *broker.RewrapResult) bool {
		return res.ActiveKEKID == newID && rowsUnder(t, store)[oldID] == 0
	})
	status, body := fetch(t, srv.addr, http.MethodPost, "/init", tokenFor(t, issuer, "dave"))
	require.Equal(t, http.StatusOK, status)
	require.Equal(t, newID, body["kekId"], "new wraps use the new data key")
	keys["dave"] = body["masterKey"]

	kekStatus := func() string {
		var out bytes.Buffer
		require.NoError(t, run(t.Context(), []string{"kek", "status"}, envFunc(env), &out, io.Discard, nil))
		return out.String()
	}
	st := kekStatus()
	require.Regexp(t, oldID+`\s+aws-1\s+\S+ \S+\s+\S+\s+0\s+older, no row needs it: the re-wrap job deletes it once `+newID+` is 15m old`, st)
	require.Regexp(t, newID+`\s+aws-1\s+\S+ \S+\s+\S+\s+4\s+newest: new wraps use it`, st)

	// Past the grace period the job deletes the old data key.
	clock.Advance(broker.DefaultDataKeyGrace + time.Minute)
	runs.await(t, "deleting the old data key", func(res *broker.RewrapResult) bool {
		return len(res.DataKeysDeleted) == 1 && res.DataKeysDeleted[0] == oldID
	})
	list, err = store.DataKeyList(t.Context())
	require.NoError(t, err)
	require.Len(t, list, 1)
	require.Equal(t, newID, list[0].ID)
	st = kekStatus()
	require.NotContains(t, st, oldID)
	require.Regexp(t, newID+`\s+aws-1\s+\S+ \S+\s+\S+\s+4\s+newest: new wraps use it`, st)

	require.Zero(t, countOpening(t, pool, oldID, stolen), "the stolen data key opens no stored row")
	for user, mk := range keys {
		status, got := fetch(t, srv.addr, http.MethodGet, "/key", tokenFor(t, issuer, user))
		require.Equal(t, http.StatusOK, status)
		require.Equal(t, mk, got["masterKey"])
		require.Equal(t, newID, got["kekId"])
	}
}

// TestServeRotatesTheDataKeyByAge: with KEYBROKER_DATA_KEY_MAX_AGE the
// server mints the next data key by itself once the newest is that old,
// and its job moves the rows.
func TestServeRotatesTheDataKeyByAge(t *testing.T) {
	env, issuer, _ := cachedKMSEnv(t)
	env["KEYBROKER_DATA_KEY_MAX_AGE"] = "30d"
	clock := &testClock{now: time.Now()}
	runs := &jobRuns{ch: make(chan *broker.RewrapResult, 1000)}
	srv := startServeHooked(t, env, &hooks{now: clock.Now, rewrapRun: runs.hook}, "serve")
	status, body := fetch(t, srv.addr, http.MethodPost, "/init", tokenFor(t, issuer, "alice"))
	require.Equal(t, http.StatusOK, status)
	first := body["kekId"].(string)
	runs.await(t, "on the first key", func(res *broker.RewrapResult) bool { return res.ActiveKEKID == first })

	clock.Advance(31 * 24 * time.Hour)
	res := runs.await(t, "on a data key minted by age", func(res *broker.RewrapResult) bool { return res.ActiveKEKID != first })
	second := res.ActiveKEKID
	require.True(t, strings.HasPrefix(second, "dk-"))
	pool := pgtest.NewPool(t, env[testAdminURL])
	store, err := pgstore.New(t.Context(), pgstore.Config{Pool: pool, Schema: "keybroker"})
	require.NoError(t, err)
	runs.await(t, "moving alice", func(*broker.RewrapResult) bool { return rowsUnder(t, store)[second] == 1 })
	list, err := store.DataKeyList(t.Context())
	require.NoError(t, err)
	require.Equal(t, second, list[len(list)-1].ID)
	require.LessOrEqual(t, len(list), 2, "one new key, not one per run")
	status, body = fetch(t, srv.addr, http.MethodPost, "/init", tokenFor(t, issuer, "bob"))
	require.Equal(t, http.StatusOK, status)
	require.Equal(t, second, body["kekId"])
}

func TestDataKeyMaxAgeSetting(t *testing.T) {
	t.Parallel()
	base := map[string]string{"KEYBROKER_JWKS_URL": "http://127.0.0.1:1/jwks", "KEYBROKER_DATA_DIR": t.TempDir(), "KEYBROKER_KEK": "env://K?id=k",
		"KEYBROKER_JWT_ISSUER": "https://auth.test", "KEYBROKER_JWT_AUDIENCE": "https://auth.test"}
	parse := func(env map[string]string, args ...string) (*config.Config, error) {
		e := map[string]string{}
		for k, v := range base {
			e[k] = v
		}
		for k, v := range env {
			e[k] = v
		}
		return config.Resolve(config.Serve, args, envFunc(e), io.Discard, "")
	}
	cfg, err := parse(nil)
	require.NoError(t, err)
	require.Equal(t, 90*24*time.Hour, cfg.DataKeyMaxAge, "default 90 days")
	for value, want := range map[string]time.Duration{"30d": 30 * 24 * time.Hour, "2160h": 2160 * time.Hour, "0": 0, "0d": 0} {
		cfg, err = parse(map[string]string{"KEYBROKER_DATA_KEY_MAX_AGE": value})
		require.NoError(t, err, value)
		require.Equal(t, want, cfg.DataKeyMaxAge, value)
	}
	cfg, err = parse(map[string]string{"KEYBROKER_DATA_KEY_MAX_AGE": "30d"}, "--data-key-max-age", "7d")
	require.NoError(t, err)
	require.Equal(t, 7*24*time.Hour, cfg.DataKeyMaxAge, "the flag wins")
	for _, bad := range []string{"-1d", "soon", "1.5d", "-3h", "99999999999d"} {
		_, err = parse(map[string]string{"KEYBROKER_DATA_KEY_MAX_AGE": bad})
		require.Error(t, err, bad)
		require.Contains(t, err.Error(), "KEYBROKER_DATA_KEY_MAX_AGE")
	}
}

// TestRotateDataKeyRefusesWithoutCachedMode: a local KEK wraps user keys
// itself; the command says so and changes nothing.
func TestRotateDataKeyRefusesWithoutCachedMode(t *testing.T) {
	t.Parallel()
	key := make([]byte, 32)
	key[0] = 1
	env := map[string]string{"KEYBROKER_DATA_DIR": t.TempDir(), "MANA_AUTH_KEK": base64.StdEncoding.EncodeToString(key)}
	var out bytes.Buffer
	err := run(t.Context(), []string{"kek", "rotate-data-key"}, envFunc(env), &out, io.Discard, nil)
	require.ErrorContains(t, err, "not in cached envelope mode")
	require.Empty(t, out.String())
}

func rowsUnder(t *testing.T, store *pgstore.Store) map[string]int64 {
	t.Helper()
	counts, err := store.KEKCounts(t.Context())
	require.NoError(t, err)
	out := map[string]int64{}
	for _, c := range counts {
		if c.Wrapped {
			out[c.KEKID] += c.Rows
		}
	}
	return out
}

// countOpening counts the stored rows that the data key (id, key) opens,
// under the binding each row names or under id, read as a database thief
// would (superuser, past row-level security).
func countOpening(t *testing.T, admin *pgxpool.Pool, id string, key []byte) int {
	t.Helper()
	kek, err := localkek.New(id, key, false)
	require.NoError(t, err)
	rows, err := admin.Query(t.Context(), `SELECT user_id, kek_id, wrapped_mk FROM keybroker.encryption_vaults WHERE wrapped_mk IS NOT NULL`)
	require.NoError(t, err)
	defer rows.Close()
	opened, seen := 0, 0
	for rows.Next() {
		var user, kekID, wrapped string
		require.NoError(t, rows.Scan(&user, &kekID, &wrapped))
		seen++
		ciphertext, err := base64.StdEncoding.DecodeString(wrapped)
		require.NoError(t, err)
		for _, binding := range []string{kekID, id} {
			if _, err := kek.Unwrap(context.Background(), ciphertext, broker.BindingContext(user, binding, broker.FormatBound)); err == nil {
				opened++
				break
			}
		}
	}
	require.NoError(t, rows.Err())
	require.NotZero(t, seen)
	return opened
}

// TestLookingCommandsMakeNoDataKey: config check and audit upkeep only
// look at the keys; on a fresh install in cached envelope mode they used
// to mint its first data key (through a KMS call, into the store) as a
// side effect. Serve still makes it.
func TestLookingCommandsMakeNoDataKey(t *testing.T) {
	env, _, _ := cachedKMSEnv(t)
	require.NoError(t, run(t.Context(), []string{"migrate"}, envFunc(env), io.Discard, io.Discard, nil))
	pool := pgtest.NewPool(t, env[testAdminURL])
	store, err := pgstore.New(t.Context(), pgstore.Config{Pool: pool, Schema: "keybroker"})
	require.NoError(t, err)
	dataKeys := func() []broker.DataKey {
		list, err := store.DataKeyList(t.Context())
		require.NoError(t, err)
		return list
	}

	out, err := configCheck(t, env)
	require.NoError(t, err, out)
	require.Contains(t, out, "ok    rows: every row with a server wrap opens with the configured KEKs")
	require.NoError(t, run(t.Context(), []string{"audit", "upkeep"}, envFunc(env), io.Discard, io.Discard, nil))
	require.Empty(t, dataKeys(), "a command that looks made a data key")

	srv := startServe(t, env, "serve")
	require.NoError(t, srv.stop())
	require.Len(t, dataKeys(), 1, "serve makes the first data key")
}
