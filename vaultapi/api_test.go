package vaultapi_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/internal/jwtissuer"
	"github.com/keybroker/keybroker/internal/testkit/apitest"
	"github.com/keybroker/keybroker/internal/testkit/pgtest"
	"github.com/keybroker/keybroker/kekproviders/localkek"
	"github.com/keybroker/keybroker/migrations"
	"github.com/keybroker/keybroker/pgstore"
	"github.com/keybroker/keybroker/vaultapi"
	"github.com/keybroker/keybroker/vaultapi/jwtauth"
)

const schema = "keybroker"

// env is one keybroker behind real HTTP on a fresh database, with a
// real EdDSA issuer whose JWKS the server fetches.
type env struct {
	t      *testing.T
	url    string
	issuer *jwtissuer.Issuer
	admin  *pgxpool.Pool // superuser: reads and breaks rows behind RLS
	logs   *syncBuffer

	store   broker.Store
	jwksURL string // the issuer's JWKS, as this server's verifier fetches it
}

type envOptions struct {
	active  broker.KEK
	retired []broker.KEK
	// configure adjusts the API's configuration before the server starts;
	// it may use the verifier and the store the env built.
	configure func(cfg *vaultapi.Config, verifier *jwtauth.Verifier, store broker.Store)
	// service adjusts the broker's configuration.
	service func(cfg *broker.Config)
}

func newEnv(t *testing.T, opts envOptions) *env {
	t.Helper()
	store, admin := newPGStore(t, schema, nil)
	issuer, err := jwtissuer.New("https://auth.test")
	require.NoError(t, err)
	e := &env{t: t, issuer: issuer, admin: admin, store: store}
	return e.withStore(t, store, opts)
}

// newPGStore returns a store on a fresh database, migrated in schemaName
// by a runtime role that owns it and is neither superuser nor BYPASSRLS
// (so row-level security binds it), and a superuser pool that reads and
// breaks rows behind RLS. prepare, when set, runs as the runtime role
// before the migrations (e.g. pgtest.CreateManaAuthSchema).
func newPGStore(t *testing.T, schemaName string, prepare func(t testing.TB, pool *pgxpool.Pool)) (*pgstore.Store, *pgxpool.Pool) {
	t.Helper()
	ctx := context.Background()
	dbURL := pgtest.NewDatabase(t)
	admin := pgtest.NewPool(t, dbURL)
	role := pgtest.NewRole(t, dbURL)
	dbName := admin.Config().ConnConfig.Database
	pgtest.Exec(t, admin, "GRANT CREATE ON DATABASE "+pgx.Identifier{dbName}.Sanitize()+" TO "+pgx.Identifier{role.Name}.Sanitize())
	pool := pgtest.NewPool(t, role.URL)
	if prepare != nil {
		prepare(t, pool)
	}
	_, err := migrations.Apply(ctx, pool, schemaName)
	require.NoError(t, err)
	store, err := pgstore.New(ctx, pgstore.Config{Pool: pool, Schema: schemaName})
	require.NoError(t, err)
	return store, admin
}

// reconfigure starts another server on the same database, as a restart
// with a new configuration would.
func (e *env) reconfigure(t *testing.T, opts envOptions) *env {
	return e.withStore(t, e.store, opts)
}

// withStore starts a server over store with the same issuer.
func (e *env) withStore(t *testing.T, store broker.Store, opts envOptions) *env {
	t.Helper()
	if opts.active == nil {
		opts.active = newKEK(t, "env-v1")
	}
	ring, err := broker.NewKeyring(opts.active, opts.retired...)
	require.NoError(t, err)
	logs := &syncBuffer{}
	srv := apitest.Start(t, apitest.Options{
		Store: store, Keyring: ring, Issuer: e.issuer,
		Logger: slog.New(slog.NewJSONHandler(logs, nil)),
		Broker: opts.service,
		API: func(cfg *vaultapi.Config) {
			if opts.configure != nil {
				opts.configure(cfg, cfg.Verifier.(*jwtauth.Verifier), store)
			}
		},
	})
	return &env{t: t, url: srv.URL, issuer: e.issuer, admin: e.admin, logs: logs, store: store, jwksURL: srv.JWKSURL}
}

// syncBuffer collects a server's logs (apitest.LogBuffer).
type syncBuffer = apitest.LogBuffer

func newKEK(t *testing.T, id string) *localkek.KEK {
	t.Helper()
	key := make([]byte, 32)
	rand.Read(key)
	k, err := localkek.New(id, key, false)
	require.NoError(t, err)
	return k
}

func (e *env) token(user string) string {
	e.t.Helper()
	tok, err := e.issuer.Mint(jwtissuer.Claims{Subject: user})
	require.NoError(e.t, err)
	return tok
}

type response struct {
	status int
	header http.Header
	body   map[string]any
	raw    string
}

func (e *env) do(method, path, user string, body any) response {
	e.t.Helper()
	return e.doAt(method, vaultapi.BasePath+path, user, body)
}

// doAt is do with the full path of the route.
func (e *env) doAt(method, path, user string, body any) response {
	e.t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	default:
		raw, err := json.Marshal(b)
		require.NoError(e.t, err)
		rd = bytes.NewReader(raw)
	}
	req, err := http.NewRequest(method, e.url+path, rd)
	require.NoError(e.t, err)
	if user != "" {
		req.Header.Set("Authorization", "Bearer "+e.token(user))
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "keybroker-test")
	res, err := http.DefaultClient.Do(req)
	require.NoError(e.t, err)
	defer res.Body.Close()
	raw, err := io.ReadAll(res.Body)
	require.NoError(e.t, err)
	r := response{status: res.StatusCode, header: res.Header, raw: string(raw)}
	if len(raw) > 0 {
		require.NoError(e.t, json.Unmarshal(raw, &r.body), "body %q is not JSON", raw)
	}
	return r
}

func (r response) requireError(t *testing.T, status int, code string) {
	t.Helper()
	require.Equal(t, status, r.status, r.raw)
	require.Equal(t, code, r.body["code"], r.raw)
	require.NotEmpty(t, r.body["error"])
	require.Len(t, r.body, 2, "error bodies are exactly {error, code}: %s", r.raw)
}

// vaultRow reads a user's row as stored, behind RLS (superuser).
func (e *env) vaultRow(user string) map[string]any {
	e.t.Helper()
	rows, err := e.admin.Query(context.Background(), "SELECT * FROM keybroker.encryption_vaults WHERE user_id = $1", user)
	require.NoError(e.t, err)
	all, err := pgx.CollectRows(rows, pgx.RowToMap)
	require.NoError(e.t, err)
	if len(all) == 0 {
		return nil
	}
	require.Len(e.t, all, 1)
	return all[0]
}

func (e *env) auditActions(user string) []string {
	e.t.Helper()
	rows, err := e.admin.Query(context.Background(),
		"SELECT action || ':' || status FROM keybroker.encryption_vault_audit WHERE user_id = $1 ORDER BY created_at, id", user)
	require.NoError(e.t, err)
	out, err := pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(e.t, err)
	return out
}

func (e *env) vaultCount(user string) int {
	var n int
	require.NoError(e.t, e.admin.QueryRow(context.Background(), "SELECT count(*) FROM keybroker.encryption_vaults WHERE user_id = $1", user).Scan(&n))
	return n
}

func b64(n int, fill byte) string {
	return base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{fill}, n))
}

func decodeKey(t *testing.T, r response) []byte {
	t.Helper()
	require.Equal(t, http.StatusOK, r.status, r.raw)
	s, ok := r.body["masterKey"].(string)
	require.True(t, ok, "no masterKey in %s", r.raw)
	mk, err := base64.StdEncoding.DecodeString(s)
	require.NoError(t, err)
	require.Len(t, mk, 32)
	return mk
}

// ─── tests ──────────────────────────────────────────────────────────────

func TestUnauthenticatedRequestsGet401(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	for name, header := range map[string]string{
		"NoHeader":    "",
		"NotBearer":   "Basic dXNlcjpwYXNz",
		"EmptyBearer": "Bearer ",
		"Garbage":     "Bearer not.a.jwt",
	} {
		t.Run(name, func(t *testing.T) {
			req, _ := http.NewRequest(http.MethodGet, e.url+vaultapi.BasePath+"/key", nil)
			if header != "" {
				req.Header.Set("Authorization", header)
			}
			res, err := http.DefaultClient.Do(req)
			require.NoError(t, err)
			defer res.Body.Close()
			var body map[string]any
			require.NoError(t, json.NewDecoder(res.Body).Decode(&body))
			require.Equal(t, http.StatusUnauthorized, res.StatusCode)
			require.Equal(t, "UNAUTHORIZED", body["code"])
		})
	}
	// A token from another issuer's key is refused too.
	other, err := jwtissuer.New("https://auth.test")
	require.NoError(t, err)
	tok, err := other.Mint(jwtissuer.Claims{Subject: "alice"})
	require.NoError(t, err)
	req, _ := http.NewRequest(http.MethodPost, e.url+vaultapi.BasePath+"/init", nil)
	req.Header.Set("Authorization", "Bearer "+tok)
	res, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	res.Body.Close()
	require.Equal(t, http.StatusUnauthorized, res.StatusCode)
	require.Nil(t, e.vaultRow("alice"), "a refused token changes nothing")
}

func TestStatusWithoutVaultHasFullShapeAndNoAudit(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	r := e.do(http.MethodGet, "/status", "alice", nil)
	require.Equal(t, http.StatusOK, r.status)
	require.Equal(t, map[string]any{"vaultExists": false, "hasRecoveryWrap": false, "zeroKnowledge": false, "recoverySetAt": nil}, r.body)
	require.Empty(t, e.auditActions("alice"))
}

func TestInitFetchAndStandardShape(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	r := e.do(http.MethodPost, "/init", "alice", nil)
	mk := decodeKey(t, r)
	require.Equal(t, "no-store", r.header.Get("Cache-Control"))
	require.Equal(t, map[string]any{"masterKey": r.body["masterKey"], "formatVersion": float64(2), "kekId": "env-v1"}, r.body)

	again := e.do(http.MethodPost, "/init", "alice", nil)
	require.Equal(t, mk, decodeKey(t, again), "init is idempotent")
	fetched := e.do(http.MethodGet, "/key", "alice", nil)
	require.Equal(t, mk, decodeKey(t, fetched))
	require.Equal(t, "no-store", fetched.header.Get("Cache-Control"))

	row := e.vaultRow("alice")
	require.EqualValues(t, 2, row["format_version"])
	require.Equal(t, "env-v1", row["kek_id"])
	require.Equal(t, broker.KeyCheckValue(mk), row["key_check"])
	require.NotContains(t, fmt.Sprint(row), base64.StdEncoding.EncodeToString(mk), "the plaintext key is never stored")

	st := e.do(http.MethodGet, "/status", "alice", nil)
	require.Equal(t, true, st.body["vaultExists"])
	require.Equal(t, []string{"init:201", "init:200", "fetch:200"}, e.auditActions("alice"))

	// Another user gets another key.
	require.NotEqual(t, mk, decodeKey(t, e.do(http.MethodPost, "/init", "bob", nil)))
}

func TestKeyWithoutVaultIs404AndAudited(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	e.do(http.MethodGet, "/key", "alice", nil).requireError(t, http.StatusNotFound, "VAULT_NOT_INITIALISED")
	require.Equal(t, []string{"failed_fetch:404"}, e.auditActions("alice"))
	for _, c := range []struct{ method, path string }{
		{http.MethodPost, "/recovery-wrap"}, {http.MethodDelete, "/recovery-wrap"},
	} {
		body := any(nil)
		if c.method == http.MethodPost {
			body = map[string]string{"recoveryWrappedMk": b64(48, 1), "recoveryIv": b64(12, 2)}
		}
		e.do(c.method, c.path, "alice", body).requireError(t, http.StatusNotFound, "VAULT_NOT_INITIALISED")
	}
	e.do(http.MethodPost, "/zero-knowledge", "alice", map[string]any{"enable": true}).requireError(t, http.StatusNotFound, "VAULT_NOT_INITIALISED")
	e.do(http.MethodPost, "/zero-knowledge", "alice", map[string]any{"enable": false, "masterKey": b64(32, 7)}).requireError(t, http.StatusNotFound, "VAULT_NOT_INITIALISED")
	require.Nil(t, e.vaultRow("alice"))
}

func TestZeroKnowledgeLifecycle(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	mk := decodeKey(t, e.do(http.MethodPost, "/init", "alice", nil))

	e.do(http.MethodPost, "/zero-knowledge", "alice", map[string]any{"enable": true}).
		requireError(t, http.StatusBadRequest, "RECOVERY_WRAP_MISSING")

	wrap, iv := b64(48, 0xAB), b64(12, 0xCD)
	r := e.do(http.MethodPost, "/recovery-wrap", "alice", map[string]string{"recoveryWrappedMk": wrap, "recoveryIv": iv})
	require.Equal(t, map[string]any{"ok": true}, r.body)
	st := e.do(http.MethodGet, "/status", "alice", nil)
	require.Equal(t, true, st.body["hasRecoveryWrap"])
	setAt, err := time.Parse(time.RFC3339, st.body["recoverySetAt"].(string))
	require.NoError(t, err)
	require.WithinDuration(t, time.Now(), setAt, time.Minute)

	r = e.do(http.MethodPost, "/zero-knowledge", "alice", map[string]any{"enable": true})
	require.Equal(t, map[string]any{"ok": true, "zeroKnowledge": true}, r.body)
	r = e.do(http.MethodPost, "/zero-knowledge", "alice", map[string]any{"enable": true})
	require.Equal(t, http.StatusOK, r.status, "enabling twice is a no-op")
	row := e.vaultRow("alice")
	require.Nil(t, row["wrapped_mk"])
	require.Nil(t, row["wrap_iv"])
	require.Equal(t, true, row["zero_knowledge"])

	for _, path := range []string{"/key", "/init"} {
		method := http.MethodGet
		if path == "/init" {
			method = http.MethodPost
		}
		r = e.do(method, path, "alice", nil)
		require.Equal(t, http.StatusOK, r.status)
		require.Equal(t, map[string]any{"requiresRecoveryCode": true, "recoveryWrappedMk": wrap, "recoveryIv": iv, "formatVersion": float64(1)}, r.body)
		require.Equal(t, "no-store", r.header.Get("Cache-Control"))
	}

	e.do(http.MethodPost, "/rotate", "alice", nil).requireError(t, http.StatusConflict, "ZK_ROTATE_FORBIDDEN")
	e.do(http.MethodDelete, "/recovery-wrap", "alice", nil).requireError(t, http.StatusConflict, "ZK_ACTIVE")

	wrong := make([]byte, 32)
	copy(wrong, mk)
	wrong[31] ^= 0xFF
	e.do(http.MethodPost, "/zero-knowledge", "alice", map[string]any{"enable": false, "masterKey": base64.StdEncoding.EncodeToString(wrong)}).
		requireError(t, http.StatusConflict, "MASTER_KEY_MISMATCH")
	require.Equal(t, true, e.vaultRow("alice")["zero_knowledge"], "a refused key changes nothing")

	r = e.do(http.MethodPost, "/zero-knowledge", "alice", map[string]any{"enable": false, "masterKey": base64.StdEncoding.EncodeToString(mk)})
	require.Equal(t, map[string]any{"ok": true, "zeroKnowledge": false}, r.body)
	require.Equal(t, mk, decodeKey(t, e.do(http.MethodGet, "/key", "alice", nil)))

	// With zero-knowledge off, disabling again verifies the key too.
	e.do(http.MethodPost, "/zero-knowledge", "alice", map[string]any{"enable": false, "masterKey": base64.StdEncoding.EncodeToString(wrong)}).
		requireError(t, http.StatusConflict, "MASTER_KEY_MISMATCH")
	r = e.do(http.MethodPost, "/zero-knowledge", "alice", map[string]any{"enable": false, "masterKey": base64.StdEncoding.EncodeToString(mk)})
	require.Equal(t, http.StatusOK, r.status)

	r = e.do(http.MethodDelete, "/recovery-wrap", "alice", nil)
	require.Equal(t, map[string]any{"ok": true}, r.body)
	require.Equal(t, false, e.do(http.MethodGet, "/status", "alice", nil).body["hasRecoveryWrap"])

	require.Equal(t, []string{
		"init:201", "zk_enable:400", "recovery_set:200", "zk_enable:200", "zk_enable:200",
		"fetch:200", "init:200", "rotate:409", "recovery_clear:409", "zk_disable:409",
		"zk_disable:200", "fetch:200", "zk_disable:409", "zk_disable:200", "recovery_clear:200",
	}, e.auditActions("alice"))
}

func TestRotateMintsNewKeyAndClearsRecoveryWrap(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	// With no vault, rotate creates one.
	first := decodeKey(t, e.do(http.MethodPost, "/rotate", "alice", nil))
	require.Equal(t, first, decodeKey(t, e.do(http.MethodGet, "/key", "alice", nil)))
	e.do(http.MethodPost, "/recovery-wrap", "alice", map[string]string{"recoveryWrappedMk": b64(48, 1), "recoveryIv": b64(12, 2)})

	second := decodeKey(t, e.do(http.MethodPost, "/rotate", "alice", nil))
	require.NotEqual(t, first, second)
	require.Equal(t, second, decodeKey(t, e.do(http.MethodGet, "/key", "alice", nil)))
	row := e.vaultRow("alice")
	require.Nil(t, row["recovery_wrapped_mk"])
	require.Nil(t, row["recovery_iv"])
	require.NotNil(t, row["rotated_at"])
	require.Equal(t, []string{"rotate:201", "fetch:200", "recovery_set:200", "rotate:200", "fetch:200"}, e.auditActions("alice"))
}

func TestBadInputIs4xxAndChangesNothing(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	decodeKey(t, e.do(http.MethodPost, "/init", "alice", nil))
	before := e.vaultRow("alice")
	auditBefore := len(e.auditActions("alice"))

	cases := []struct {
		name, method, path string
		body               any
		status             int
		code               string
	}{
		{"MalformedJSON", http.MethodPost, "/recovery-wrap", `{"recoveryWrappedMk":`, 400, "BAD_REQUEST"},
		{"EmptyBody", http.MethodPost, "/recovery-wrap", ``, 400, "BAD_REQUEST"},
		{"NotAnObject", http.MethodPost, "/recovery-wrap", `[1,2]`, 400, "BAD_REQUEST"},
		{"TrailingData", http.MethodPost, "/recovery-wrap", `{"recoveryWrappedMk":"a","recoveryIv":"b"} {}`, 400, "BAD_REQUEST"},
		{"MissingIV", http.MethodPost, "/recovery-wrap", map[string]any{"recoveryWrappedMk": b64(48, 1)}, 400, "BAD_REQUEST"},
		{"NumberNotString", http.MethodPost, "/recovery-wrap", map[string]any{"recoveryWrappedMk": 5, "recoveryIv": b64(12, 1)}, 400, "BAD_REQUEST"},
		{"NotBase64", http.MethodPost, "/recovery-wrap", map[string]any{"recoveryWrappedMk": "!!!!", "recoveryIv": b64(12, 1)}, 400, "BAD_REQUEST"},
		{"ShortWrap", http.MethodPost, "/recovery-wrap", map[string]any{"recoveryWrappedMk": b64(47, 1), "recoveryIv": b64(12, 1)}, 400, "BAD_REQUEST"},
		{"LongIV", http.MethodPost, "/recovery-wrap", map[string]any{"recoveryWrappedMk": b64(48, 1), "recoveryIv": b64(16, 1)}, 400, "BAD_REQUEST"},
		{"URLSafeAlphabet", http.MethodPost, "/recovery-wrap", map[string]any{"recoveryWrappedMk": strings.Repeat("_-", 32), "recoveryIv": b64(12, 1)}, 400, "BAD_REQUEST"},
		{"EnableMissing", http.MethodPost, "/zero-knowledge", map[string]any{}, 400, "BAD_REQUEST"},
		{"EnableNotBool", http.MethodPost, "/zero-knowledge", map[string]any{"enable": "true"}, 400, "BAD_REQUEST"},
		{"DisableWithoutKey", http.MethodPost, "/zero-knowledge", map[string]any{"enable": false}, 400, "BAD_REQUEST"},
		{"DisableShortKey", http.MethodPost, "/zero-knowledge", map[string]any{"enable": false, "masterKey": b64(31, 1)}, 400, "BAD_REQUEST"},
		{"DisableBadBase64", http.MethodPost, "/zero-knowledge", map[string]any{"enable": false, "masterKey": "***"}, 400, "BAD_REQUEST"},
		{"TooLarge", http.MethodPost, "/recovery-wrap", `{"recoveryWrappedMk":"` + strings.Repeat("A", 64<<10) + `"}`, 413, "PAYLOAD_TOO_LARGE"},
		{"UnknownRoute", http.MethodGet, "/nope", nil, 404, "NOT_FOUND"},
		{"WrongMethod", http.MethodPut, "/key", nil, 405, "METHOD_NOT_ALLOWED"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := e.do(c.method, c.path, "alice", c.body)
			r.requireError(t, c.status, c.code)
			require.NotContains(t, r.raw, "AAAAAAAA", "input is never echoed")
		})
	}
	require.Equal(t, before, e.vaultRow("alice"), "bad input changes nothing")
	require.Len(t, e.auditActions("alice"), auditBefore, "decoding failures never reach the domain")
}

func TestConcurrentInitsAgreeOnOneKey(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	const n = 40
	keys := make([]string, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := e.do(http.MethodPost, "/init", "alice", nil)
			if r.status == http.StatusOK {
				keys[i], _ = r.body["masterKey"].(string)
			} else {
				t.Logf("init %d: %d %s", i, r.status, r.raw)
			}
		}()
	}
	wg.Wait()
	for i := range n {
		require.NotEmpty(t, keys[i], "init %d failed", i)
		require.Equal(t, keys[0], keys[i], "init %d returned another key", i)
	}
	require.Equal(t, 1, e.vaultCount("alice"))
	actions := e.auditActions("alice")
	require.Len(t, actions, n, "one audit row per request")
	require.Equal(t, 1, countOf(actions, "init:201"))
}

func countOf(list []string, s string) int {
	n := 0
	for _, x := range list {
		if x == s {
			n++
		}
	}
	return n
}
