package vaultapi_test

import (
	"context"
	"encoding/base64"
	"net/http"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/internal/testkit/pgtest"
	"github.com/keybroker/keybroker/internal/testkit/testvectors"
	"github.com/keybroker/keybroker/kekproviders/localkek"
	"github.com/keybroker/keybroker/pgstore"
)

// Rows and outages seen through the API: legacy and copied wraps, unknown and decrypt-only KEKs, a store down, logs, malformed bodies, wrong methods.

// TestLegacyRowsUnwrapThroughTheAPI stores every format-1 vector as the
// original service stored it and fetches it through HTTP.
func TestLegacyRowsUnwrapThroughTheAPI(t *testing.T) {
	t.Parallel()
	for _, v := range testvectors.Load(t).KEKWrapV1 {
		t.Run(v.Name, func(t *testing.T) {
			t.Parallel()
			key, err := base64.StdEncoding.DecodeString(v.KEK)
			require.NoError(t, err)
			kek, err := localkek.New(v.KEKID, key, true)
			require.NoError(t, err)
			e := newEnv(t, envOptions{active: kek})
			pgtest.ReopenFormat1(t, e.admin, schema) // a fresh schema starts closed
			pgtest.Exec(t, e.admin, `INSERT INTO keybroker.encryption_vaults (user_id, wrapped_mk, wrap_iv, format_version, kek_id)
				VALUES ('legacy', $1, $2, 1, $3)`, v.WrappedMK, v.WrapIV, v.KEKID)
			r := e.do(http.MethodGet, "/key", "legacy", nil)
			require.Equal(t, v.MasterKey, r.body["masterKey"])
			require.EqualValues(t, 1, r.body["formatVersion"])
			require.Equal(t, v.KEKID, r.body["kekId"])
		})
	}
}

// TestWrapCopiedToAnotherUserDoesNotUnwrap copies alice's wrap into
// mallory's row with SQL: the bound wrap must refuse to open there.
func TestWrapCopiedToAnotherUserDoesNotUnwrap(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	aliceKey := decodeKey(t, e.do(http.MethodPost, "/init", "alice", nil))
	decodeKey(t, e.do(http.MethodPost, "/init", "mallory", nil))
	pgtest.Exec(t, e.admin, `UPDATE keybroker.encryption_vaults m SET wrapped_mk = a.wrapped_mk, wrap_iv = a.wrap_iv, key_check = a.key_check
		FROM keybroker.encryption_vaults a WHERE a.user_id = 'alice' AND m.user_id = 'mallory'`)

	r := e.do(http.MethodGet, "/key", "mallory", nil)
	r.requireError(t, http.StatusInternalServerError, "INTERNAL")
	require.NotContains(t, r.raw, base64.StdEncoding.EncodeToString(aliceKey))
	// The fetch is recorded in the commit of its read (the KEK is local),
	// then the failure that voids it.
	require.Equal(t, []string{"init:201", "fetch:200", "failed_fetch:500"}, e.auditActions("mallory"))
	require.Equal(t, aliceKey, decodeKey(t, e.do(http.MethodGet, "/key", "alice", nil)), "alice is unaffected")
}

func TestUnknownKEKIDIsAudited503(t *testing.T) {
	t.Parallel()
	old := newKEK(t, "old")
	e := newEnv(t, envOptions{active: newKEK(t, "new"), retired: []broker.KEK{old}})
	decodeKey(t, e.do(http.MethodPost, "/init", "alice", nil))
	pgtest.Exec(t, e.admin, `UPDATE keybroker.encryption_vaults SET kek_id = 'removed-kek' WHERE user_id = 'alice'`)
	e.do(http.MethodGet, "/key", "alice", nil).requireError(t, http.StatusServiceUnavailable, "KEK_UNAVAILABLE")
	actions := e.auditActions("alice")
	require.Equal(t, "failed_fetch:503", actions[len(actions)-1])
}

// TestDecryptOnlyKEKStillOpensOldRows: rows wrapped by a KEK that is now
// decrypt-only keep opening; new wraps use the active KEK.
func TestDecryptOnlyKEKStillOpensOldRows(t *testing.T) {
	t.Parallel()
	old := newKEK(t, "old")
	e := newEnv(t, envOptions{active: old})
	mk := decodeKey(t, e.do(http.MethodPost, "/init", "alice", nil))

	// Same database, new server configuration: a new active KEK.
	e2 := e.reconfigure(t, envOptions{active: newKEK(t, "new"), retired: []broker.KEK{old}})
	r := e2.do(http.MethodGet, "/key", "alice", nil)
	require.Equal(t, mk, decodeKey(t, r))
	require.Equal(t, "old", r.body["kekId"])
	r = e2.do(http.MethodPost, "/init", "bob", nil)
	require.Equal(t, "new", r.body["kekId"])
}

func TestStoreOutageIs503(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	// A pool on a port where nothing listens.
	pool, err := pgxpool.New(ctx, "postgres://postgres@127.0.0.1:1/none?sslmode=disable&connect_timeout=2")
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	store, err := pgstore.New(ctx, pgstore.Config{Pool: pool, Schema: schema})
	require.NoError(t, err)
	e := newEnv(t, envOptions{})
	e2 := e.withStore(t, store, envOptions{})
	e2.do(http.MethodGet, "/key", "alice", nil).requireError(t, http.StatusServiceUnavailable, "STORE_UNAVAILABLE")
	e2.do(http.MethodGet, "/status", "alice", nil).requireError(t, http.StatusServiceUnavailable, "STORE_UNAVAILABLE")
}

func TestLogsNeverContainKeysOrTokens(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	tok := e.token("alice")
	mk := decodeKey(t, e.do(http.MethodPost, "/init", "alice", nil))
	wrap := b64(48, 0x5A)
	e.do(http.MethodPost, "/recovery-wrap", "alice", map[string]string{"recoveryWrappedMk": wrap, "recoveryIv": b64(12, 3)})
	pgtest.Exec(t, e.admin, `UPDATE keybroker.encryption_vaults SET kek_id = 'removed' WHERE user_id = 'alice'`)
	e.do(http.MethodGet, "/key", "alice", nil) // an error path that logs
	logs := e.logs.String()
	require.Contains(t, logs, `"route"`, "the access log is written")
	for _, secret := range []string{base64.StdEncoding.EncodeToString(mk), wrap, tok} {
		require.NotContains(t, logs, secret)
	}
}

// TestMalformedJSONHasItsOwnMessage: a body that is not JSON is told so
// (where it breaks, never what it holds), apart from a JSON object that
// lacks the fields a route needs.
func TestMalformedJSONHasItsOwnMessage(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	e.do(http.MethodPost, "/init", "alice", nil)
	for name, c := range map[string]struct{ path, body, says string }{
		"Truncated":   {"/recovery-wrap", `{"recoveryWrappedMk":"c2VjcmV0`, "request body is not valid JSON: it ends before the JSON object does"},
		"Syntax":      {"/recovery-wrap", `{"recoveryWrappedMk": s3cr3tkey}`, "request body is not valid JSON: syntax error at byte 23"},
		"Empty":       {"/zero-knowledge", ``, "request body is empty: send a JSON object"},
		"NotAnObject": {"/zero-knowledge", `[true]`, "request body is not a JSON object"},
		"Trailing":    {"/zero-knowledge", `{"enable":true} x`, "request body is not valid JSON: more data after the JSON object"},
		"Missing":     {"/recovery-wrap", `{}`, "recoveryWrappedMk and recoveryIv are required (base64 strings)"},
		"WrongType":   {"/zero-knowledge", `{"enable":"yes"}`, "`enable: boolean` is required"},
	} {
		t.Run(name, func(t *testing.T) {
			r := e.do(http.MethodPost, c.path, "alice", c.body)
			r.requireError(t, http.StatusBadRequest, "BAD_REQUEST")
			require.Equal(t, c.says, r.body["error"])
			require.NotContains(t, r.raw, "s3cr3t")
			require.NotContains(t, r.raw, "c2VjcmV0")
		})
	}
}

// TestMethodNotAllowedSaysWhatIs: a 405 carries Allow with the route's
// methods (RFC 9110 §15.5.6).
func TestMethodNotAllowedSaysWhatIs(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	for path, want := range map[string]string{"/key": "GET", "/recovery-wrap": "POST, DELETE", "/init": "POST"} {
		r := e.do(http.MethodPut, path, "alice", nil)
		r.requireError(t, http.StatusMethodNotAllowed, "METHOD_NOT_ALLOWED")
		require.Equal(t, want, r.header.Get("Allow"), path)
	}
}
