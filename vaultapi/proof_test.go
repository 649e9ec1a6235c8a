package vaultapi_test

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"net/http"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/broker"
	kbclient "github.com/keybroker/keybroker/client"
	"github.com/keybroker/keybroker/vaultapi"
	"github.com/keybroker/keybroker/vaultapi/jwtauth"
)

// The attacks of issue 15 item 1 over real HTTP on PostgreSQL: a thief
// with a user's bearer token (and, for the proof, a copy of the database)
// tries to destroy a zero-knowledge vault by replacing or losing its
// only wrap.

// proofOf is the key possession proof as a client computes it, written
// out here rather than taken from the packages under test.
func proofOf(mk []byte) string {
	mac := hmac.New(sha256.New, mk)
	mac.Write([]byte("keybroker key possession proof v1"))
	return base64.StdEncoding.EncodeToString(mac.Sum(nil))
}

func randomB64(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return base64.StdEncoding.EncodeToString(b)
}

// recoveryBlob opens the vault's recovery blob (GET /key) with secret.
func recoveryBlob(t *testing.T, e *env, user string, secret []byte) (wrapped string, mk []byte) {
	t.Helper()
	r := e.do(http.MethodGet, "/key", user, nil)
	require.Equal(t, http.StatusOK, r.status, r.raw)
	require.Equal(t, true, r.body["requiresRecoveryCode"], r.raw)
	wrapped = r.body["recoveryWrappedMk"].(string)
	w, err := base64.StdEncoding.DecodeString(wrapped)
	require.NoError(t, err)
	iv, err := base64.StdEncoding.DecodeString(r.body["recoveryIv"].(string))
	require.NoError(t, err)
	mk, err = kbclient.UnwrapWithRecovery(w, iv, secret)
	require.NoError(t, err, "the user's recovery code no longer opens the vault")
	return wrapped, mk
}

// TestStolenTokenCannotReplaceZeroKnowledgeRecoveryWrap: with only the
// user's token, replacing the recovery wrap of a zero-knowledge vault
// with garbage is refused — without a proof, with a wrong one, and with
// the values a database reader holds (the key check value, the stored
// proof hash) — each refusal audited, the row unchanged, and the
// user's recovery code still opens their key. The user, holding the key,
// replaces it with the right proof.
func TestStolenTokenCannotReplaceZeroKnowledgeRecoveryWrap(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	mk := decodeKey(t, e.do(http.MethodPost, "/init", "victim", nil))
	secret, _ := kbclient.NewRecoveryCode()
	wrapped, iv, err := kbclient.WrapWithRecovery(mk, secret)
	require.NoError(t, err)
	r := e.do(http.MethodPost, "/recovery-wrap", "victim", map[string]string{
		"recoveryWrappedMk": base64.StdEncoding.EncodeToString(wrapped), "recoveryIv": base64.StdEncoding.EncodeToString(iv), "keyProof": proofOf(mk)})
	require.Equal(t, http.StatusOK, r.status, r.raw)
	r = e.do(http.MethodPost, "/zero-knowledge", "victim", map[string]any{"enable": true})
	require.Equal(t, http.StatusOK, r.status, r.raw)
	before := e.vaultRow("victim")
	garbage := map[string]string{"recoveryWrappedMk": randomB64(48), "recoveryIv": randomB64(12)}

	e.do(http.MethodPost, "/recovery-wrap", "victim", garbage).requireError(t, http.StatusForbidden, "KEY_PROOF_REQUIRED")

	kcv, _ := before["key_check"].(string)
	stored, _ := before["key_proof"].(string)
	hash, _, _ := strings.Cut(stored, ":")
	require.NotEmpty(t, kcv)
	require.NotEmpty(t, hash, "the row keeps a hash of the proof")
	for name, proof := range map[string]string{
		"random": randomB64(32), "the key check value": kcv, "the stored hash": hash, "another key's proof": proofOf(make([]byte, 32)),
	} {
		body := map[string]string{"keyProof": proof}
		for k, v := range garbage {
			body[k] = v
		}
		r := e.do(http.MethodPost, "/recovery-wrap", "victim", body)
		require.Equal(t, http.StatusForbidden, r.status, "%s: %s", name, r.raw)
		r.requireError(t, http.StatusForbidden, "KEY_PROOF_MISMATCH")
	}
	for _, bad := range []string{"", "%%%", randomB64(31), randomB64(33)} {
		body := map[string]string{"keyProof": bad}
		for k, v := range garbage {
			body[k] = v
		}
		e.do(http.MethodPost, "/recovery-wrap", "victim", body).requireError(t, http.StatusBadRequest, "BAD_REQUEST")
	}
	e.do(http.MethodPost, "/zero-knowledge", "victim", map[string]any{"enable": true, "keyProof": hash}).requireError(t, http.StatusForbidden, "KEY_PROOF_MISMATCH")

	// Leaving zero-knowledge mode needs the key itself; a keyProof beside
	// it must be that key's.
	guess := make([]byte, 32)
	rand.Read(guess)
	e.do(http.MethodPost, "/zero-knowledge", "victim", map[string]any{"enable": false, "masterKey": base64.StdEncoding.EncodeToString(guess), "keyProof": proofOf(guess)}).
		requireError(t, http.StatusConflict, "MASTER_KEY_MISMATCH")
	e.do(http.MethodPost, "/zero-knowledge", "victim", map[string]any{"enable": false, "masterKey": base64.StdEncoding.EncodeToString(guess), "keyProof": hash}).
		requireError(t, http.StatusBadRequest, "BAD_REQUEST")

	require.Equal(t, before, e.vaultRow("victim"), "a refused request changes nothing")
	blob, opened := recoveryBlob(t, e, "victim", secret)
	require.Equal(t, base64.StdEncoding.EncodeToString(wrapped), blob)
	require.Equal(t, mk, opened)
	trail := strings.Join(e.auditActions("victim"), " ")
	require.Equal(t, 5, strings.Count(trail, "recovery_set:403"), trail)
	require.Contains(t, trail, "zk_enable:403")

	// The user unlocked the vault with the recovery code: they hold the
	// key, and the proof lets them replace the wrap.
	secret2, _ := kbclient.NewRecoveryCode()
	wrapped2, iv2, err := kbclient.WrapWithRecovery(mk, secret2)
	require.NoError(t, err)
	r = e.do(http.MethodPost, "/recovery-wrap", "victim", map[string]string{
		"recoveryWrappedMk": base64.StdEncoding.EncodeToString(wrapped2), "recoveryIv": base64.StdEncoding.EncodeToString(iv2), "keyProof": proofOf(mk)})
	require.Equal(t, http.StatusOK, r.status, r.raw)
	_, opened = recoveryBlob(t, e, "victim", secret2)
	require.Equal(t, mk, opened)

	require.NotContains(t, e.logs.String(), proofOf(mk), "the proof is never logged")
}

// TestAdoptedZeroKnowledgeVaultRestoredThroughServiceRoute: a
// zero-knowledge row as the original service wrote it (no key check
// value: nothing the server can verify a key or proof against) survives
// every token-only sequence that destroyed it — garbage replacements,
// leaving zero-knowledge mode with a random key, a rotation, a clear, a
// garbage wrap made zero-knowledge — because the server keeps its first
// wrap, which the service route restores and the user's code opens.
func TestAdoptedZeroKnowledgeVaultRestoredThroughServiceRoute(t *testing.T) {
	t.Parallel()
	o := newOpsEnv(t, nil)
	c := &client{t: t, base: o.url}
	mk := make([]byte, 32)
	rand.Read(mk)
	secret, _ := kbclient.NewRecoveryCode()
	wrapped, iv, err := kbclient.WrapWithRecovery(mk, secret)
	require.NoError(t, err)
	original := base64.StdEncoding.EncodeToString(wrapped)
	_, err = o.admin.Exec(context.Background(), `INSERT INTO keybroker.encryption_vaults
    (user_id, wrapped_mk, wrap_iv, format_version, kek_id, recovery_wrapped_mk, recovery_iv, recovery_format_version, recovery_set_at, zero_knowledge)
VALUES ('adopted', NULL, NULL, 1, 'env-v1', $1, $2, 1, now(), true)`, original, base64.StdEncoding.EncodeToString(iv))
	require.NoError(t, err)

	ok := func(method, path string, body any) {
		t.Helper()
		r := o.do(method, path, "adopted", body)
		require.Equal(t, http.StatusOK, r.status, "%s %s: %s", method, path, r.raw)
	}
	garbage := func() map[string]string {
		return map[string]string{"recoveryWrappedMk": randomB64(48), "recoveryIv": randomB64(12)}
	}
	ok(http.MethodPost, "/recovery-wrap", garbage())
	withProof := garbage()
	withProof["keyProof"] = randomB64(32)
	ok(http.MethodPost, "/recovery-wrap", withProof)
	ok(http.MethodPost, "/recovery-wrap", garbage())
	ok(http.MethodPost, "/zero-knowledge", map[string]any{"enable": false, "masterKey": randomB64(32)})
	ok(http.MethodPost, "/rotate", nil)
	ok(http.MethodDelete, "/recovery-wrap", nil)
	ok(http.MethodPost, "/recovery-wrap", garbage())
	ok(http.MethodPost, "/zero-knowledge", map[string]any{"enable": true})
	// Now zero-knowledge over a key the server minted: verifiable again.
	o.do(http.MethodPost, "/recovery-wrap", "adopted", garbage()).requireError(t, http.StatusForbidden, "KEY_PROOF_REQUIRED")
	r := o.do(http.MethodGet, "/key", "adopted", nil)
	require.NotEqual(t, original, r.body["recoveryWrappedMk"], "the attack replaced the wrap the code opens")

	vaultPath := "/api/v1/internal/users/adopted/vault"
	_, meta := c.request(http.MethodGet, vaultPath, serviceHeader(), "")
	require.Equal(t, true, meta["hasRestorableRecoveryWrap"], "%v", meta)
	require.NotNil(t, meta["restorableRecoveryWrapTakenAt"])
	res, _ := c.request(http.MethodPost, vaultPath+"/recovery-wrap/restore", map[string]string{vaultapi.ServiceKeyHeader: "wrong"}, "")
	require.Equal(t, http.StatusUnauthorized, res.StatusCode)
	res, body := c.request(http.MethodPost, vaultPath+"/recovery-wrap/restore", serviceHeader(), "")
	require.Equal(t, http.StatusOK, res.StatusCode, "%v", body)
	require.Equal(t, true, body["zeroKnowledge"])
	require.Equal(t, false, body["serverWrapDropped"])

	blob, opened := recoveryBlob(t, o.env, "adopted", secret)
	require.Equal(t, original, blob)
	require.Equal(t, mk, opened, "the user's recovery code opens their key again")
	row := o.vaultRow("adopted")
	require.Nil(t, row["key_check"], "the restored wrap comes back with its own state: no key check value")
	require.Nil(t, row["restorable_recovery_wrapped_mk"])
	trail := o.auditActions("adopted")
	require.Equal(t, []string{"recovery_restore:200", "fetch:200"}, trail[len(trail)-2:])

	res, body = c.request(http.MethodPost, vaultPath+"/recovery-wrap/restore", serviceHeader(), "")
	require.Equal(t, http.StatusNotFound, res.StatusCode)
	require.Equal(t, "NO_RESTORABLE_RECOVERY_WRAP", body["code"])
	res, body = c.request(http.MethodPost, "/api/v1/internal/users/nobody/vault/recovery-wrap/restore", serviceHeader(), "")
	require.Equal(t, http.StatusNotFound, res.StatusCode)
	require.Equal(t, "VAULT_NOT_INITIALISED", body["code"])

	// The next unverifiable replacement is kept again; the operator may
	// discard it once the user confirms their new code.
	ok(http.MethodPost, "/recovery-wrap", garbage())
	res, body = c.request(http.MethodDelete, vaultPath+"/recovery-wrap/restorable", serviceHeader(), "")
	require.Equal(t, http.StatusOK, res.StatusCode, "%v", body)
	require.Nil(t, o.vaultRow("adopted")["restorable_recovery_wrapped_mk"])
	res, body = c.request(http.MethodDelete, vaultPath+"/recovery-wrap/restorable", serviceHeader(), "")
	require.Equal(t, http.StatusNotFound, res.StatusCode)
	require.Equal(t, "NO_RESTORABLE_RECOVERY_WRAP", body["code"])
	trail = o.auditActions("adopted")
	require.Contains(t, trail, "recovery_discard:200")
}

// TestRecoveryProofOptionalKeepsReplacedWrapRestorable: with
// KEYBROKER_RECOVERY_PROOF=optional an unchanged browser client (no
// keyProof) may replace a zero-knowledge recovery wrap, as with the
// original service — and a thief with its token too — but the replaced
// wrap is kept and the service route restores it; a wrong proof is
// refused all the same.
func TestRecoveryProofOptionalKeepsReplacedWrapRestorable(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{
		service:   func(cfg *broker.Config) { cfg.RecoveryProof = broker.RecoveryProofOptional },
		configure: func(cfg *vaultapi.Config, _ *jwtauth.Verifier, _ broker.Store) { cfg.ServiceKey = testServiceKey },
	})
	ctx := t.Context()
	user, err := kbclient.New(kbclient.Config{BaseURL: e.url, TokenSource: func(context.Context) (string, error) { return e.token("optional"), nil }})
	require.NoError(t, err)
	key, err := user.Init(ctx)
	require.NoError(t, err)
	code, err := user.SetRecoveryCode(ctx, key.MasterKey)
	require.NoError(t, err)
	require.NoError(t, user.EnableZeroKnowledge(ctx))

	garbage := map[string]string{"recoveryWrappedMk": randomB64(48), "recoveryIv": randomB64(12)}
	for range 2 {
		r := e.do(http.MethodPost, "/recovery-wrap", "optional", garbage)
		require.Equal(t, http.StatusOK, r.status, r.raw)
	}
	garbage["keyProof"] = randomB64(32)
	e.do(http.MethodPost, "/recovery-wrap", "optional", garbage).requireError(t, http.StatusForbidden, "KEY_PROOF_MISMATCH")
	zk, err := user.Key(ctx)
	require.NoError(t, err)
	_, err = zk.Unlock(code)
	require.ErrorIs(t, err, kbclient.ErrWrongRecoveryCode, "the thief's garbage replaced the wrap")

	c := &client{t: t, base: e.url}
	res, body := c.request(http.MethodPost, "/api/v1/internal/users/optional/vault/recovery-wrap/restore", serviceHeader(), "")
	require.Equal(t, http.StatusOK, res.StatusCode, "%v", body)
	zk, err = user.Key(ctx)
	require.NoError(t, err)
	mk, err := zk.Unlock(code)
	require.NoError(t, err)
	require.Equal(t, key.MasterKey, mk, "the first wrap is back and the user's code opens it")

	// The Go client proves the key by itself: replacing the code works in
	// zero-knowledge mode, with or without the switch.
	code2, err := user.ReplaceRecoveryCode(ctx, code)
	require.NoError(t, err)
	zk, err = user.Key(ctx)
	require.NoError(t, err)
	mk, err = zk.Unlock(code2)
	require.NoError(t, err)
	require.Equal(t, key.MasterKey, mk)
	require.Nil(t, e.vaultRow("optional")["restorable_recovery_wrapped_mk"], "a proven replacement keeps nothing")
}
