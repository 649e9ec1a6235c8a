package vaultapi_test

import (
	"context"
	"crypto/ed25519"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/internal/jwtissuer"
	"github.com/keybroker/keybroker/internal/testkit/pgtest"
	"github.com/keybroker/keybroker/kekproviders/localkek"
	"github.com/keybroker/keybroker/pgstore"
	"github.com/keybroker/keybroker/vaultapi"
	"github.com/keybroker/keybroker/vaultapi/jwtauth"
)

// ─── JWT attacks, end to end ────────────────────────────────────────────

// jwtSegment is the base64url of v's JSON.
func jwtSegment(t *testing.T, v any) string {
	t.Helper()
	raw, err := json.Marshal(v)
	require.NoError(t, err)
	return base64.RawURLEncoding.EncodeToString(raw)
}

func attackClaims(sub string) map[string]any {
	now := time.Now()
	return map[string]any{"iss": "https://auth.test", "aud": "keybroker", "sub": sub, "iat": now.Unix(), "exp": now.Add(time.Hour).Unix()}
}

// signEdDSA signs header.claims with priv, as an attacker with their own
// key (or a stolen one) would.
func signEdDSA(t *testing.T, priv ed25519.PrivateKey, header, claims map[string]any) string {
	t.Helper()
	input := jwtSegment(t, header) + "." + jwtSegment(t, claims)
	return input + "." + base64.RawURLEncoding.EncodeToString(ed25519.Sign(priv, []byte(input)))
}

// TestJWTAttacksThroughTheAPI sends the classic JWT attacks to a vault
// route over HTTP: every one is a 401 UNAUTHORIZED with the standard body
// — never a 5xx — and changes nothing. The verifier's own corpus is in
// package jwtauth; this proves the middleware and the error writer carry
// its verdict end to end, including when the JWKS endpoint is down.
func TestJWTAttacksThroughTheAPI(t *testing.T) {
	t.Parallel()
	base := newEnv(t, envOptions{})
	e := base.reconfigure(t, envOptions{configure: func(cfg *vaultapi.Config, _ *jwtauth.Verifier, _ broker.Store) {
		v, err := jwtauth.New(context.Background(), jwtauth.Config{JWKSURL: base.jwksURL, Issuer: "https://auth.test", Audience: "keybroker"})
		require.NoError(t, err)
		t.Cleanup(v.Close)
		cfg.Verifier = v
	}})
	good, err := e.issuer.Mint(jwtissuer.Claims{Subject: "victim", Audience: []string{"keybroker"}})
	require.NoError(t, err)
	_, attackerKey, err := ed25519.GenerateKey(rand.Reader)
	require.NoError(t, err)
	kid := e.issuer.KeyID()
	mint := func(c jwtissuer.Claims) string {
		c.Subject = "victim"
		if c.Audience == nil {
			c.Audience = []string{"keybroker"}
		}
		tok, err := e.issuer.Mint(c)
		require.NoError(t, err)
		return tok
	}
	hs256 := func(key []byte) string {
		input := jwtSegment(t, map[string]any{"alg": "HS256", "typ": "JWT", "kid": kid}) + "." + jwtSegment(t, attackClaims("victim"))
		mac := hmac.New(sha256.New, key)
		mac.Write([]byte(input))
		return input + "." + base64.RawURLEncoding.EncodeToString(mac.Sum(nil))
	}
	jwksJSON, err := e.issuer.PublicJWKS()
	require.NoError(t, err)
	now := time.Now()
	attacks := map[string]string{
		"AlgNone":            jwtSegment(t, map[string]any{"alg": "none", "kid": kid}) + "." + jwtSegment(t, attackClaims("victim")) + ".",
		"HS256WithPublicKey": hs256(e.issuer.PublicKey()),
		"HS256WithJWKS":      hs256(jwksJSON),
		"UnknownKid":         signEdDSA(t, attackerKey, map[string]any{"alg": "EdDSA", "kid": "attacker-kid"}, attackClaims("victim")),
		"InjectedKid":        signEdDSA(t, attackerKey, map[string]any{"alg": "EdDSA", "kid": kid}, attackClaims("victim")),
		"KidPathTraversal":   signEdDSA(t, attackerKey, map[string]any{"alg": "EdDSA", "kid": "../../../../dev/null"}, attackClaims("victim")),
		"EmbeddedJWK": signEdDSA(t, attackerKey, map[string]any{"alg": "EdDSA", "kid": kid, "jwk": map[string]any{
			"kty": "OKP", "crv": "Ed25519", "x": base64.RawURLEncoding.EncodeToString(attackerKey.Public().(ed25519.PublicKey))}}, attackClaims("victim")),
		"JKUInjection":  signEdDSA(t, attackerKey, map[string]any{"alg": "EdDSA", "kid": "x", "jku": "http://127.0.0.1:1/jwks"}, attackClaims("victim")),
		"Expired":       mint(jwtissuer.Claims{IssuedAt: now.Add(-2 * time.Hour), Expiry: now.Add(-time.Hour)}),
		"NotYetValid":   mint(jwtissuer.Claims{NotBefore: now.Add(time.Hour)}),
		"NoExpiry":      mint(jwtissuer.Claims{OmitExpiry: true}),
		"WrongIssuer":   mint(jwtissuer.Claims{Issuer: "https://evil.test"}),
		"WrongAudience": mint(jwtissuer.Claims{Audience: []string{"another-service"}}),
		"Oversized":     mint(jwtissuer.Claims{Extra: map[string]any{"pad": strings.Repeat("x", jwtauth.MaxTokenBytes)}}),
		"TamperedSub":   strings.Split(good, ".")[0] + "." + jwtSegment(t, attackClaims("someone-else")) + "." + strings.Split(good, ".")[2],
	}
	client := &http.Client{Timeout: 30 * time.Second}
	for name, tok := range attacks {
		t.Run(name, func(t *testing.T) {
			req, err := http.NewRequest(http.MethodPost, e.url+vaultapi.BasePath+"/init", nil)
			require.NoError(t, err)
			req.Header.Set("Authorization", "Bearer "+tok)
			res, err := client.Do(req)
			require.NoError(t, err)
			raw, _ := io.ReadAll(res.Body)
			res.Body.Close()
			requireErrorBody(t, res.StatusCode, raw, http.StatusUnauthorized, vaultapi.CodeUnauthorized)
		})
	}
	require.Nil(t, e.vaultRow("victim"), "no attack created a vault")
	require.Nil(t, e.vaultRow("someone-else"))
	r := e.do(http.MethodPost, "/init", "", nil)
	require.Equal(t, http.StatusUnauthorized, r.status)

	t.Run("JWKSEndpointDown", func(t *testing.T) {
		// The issuer's JWKS endpoint serves once, then goes away.
		jwks := httptest.NewServer(e.issuer.JWKSHandler())
		down := e.reconfigure(t, envOptions{configure: func(cfg *vaultapi.Config, _ *jwtauth.Verifier, _ broker.Store) {
			v, err := jwtauth.New(context.Background(), jwtauth.Config{JWKSURL: jwks.URL, Issuer: "https://auth.test", MinRefreshInterval: time.Millisecond})
			require.NoError(t, err)
			t.Cleanup(v.Close)
			cfg.Verifier = v
		}})
		known := down.do(http.MethodPost, "/init", "jwks-user", nil)
		require.Equal(t, http.StatusOK, known.status, known.raw)
		jwks.Close()

		// A key the verifier holds still verifies: an issuer outage does
		// not lock out users whose tokens it can check.
		again := down.do(http.MethodGet, "/key", "jwks-user", nil)
		require.Equal(t, http.StatusOK, again.status, again.raw)

		// A token under a key it has not seen needs a refetch, which fails:
		// 401, quickly, never 5xx.
		_, err := e.issuer.Rotate()
		require.NoError(t, err)
		start := time.Now()
		r := down.do(http.MethodGet, "/key", "jwks-user", nil)
		r.requireError(t, http.StatusUnauthorized, vaultapi.CodeUnauthorized)
		require.Less(t, time.Since(start), 15*time.Second)

		// A server that starts while the JWKS endpoint is down answers 401.
		cold := e.reconfigure(t, envOptions{configure: func(cfg *vaultapi.Config, _ *jwtauth.Verifier, _ broker.Store) {
			v, err := jwtauth.New(context.Background(), jwtauth.Config{JWKSURL: jwks.URL, Issuer: "https://auth.test"})
			require.NoError(t, err)
			t.Cleanup(v.Close)
			cfg.Verifier = v
		}})
		cold.do(http.MethodGet, "/key", "jwks-user", nil).requireError(t, http.StatusUnauthorized, vaultapi.CodeUnauthorized)
	})
}

func requireErrorBody(t *testing.T, status int, raw []byte, wantStatus int, wantCode string) {
	t.Helper()
	require.Equal(t, wantStatus, status, "%s", raw)
	var body map[string]any
	require.NoError(t, json.Unmarshal(raw, &body), "%s", raw)
	require.Equal(t, map[string]any{"error": body["error"], "code": wantCode}, body)
}

// ─── logs ───────────────────────────────────────────────────────────────

// secretForms returns the encodings under which a secret could appear in
// a log line: base64 (padded, unpadded, URL alphabet), hex both cases,
// and the raw bytes.
func secretForms(b []byte) []string {
	std := base64.StdEncoding.EncodeToString(b)
	return []string{
		std, strings.TrimRight(std, "="), base64.RawURLEncoding.EncodeToString(b),
		hex.EncodeToString(b), strings.ToUpper(hex.EncodeToString(b)), string(b),
	}
}

// TestLogsOfEveryRouteAndErrorPathHoldNoSecrets runs every route of the
// API — the seven vault routes, the service routes, health, readiness,
// metrics, OpenAPI and CORS preflight — through every success and error
// path it has (200/201, 400, 401, 404, 405, 409, 413, 429, 500, 503 of
// the KEK and of the store), at debug level, and then searches every log
// line for every secret of the run in every encoding: master keys (the
// ones handed out and a wrong one sent back), recovery wraps, tokens (and
// their signatures), the service key (right and wrong), the KEK and the
// stored wraps.
func TestLogsOfEveryRouteAndErrorPathHoldNoSecrets(t *testing.T) {
	t.Parallel()
	kekBytes := make([]byte, 32)
	rand.Read(kekBytes)
	kek, err := localkek.New("env-v1", kekBytes, false)
	require.NoError(t, err)
	const serviceKey = "log-test-service-key-8f3b2c1d"
	apiLogs := &syncBuffer{}
	apiLog := slog.New(slog.NewJSONHandler(apiLogs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	reg := prometheus.NewRegistry()
	metrics, err := vaultapi.NewMetrics(reg)
	require.NoError(t, err)
	e := newEnv(t, envOptions{active: kek, configure: func(cfg *vaultapi.Config, _ *jwtauth.Verifier, _ broker.Store) {
		cfg.Logger = apiLog
		cfg.ServiceKey = serviceKey
		cfg.Metrics = metrics
		cfg.MetricsHandler = promhttp.HandlerFor(reg, promhttp.HandlerOpts{})
		cfg.CORSOrigins = []string{"https://app.example"}
		cfg.RateLimit = vaultapi.RateLimit{PerSecond: 0.001, Burst: 60}
	}})
	var secrets [][]byte
	keep := func(b []byte) { secrets = append(secrets, append([]byte(nil), b...)) }
	keepText := func(s string) { keep([]byte(s)) }
	token := func(user string) string {
		tok := e.token(user)
		keepText(tok)
		keepText(tok[strings.LastIndexByte(tok, '.')+1:])
		return tok
	}
	call := func(method, path string, headers map[string]string, body string) int {
		req, err := http.NewRequest(method, e.url+path, strings.NewReader(body))
		require.NoError(t, err)
		for k, v := range headers {
			req.Header.Set(k, v)
		}
		res, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		raw, _ := io.ReadAll(res.Body)
		res.Body.Close()
		require.Less(t, res.StatusCode, 600, "%s", raw)
		return res.StatusCode
	}
	vault := func(method, path, user, body string) int {
		return call(method, vaultapi.BasePath+path, map[string]string{"Authorization": "Bearer " + token(user), "Content-Type": "application/json"}, body)
	}
	keyOf := func(user string) []byte {
		r := e.do(http.MethodGet, "/key", user, nil)
		mk := decodeKey(t, r)
		keep(mk)
		return mk
	}
	statuses := map[int]bool{}
	note := func(s int) { statuses[s] = true }

	// 401s: none, garbage, expired, foreign key, a bearer in a query string.
	note(call(http.MethodGet, vaultapi.BasePath+"/key", nil, ""))
	note(call(http.MethodGet, vaultapi.BasePath+"/key", map[string]string{"Authorization": "Bearer garbage.garbage.garbage"}, ""))
	expired, err := e.issuer.Mint(jwtissuer.Claims{Subject: "alice", IssuedAt: time.Now().Add(-2 * time.Hour), Expiry: time.Now().Add(-time.Hour)})
	require.NoError(t, err)
	keepText(expired)
	note(call(http.MethodGet, vaultapi.BasePath+"/key", map[string]string{"Authorization": "Bearer " + expired}, ""))
	other, err := jwtissuer.New("https://auth.test")
	require.NoError(t, err)
	foreign, err := other.Mint(jwtissuer.Claims{Subject: "alice"})
	require.NoError(t, err)
	keepText(foreign)
	note(call(http.MethodGet, vaultapi.BasePath+"/key?access_token="+foreign, map[string]string{"Authorization": "Bearer " + foreign}, ""))

	// The whole vault lifecycle with its refusals.
	note(vault(http.MethodGet, "/status", "alice", ""))
	note(vault(http.MethodGet, "/key", "alice", ""))                                     // 404
	note(vault(http.MethodPost, "/recovery-wrap", "alice", `{"recoveryWrappedMk":"x"}`)) // 400
	note(vault(http.MethodPost, "/init", "alice", ""))
	mk := keyOf("alice")
	note(vault(http.MethodPost, "/zero-knowledge", "alice", `{"enable":true}`)) // 400 RECOVERY_WRAP_MISSING
	wrap := make([]byte, 48)
	rand.Read(wrap)
	keep(wrap)
	wrapBody := `{"recoveryWrappedMk":"` + base64.StdEncoding.EncodeToString(wrap) + `","recoveryIv":"` + b64(12, 4) + `"}`
	note(vault(http.MethodPost, "/recovery-wrap", "alice", wrapBody))
	note(vault(http.MethodPost, "/zero-knowledge", "alice", `{"enable":true}`))
	note(vault(http.MethodGet, "/key", "alice", ""))
	note(vault(http.MethodPost, "/init", "alice", ""))
	note(vault(http.MethodPost, "/rotate", "alice", ""))          // 409
	note(vault(http.MethodDelete, "/recovery-wrap", "alice", "")) // 409
	wrong := make([]byte, 32)
	rand.Read(wrong)
	keep(wrong)
	note(vault(http.MethodPost, "/zero-knowledge", "alice", `{"enable":false,"masterKey":"`+base64.StdEncoding.EncodeToString(wrong)+`"}`)) // 409
	note(vault(http.MethodPost, "/zero-knowledge", "alice", `{"enable":false,"masterKey":"`+base64.StdEncoding.EncodeToString(mk)+`"}`))
	note(vault(http.MethodDelete, "/recovery-wrap", "alice", ""))
	note(vault(http.MethodPost, "/rotate", "alice", ""))
	keyOf("alice")
	// Malformed input carrying key material.
	note(vault(http.MethodPost, "/zero-knowledge", "alice", `{"enable":false,"masterKey":"`+base64.StdEncoding.EncodeToString(wrong[:31])+`"}`))
	note(vault(http.MethodPost, "/recovery-wrap", "alice", `{"recoveryWrappedMk":"`+base64.StdEncoding.EncodeToString(wrap)+`",`))
	note(vault(http.MethodPost, "/recovery-wrap", "alice", `{"recoveryWrappedMk":"`+base64.StdEncoding.EncodeToString(wrap)+strings.Repeat("A", 20<<10)+`"}`)) // 413
	note(vault(http.MethodGet, "/"+base64.RawURLEncoding.EncodeToString(mk), "alice", ""))                                                                     // 404, key in the path
	note(vault(http.MethodPut, "/key", "alice", ""))                                                                                                           // 405
	// 500: a wrap copied from another user does not open.
	note(vault(http.MethodPost, "/init", "mallory", ""))
	keyOf("mallory")
	pgtest.Exec(t, e.admin, `UPDATE keybroker.encryption_vaults m SET wrapped_mk = a.wrapped_mk, wrap_iv = a.wrap_iv
		FROM keybroker.encryption_vaults a WHERE a.user_id = 'alice' AND m.user_id = 'mallory'`)
	note(vault(http.MethodGet, "/key", "mallory", ""))
	// 503 KEK_UNAVAILABLE: the row names a KEK that is not configured.
	note(vault(http.MethodPost, "/init", "bob", ""))
	keyOf("bob")
	pgtest.Exec(t, e.admin, `UPDATE keybroker.encryption_vaults SET kek_id = 'removed' WHERE user_id = 'bob'`)
	note(vault(http.MethodGet, "/key", "bob", ""))
	// 429: the rate limit.
	for range 70 {
		note(vault(http.MethodGet, "/status", "spammer", ""))
	}
	// Service routes, right and wrong key.
	svc := map[string]string{vaultapi.ServiceKeyHeader: serviceKey}
	keepText(serviceKey)
	note(call(http.MethodGet, "/api/v1/internal/users/alice/vault", svc, ""))
	note(call(http.MethodGet, "/api/v1/internal/users/alice/vault/audit?limit=5", svc, ""))
	note(call(http.MethodGet, "/api/v1/internal/users/alice/vault/audit?cursor=bogus", svc, ""))
	note(call(http.MethodGet, "/api/v1/internal/users/alice/vault", map[string]string{vaultapi.ServiceKeyHeader: serviceKey + "x"}, ""))
	keepText(serviceKey + "x")
	note(call(http.MethodDelete, "/api/v1/internal/users/mallory/vault", svc, ""))
	// Operations routes and a CORS preflight.
	for _, path := range []string{"/healthz", "/readyz", "/metrics", "/openapi.yaml"} {
		note(call(http.MethodGet, path, nil, ""))
	}
	note(call(http.MethodOptions, vaultapi.BasePath+"/key", map[string]string{
		"Origin": "https://app.example", "Access-Control-Request-Method": "GET", "Access-Control-Request-Headers": "authorization"}, ""))

	// 503 STORE_UNAVAILABLE: the same API over a store that is down.
	dead := newDeadStoreEnv(t, e, apiLog, kek)
	note(dead.do(http.MethodGet, "/key", "alice", nil).status)
	note(dead.do(http.MethodPost, "/rotate", "alice", nil).status)

	for _, s := range []int{200, 400, 401, 404, 405, 409, 413, 429, 500, 503} {
		require.True(t, statuses[s], "the run never produced a %d", s)
	}
	// What the database holds is secret too: the wraps and the KEK.
	for _, user := range []string{"alice", "bob"} {
		if w, ok := e.vaultRow(user)["wrapped_mk"].(string); ok {
			keepText(w)
		}
	}
	keep(kekBytes)

	logs := apiLogs.String() + e.logs.String() + dead.logs.String()
	require.Contains(t, logs, `"msg":"request"`, "the access log is written")
	require.Contains(t, logs, "vault unwrap failed", "the error paths logged")
	for _, secret := range secrets {
		for _, form := range secretForms(secret) {
			if len(form) < 8 {
				continue
			}
			require.NotContains(t, logs, form, "a secret is in the logs")
		}
	}
}

// newDeadStoreEnv serves the API of e over a store whose database cannot
// be reached, logging to log.
func newDeadStoreEnv(t *testing.T, e *env, log *slog.Logger, kek broker.KEK) *env {
	t.Helper()
	pool, err := pgxpool.New(context.Background(), "postgres://postgres@127.0.0.1:1/none?sslmode=disable&connect_timeout=2")
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	store, err := pgstore.New(context.Background(), pgstore.Config{Pool: pool, Schema: schema})
	require.NoError(t, err)
	return e.withStore(t, store, envOptions{active: kek, configure: func(cfg *vaultapi.Config, _ *jwtauth.Verifier, _ broker.Store) {
		cfg.Logger = log
	}})
}
