package main

import (
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/internal/jwtissuer"
	"github.com/keybroker/keybroker/internal/testkit/kmstest/localkms"
	"github.com/keybroker/keybroker/internal/testkit/pgtest"
)

// TestServeWithCachedAWSKMS: an awskms:// KEK is in cached envelope mode
// by default: rows record a data key id, and a restarted server opens
// them; cache=off wraps with the KMS directly.
func TestServeWithCachedAWSKMS(t *testing.T) {
	t.Setenv("AWS_ACCESS_KEY_ID", "AKIDLOCALKMS")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "local-kms-secret")
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	kms := localkms.Start(t)
	kms.CreateKey(t, "kb")
	issuer, err := jwtissuer.New("https://auth.test")
	require.NoError(t, err)
	jwks := httptest.NewServer(issuer.JWKSHandler())
	defer jwks.Close()

	uri := "awskms:///alias/kb?id=aws-1&region=" + localkms.Region + "&endpoint=" + url.QueryEscape(kms.URL)
	role, adminURL := pgtest.NewPlainDatabase(t)
	env := map[string]string{
		"DATABASE_URL":           role.URL,
		"KEYBROKER_KEK":          uri,
		"KEYBROKER_JWKS_URL":     jwks.URL,
		"KEYBROKER_JWT_ISSUER":   "https://auth.test",
		"KEYBROKER_JWT_AUDIENCE": "https://auth.test",
		"KEYBROKER_ADDR":         "127.0.0.1:0",
	}
	tok, err := issuer.Mint(jwtissuer.Claims{Subject: "alice"})
	require.NoError(t, err)

	srv := startServe(t, env, "serve")
	status, body := fetch(t, srv.addr, http.MethodPost, "/init", tok)
	require.Equal(t, http.StatusOK, status)
	kekID, _ := body["kekId"].(string)
	require.True(t, strings.HasPrefix(kekID, "dk-"), "cached mode wraps under a data key, got %q", kekID)
	require.NoError(t, srv.stop())

	srv2 := startServe(t, env, "serve")
	status, again := fetch(t, srv2.addr, http.MethodGet, "/key", tok)
	require.Equal(t, http.StatusOK, status)
	require.Equal(t, body["masterKey"], again["masterKey"])
	require.NoError(t, srv2.stop())

	// cache=off: the KMS wraps user keys itself; the cached rows still
	// open because their data key is wrapped by the same KEK.
	env["KEYBROKER_KEK"] = uri + "&cache=off"
	// The re-wrap job would move the cached rows to the new active id
	// (aws-1, direct): off, to see them open through their data key.
	env["KEYBROKER_REWRAP"] = "false"
	srv3 := startServe(t, env, "serve")
	status, direct := fetch(t, srv3.addr, http.MethodPost, "/init", tokenFor(t, issuer, "bob"))
	require.Equal(t, http.StatusOK, status)
	require.Equal(t, "aws-1", direct["kekId"])
	status, again = fetch(t, srv3.addr, http.MethodGet, "/key", tok)
	require.Equal(t, http.StatusOK, status)
	require.Equal(t, body["masterKey"], again["masterKey"])

	// The KMS goes away: a direct (cache=off) row answers 503
	// KEK_UNAVAILABLE with a failed_fetch audit row, while the cached row
	// still opens from the loaded data key.
	kms.Close()
	status, failed := fetch(t, srv3.addr, http.MethodGet, "/key", tokenFor(t, issuer, "bob"))
	require.Equal(t, http.StatusServiceUnavailable, status)
	require.Equal(t, "KEK_UNAVAILABLE", failed["code"])
	status, again = fetch(t, srv3.addr, http.MethodGet, "/key", tok)
	require.Equal(t, http.StatusOK, status)
	require.Equal(t, body["masterKey"], again["masterKey"])
	pool := pgtest.NewPool(t, adminURL) // row-level security hides the rows from keybroker's role
	var audited int
	require.NoError(t, pool.QueryRow(t.Context(), `SELECT count(*) FROM keybroker.encryption_vault_audit
		WHERE user_id = 'bob' AND action = 'failed_fetch' AND status = 503`).Scan(&audited))
	require.Equal(t, 1, audited)
}

func tokenFor(t *testing.T, issuer *jwtissuer.Issuer, user string) string {
	t.Helper()
	tok, err := issuer.Mint(jwtissuer.Claims{Subject: user})
	require.NoError(t, err)
	return tok
}
