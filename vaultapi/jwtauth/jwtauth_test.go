package jwtauth_test

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/lestrrat-go/jwx/v3/jwa"
	"github.com/lestrrat-go/jwx/v3/jwk"
	"github.com/lestrrat-go/jwx/v3/jws"
	"github.com/lestrrat-go/jwx/v3/jwt"
	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/internal/jwtissuer"
	"github.com/keybroker/keybroker/vaultapi/jwtauth"
)

const (
	testIssuer   = "https://auth.example.test"
	testAudience = "keybroker"
)

// jwksServer serves an issuer's JWKS on 127.0.0.1 and counts the fetches.
type jwksServer struct {
	*httptest.Server
	fetches atomic.Int64
	down    atomic.Bool // answer 503 while set
}

func startJWKS(t testing.TB, handler http.Handler) *jwksServer {
	t.Helper()
	s := &jwksServer{}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.fetches.Add(1)
		if s.down.Load() {
			http.Error(w, "unavailable", http.StatusServiceUnavailable)
			return
		}
		handler.ServeHTTP(w, r)
	}))
	t.Cleanup(s.Close)
	return s
}

func newIssuer(t testing.TB) *jwtissuer.Issuer {
	t.Helper()
	iss, err := jwtissuer.New(testIssuer)
	require.NoError(t, err)
	return iss
}

// newVerifier starts a JWKS server for iss and a Verifier against it with
// Issuer and Audience checks on. tweak may adjust the Config.
func newVerifier(t testing.TB, iss *jwtissuer.Issuer, tweak func(*jwtauth.Config)) (*jwtauth.Verifier, *jwksServer) {
	t.Helper()
	srv := startJWKS(t, iss.JWKSHandler())
	cfg := jwtauth.Config{
		JWKSURL:            srv.URL + "/api/auth/jwks",
		Issuer:             testIssuer,
		Audience:           testAudience,
		MinRefreshInterval: time.Millisecond,
	}
	if tweak != nil {
		tweak(&cfg)
	}
	v, err := jwtauth.New(t.Context(), cfg)
	require.NoError(t, err)
	t.Cleanup(v.Close)
	return v, srv
}

func mint(t testing.TB, iss *jwtissuer.Issuer, c jwtissuer.Claims) string {
	t.Helper()
	if c.Audience == nil {
		c.Audience = []string{testAudience}
	}
	tok, err := iss.Mint(c)
	require.NoError(t, err)
	return tok
}

// requireUnauthorized checks err wraps ErrUnauthorized and leaks neither
// the token nor any of the extra strings.
func requireUnauthorized(t *testing.T, err error, token string, leaks ...string) {
	t.Helper()
	require.Error(t, err)
	require.ErrorIs(t, err, jwtauth.ErrUnauthorized)
	if token != "" {
		require.NotContains(t, err.Error(), token)
		for _, part := range strings.Split(token, ".") {
			if len(part) > 8 {
				require.NotContains(t, err.Error(), part)
			}
		}
	}
	for _, s := range leaks {
		require.NotContains(t, err.Error(), s)
	}
}

func b64(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return base64.RawURLEncoding.EncodeToString(b)
}

func validPayload() map[string]any {
	now := time.Now()
	return map[string]any{
		"iss": testIssuer, "aud": testAudience, "sub": "user-1",
		"iat": now.Unix(), "exp": now.Add(time.Hour).Unix(),
	}
}

// signRaw signs claims under an arbitrary algorithm and key, with kid in
// the protected header when non-empty: the attacker's toolbox.
func signRaw(t testing.TB, alg jwa.SignatureAlgorithm, rawKey any, kid string, claims map[string]any) string {
	t.Helper()
	key, err := jwk.Import(rawKey)
	require.NoError(t, err)
	if kid != "" {
		require.NoError(t, key.Set(jwk.KeyIDKey, kid))
	}
	tok := jwt.New()
	for k, v := range claims {
		require.NoError(t, tok.Set(k, v))
	}
	signed, err := jwt.Sign(tok, jwt.WithKey(alg, key))
	require.NoError(t, err)
	return string(signed)
}

func TestVerifyValidTokenReturnsSubject(t *testing.T) {
	t.Parallel()
	iss := newIssuer(t)
	v, _ := newVerifier(t, iss, nil)
	require.True(t, v.Ready())

	sub, err := v.Verify(t.Context(), mint(t, iss, jwtissuer.Claims{Subject: "user-42"}))
	require.NoError(t, err)
	require.Equal(t, "user-42", sub)

	// Unicode user ids are fine; only control characters are refused.
	sub, err = v.Verify(t.Context(), mint(t, iss, jwtissuer.Claims{Subject: "usér-é-名前"}))
	require.NoError(t, err)
	require.Equal(t, "usér-é-名前", sub)

	// Within leeway: expired 10s ago, nbf 10s ahead.
	now := time.Now()
	_, err = v.Verify(t.Context(), mint(t, iss, jwtissuer.Claims{Subject: "u", IssuedAt: now.Add(-time.Hour), Expiry: now.Add(-10 * time.Second)}))
	require.NoError(t, err)
	_, err = v.Verify(t.Context(), mint(t, iss, jwtissuer.Claims{Subject: "u", NotBefore: now.Add(10 * time.Second)}))
	require.NoError(t, err)
}

// TestVerifyRefusesLongLivedTokens: a token the issuer signed with a
// lifetime beyond MaxLifetime is refused, whether its iat says so, its
// exp alone does, or it carries no iat at all; the leeway is the only
// slack.
func TestVerifyRefusesLongLivedTokens(t *testing.T) {
	t.Parallel()
	// A seed-derived issuer, so the test can sign a payload without iat.
	seed := make([]byte, ed25519.SeedSize)
	_, err := rand.Read(seed)
	require.NoError(t, err)
	iss, err := jwtissuer.NewFromSeed(testIssuer, "main-key", seed)
	require.NoError(t, err)
	v, _ := newVerifier(t, iss, nil)
	now := time.Now()
	tenYears := 10 * 365 * 24 * time.Hour
	noIat := validPayload()
	delete(noIat, "iat")
	noIat["exp"] = now.Add(tenYears).Unix()
	for name, token := range map[string]string{
		"TenYears":           mint(t, iss, jwtissuer.Claims{Subject: "u", IssuedAt: now, Expiry: now.Add(tenYears)}),
		"TenYearsWithoutIat": signJSON(t, ed25519.NewKeyFromSeed(seed), iss.KeyID(), nil, noIat),
		"MintedYearsAgo":     mint(t, iss, jwtissuer.Claims{Subject: "u", IssuedAt: now.Add(-tenYears), Expiry: now.Add(10 * time.Minute)}),
		"IatRecentExpFar":    mint(t, iss, jwtissuer.Claims{Subject: "u", IssuedAt: now.Add(-time.Minute), Expiry: now.Add(2 * time.Hour)}),
		"JustBeyondLeeway":   mint(t, iss, jwtissuer.Claims{Subject: "u", IssuedAt: now, Expiry: now.Add(jwtauth.DefaultMaxLifetime + jwtauth.DefaultLeeway + 2*time.Second)}),
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			sub, err := v.Verify(t.Context(), token)
			requireUnauthorized(t, err, token)
			require.Empty(t, sub)
			require.Contains(t, err.Error(), "lifetime")
		})
	}

	// Within the leeway, and a longer maximum when configured.
	_, err = v.Verify(t.Context(), mint(t, iss, jwtissuer.Claims{Subject: "u", IssuedAt: now, Expiry: now.Add(jwtauth.DefaultMaxLifetime + 20*time.Second)}))
	require.NoError(t, err)
	long := mint(t, iss, jwtissuer.Claims{Subject: "u", IssuedAt: now, Expiry: now.Add(90 * time.Minute)})
	_, err = v.Verify(t.Context(), long)
	require.ErrorContains(t, err, "lifetime")
	longer, _ := newVerifier(t, iss, func(c *jwtauth.Config) { c.MaxLifetime = 2 * time.Hour })
	sub, err := longer.Verify(t.Context(), long)
	require.NoError(t, err)
	require.Equal(t, "u", sub)
}

func TestVerifyWithoutIssuerAndAudienceChecks(t *testing.T) {
	t.Parallel()
	iss := newIssuer(t)
	v, _ := newVerifier(t, iss, func(c *jwtauth.Config) { c.Issuer, c.Audience = "", "" })
	tok, err := iss.Mint(jwtissuer.Claims{Subject: "u", Issuer: "https://other.test"})
	require.NoError(t, err)
	sub, err := v.Verify(t.Context(), tok)
	require.NoError(t, err)
	require.Equal(t, "u", sub)
}

func TestVerifyRefusesAttackCorpus(t *testing.T) {
	t.Parallel()
	// A seed-derived issuer, so the test also holds the private key and can
	// sign payloads and headers that Mint would never produce.
	seed := make([]byte, ed25519.SeedSize)
	_, err := rand.Read(seed)
	require.NoError(t, err)
	iss, err := jwtissuer.NewFromSeed(testIssuer, "main-key", seed)
	require.NoError(t, err)
	issuerKey := ed25519.NewKeyFromSeed(seed)
	// ES256 and RS256 are allowed here so that those tokens reach the key
	// check instead of stopping at the allow-list.
	v, _ := newVerifier(t, iss, func(c *jwtauth.Config) {
		c.Algorithms = []string{"EdDSA", "ES256", "RS256", "HS256", "none"}
		c.MinRefreshInterval = time.Hour
		c.RefreshInterval = 2 * time.Hour
	})
	kid := iss.KeyID()
	now := time.Now()

	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	require.NoError(t, err)
	ecKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	_, otherEd, err := ed25519.GenerateKey(rand.Reader)
	require.NoError(t, err)
	jwksBody, err := iss.PublicJWKS()
	require.NoError(t, err)

	// A different key published under nobody's JWKS, but claiming the real kid.
	impostor, err := jwtissuer.NewFromSeed(testIssuer, kid, ed25519Key(t).Seed())
	require.NoError(t, err)

	noneHeader := b64(map[string]any{"alg": "none", "typ": "JWT", "kid": kid})
	huge := mint(t, iss, jwtissuer.Claims{Subject: "u", Extra: map[string]any{"pad": strings.Repeat("a", jwtauth.MaxTokenBytes)}})

	cases := []struct {
		name   string
		token  string
		reason string // a substring of the error, to pin why it failed
		leaks  []string
	}{
		{name: "Empty", token: "", reason: "missing token"},
		{name: "Garbage", token: "not a token", reason: "malformed"},
		{name: "GarbageSegments", token: "aaaa.bbbb.cccc", reason: "malformed"},
		{name: "TwoSegments", token: "aaaa.bbbb", reason: "malformed"},
		{name: "FiveSegmentsJWE", token: "a.b.c.d.e", reason: "malformed"},
		{name: "JSONSerialization", token: `{"payload":"e30","signatures":[]}`, reason: "malformed"},
		{name: "BearerPrefixLeftOn", token: "Bearer " + mint(t, iss, jwtissuer.Claims{Subject: "u"}), reason: "malformed"},
		{name: "AlgNoneEmptySignature", token: noneHeader + "." + b64(validPayload()) + ".", reason: "malformed"},
		{name: "AlgNoneWithSignature", token: noneHeader + "." + b64(validPayload()) + ".c2ln", reason: "algorithm not allowed"},
		{name: "AlgNoneUppercase", token: b64(map[string]any{"alg": "NONE", "kid": kid}) + "." + b64(validPayload()) + ".c2ln", reason: "malformed"},
		{name: "AlgMissing", token: b64(map[string]any{"kid": kid}) + "." + b64(validPayload()) + ".c2ln", reason: "algorithm not allowed"},
		{name: "HS256WithPublicKeyBytes", token: signRaw(t, jwa.HS256(), []byte(iss.PublicKey()), kid, validPayload()), reason: "algorithm not allowed"},
		{name: "HS256WithJWKSBytes", token: signRaw(t, jwa.HS256(), jwksBody, kid, validPayload()), reason: "algorithm not allowed"},
		{name: "RS256UnknownKeyKnownKid", token: signRaw(t, jwa.RS256(), rsaKey, kid, validPayload()), reason: "algorithm does not match key"},
		{name: "RS256UnknownKeyUnknownKid", token: signRaw(t, jwa.RS256(), rsaKey, "rsa-1", validPayload()), reason: "unknown key id"},
		{name: "ES256UnknownKeyKnownKid", token: signRaw(t, jwa.ES256(), ecKey, kid, validPayload()), reason: "algorithm does not match key"},
		{name: "ES256UnknownKeyUnknownKid", token: signRaw(t, jwa.ES256(), ecKey, "ec-1", validPayload()), reason: "unknown key id"},
		{name: "PS512NotAllowed", token: signRaw(t, jwa.PS512(), rsaKey, kid, validPayload()), reason: "algorithm not allowed"},
		{name: "UnknownKid", token: signRaw(t, jwa.EdDSA(), otherEd, "no-such-kid", validPayload()), reason: "unknown key id"},
		{name: "NoKid", token: signRaw(t, jwa.EdDSA(), otherEd, "", validPayload()), reason: "no key id"},
		{name: "KidPathTraversal", token: signRaw(t, jwa.EdDSA(), otherEd, "../../../../etc/passwd", validPayload()), reason: "unknown key id", leaks: []string{"passwd"}},
		{name: "KidSQLInjection", token: signRaw(t, jwa.EdDSA(), otherEd, "' OR '1'='1'; DROP TABLE vaults; --", validPayload()), reason: "unknown key id", leaks: []string{"DROP TABLE"}},
		{name: "KidNUL", token: signRaw(t, jwa.EdDSA(), otherEd, kid+"\x00", validPayload()), reason: "unknown key id"},
		{name: "KidURL", token: signRaw(t, jwa.EdDSA(), otherEd, "http://127.0.0.1:1/evil.jwks", validPayload()), reason: "unknown key id", leaks: []string{"evil"}},
		{name: "OtherEd25519KeyKnownKid", token: mint(t, impostor, jwtissuer.Claims{Subject: "u"}), reason: "invalid signature"},
		{name: "TamperedPayload", token: tamperPayload(t, mint(t, iss, jwtissuer.Claims{Subject: "u"})), reason: "invalid signature"},
		{name: "Expired", token: mint(t, iss, jwtissuer.Claims{Subject: "u", IssuedAt: now.Add(-2 * time.Hour), Expiry: now.Add(-time.Hour)}), reason: "expired"},
		{name: "ExpiredBeyondLeeway", token: mint(t, iss, jwtissuer.Claims{Subject: "u", IssuedAt: now.Add(-2 * time.Hour), Expiry: now.Add(-31 * time.Second)}), reason: "expired"},
		{name: "NotBeforeInFuture", token: mint(t, iss, jwtissuer.Claims{Subject: "u", NotBefore: now.Add(5 * time.Minute)}), reason: "not yet valid"},
		{name: "IssuedInFuture", token: mint(t, iss, jwtissuer.Claims{Subject: "u", IssuedAt: now.Add(time.Hour)}), reason: "issued in the future"},
		{name: "WrongIssuer", token: mint(t, iss, jwtissuer.Claims{Subject: "u", Issuer: "https://evil.test"}), reason: "issuer", leaks: []string{"evil.test"}},
		{name: "WrongAudience", token: mint(t, iss, jwtissuer.Claims{Subject: "u", Audience: []string{"someone-else"}}), reason: "audience", leaks: []string{"someone-else"}},
		{name: "MissingAudience", token: mint(t, iss, jwtissuer.Claims{Subject: "u", OmitAudience: true}), reason: "audience"},
		{name: "MissingExp", token: mint(t, iss, jwtissuer.Claims{Subject: "u", OmitExpiry: true}), reason: "no expiry"},
		{name: "MissingSub", token: mint(t, iss, jwtissuer.Claims{}), reason: "no subject"},
		{name: "EmptySub", token: mint(t, iss, jwtissuer.Claims{Extra: map[string]any{"sub": ""}}), reason: "no subject"},
		{name: "SubWithNUL", token: mint(t, iss, jwtissuer.Claims{Subject: "user\x00admin"}), reason: "invalid subject"},
		{name: "SubWithNewline", token: mint(t, iss, jwtissuer.Claims{Subject: "user\nlevel=admin"}), reason: "invalid subject"},
		{name: "SubWithC1Control", token: mint(t, iss, jwtissuer.Claims{Subject: "user\u0085"}), reason: "invalid subject"},
		{name: "SubTooLong", token: mint(t, iss, jwtissuer.Claims{Subject: strings.Repeat("u", jwtauth.MaxSubjectBytes+1)}), reason: "invalid subject"},
		{name: "SubNotAString", token: signJSON(t, issuerKey, kid, nil, withClaim("sub", 42)), reason: "malformed"},
		{name: "SubInvalidUTF8", token: signJSON(t, issuerKey, kid, nil, withClaim("sub", "\xff\xfe")), reason: "invalid subject"},
		{name: "SubReplacementChar", token: mint(t, iss, jwtissuer.Claims{Subject: "user\ufffd"}), reason: "invalid subject"},
		{name: "ExpNotANumber", token: signJSON(t, issuerKey, kid, nil, withClaim("exp", "tomorrow")), reason: "malformed"},
		{name: "CritHeaderSigned", token: signJSON(t, issuerKey, kid, map[string]any{"crit": []string{"exp"}, "exp": 1}, validPayload()), reason: "unsupported token header"},
		{name: "B64FalseSigned", token: signJSON(t, issuerKey, kid, map[string]any{"b64": false, "crit": []string{"b64"}}, map[string]any{"sub": "u", "exp": now.Add(time.Hour).Unix()}), reason: "malformed"},
		{name: "JKUHeaderIgnored", token: signJSON(t, ed25519Key(t), "evil", map[string]any{"jku": "http://127.0.0.1:1/jwks"}, validPayload()), reason: "unknown key id"},
		{name: "EmbeddedJWKHeaderIgnored", token: signJSON(t, otherEd, "evil", map[string]any{"jwk": publicJWK(t, otherEd)}, validPayload()), reason: "unknown key id"},
		{name: "Oversized", token: huge, reason: "too large"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			sub, err := v.Verify(t.Context(), tc.token)
			requireUnauthorized(t, err, tc.token, tc.leaks...)
			require.Empty(t, sub)
			require.Contains(t, err.Error(), tc.reason)
		})
	}
}

// tamperPayload swaps the payload for one naming another subject, keeping
// the original header and signature.
func tamperPayload(t *testing.T, token string) string {
	t.Helper()
	parts := strings.Split(token, ".")
	require.Len(t, parts, 3)
	raw, err := base64.RawURLEncoding.DecodeString(parts[1])
	require.NoError(t, err)
	var claims map[string]any
	require.NoError(t, json.Unmarshal(raw, &claims))
	claims["sub"] = "admin"
	return parts[0] + "." + b64(claims) + "." + parts[2]
}

func withClaim(name string, value any) map[string]any {
	claims := validPayload()
	claims[name] = value
	return claims
}

func ed25519Key(t testing.TB) ed25519.PrivateKey {
	t.Helper()
	_, key, err := ed25519.GenerateKey(rand.Reader)
	require.NoError(t, err)
	return key
}

func publicJWK(t *testing.T, key ed25519.PrivateKey) jwk.Key {
	t.Helper()
	pub, err := jwk.Import(key.Public())
	require.NoError(t, err)
	return pub
}

// signJSON signs an arbitrary JSON payload with EdDSA, with kid and extra
// members in the protected header: for payloads and headers that the jwt
// builder (rightly) refuses to produce. A string with invalid UTF-8 is
// written out raw.
func signJSON(t testing.TB, key ed25519.PrivateKey, kid string, header, claims map[string]any) string {
	t.Helper()
	payload, err := json.Marshal(claims)
	require.NoError(t, err)
	if sub, ok := claims["sub"].(string); ok && !utf8.ValidString(sub) {
		payload = []byte(strings.Replace(string(payload), `"sub":"\ufffd\ufffd"`, `"sub":"`+sub+`"`, 1))
		require.Contains(t, string(payload), sub)
	}
	hdrs := jws.NewHeaders()
	require.NoError(t, hdrs.Set(jws.KeyIDKey, kid))
	for k, v := range header {
		require.NoError(t, hdrs.Set(k, v))
	}
	signed, err := jws.Sign(payload, jws.WithKey(jwa.EdDSA(), key, jws.WithProtectedHeaders(hdrs)))
	require.NoError(t, err)
	return string(signed)
}

func TestVerifyRefusesAlgorithmsOutsideAllowList(t *testing.T) {
	t.Parallel()
	iss := newIssuer(t)
	v, _ := newVerifier(t, iss, func(c *jwtauth.Config) { c.Algorithms = []string{"ES256"} })
	tok := mint(t, iss, jwtissuer.Claims{Subject: "u"})
	_, err := v.Verify(t.Context(), tok)
	requireUnauthorized(t, err, tok)
	require.Contains(t, err.Error(), "algorithm not allowed")
}

// A JWKS that (wrongly) contains a symmetric key must never let HS256
// through, even when HS256 is listed.
func TestVerifyRefusesSymmetricKeyInJWKS(t *testing.T) {
	t.Parallel()
	secret := []byte("0123456789abcdef0123456789abcdef")
	octKey, err := jwk.Import(secret)
	require.NoError(t, err)
	require.NoError(t, octKey.Set(jwk.KeyIDKey, "hmac"))
	require.NoError(t, octKey.Set(jwk.AlgorithmKey, jwa.HS256()))
	set := jwk.NewSet()
	require.NoError(t, set.AddKey(octKey))
	body, err := json.Marshal(set)
	require.NoError(t, err)
	srv := startJWKS(t, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write(body) }))

	v, err := jwtauth.New(t.Context(), jwtauth.Config{JWKSURL: srv.URL, Algorithms: []string{"EdDSA", "HS256"}})
	require.NoError(t, err)
	t.Cleanup(v.Close)
	require.True(t, v.Ready())

	tok := signRaw(t, jwa.HS256(), secret, "hmac", validPayload())
	_, err = v.Verify(t.Context(), tok)
	requireUnauthorized(t, err, tok)
}

// Keys without "alg" in the JWKS are matched by type and curve, and an RSA
// issuer works when RS256 is allowed.
func TestVerifyInfersAlgorithmFromKeyType(t *testing.T) {
	t.Parallel()
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	require.NoError(t, err)
	_, edKey, err := ed25519.GenerateKey(rand.Reader)
	require.NoError(t, err)
	set := jwk.NewSet()
	for kid, raw := range map[string]any{"rsa": rsaKey.Public(), "ed": edKey.Public()} {
		key, err := jwk.Import(raw)
		require.NoError(t, err)
		require.NoError(t, key.Set(jwk.KeyIDKey, kid))
		require.NoError(t, set.AddKey(key))
	}
	body, err := json.Marshal(set)
	require.NoError(t, err)
	srv := startJWKS(t, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write(body) }))
	v, err := jwtauth.New(t.Context(), jwtauth.Config{JWKSURL: srv.URL, Algorithms: []string{"EdDSA", "RS256"}})
	require.NoError(t, err)
	t.Cleanup(v.Close)

	sub, err := v.Verify(t.Context(), signRaw(t, jwa.RS256(), rsaKey, "rsa", validPayload()))
	require.NoError(t, err)
	require.Equal(t, "user-1", sub)
	sub, err = v.Verify(t.Context(), signRaw(t, jwa.EdDSA(), edKey, "ed", validPayload()))
	require.NoError(t, err)
	require.Equal(t, "user-1", sub)

	// Crossing families is refused even though both algorithms are allowed.
	_, err = v.Verify(t.Context(), signRaw(t, jwa.RS256(), rsaKey, "ed", validPayload()))
	require.ErrorIs(t, err, jwtauth.ErrUnauthorized)
	require.Contains(t, err.Error(), "algorithm does not match key")
}

func TestVerifyPicksUpRotatedKey(t *testing.T) {
	t.Parallel()
	iss := newIssuer(t)
	v, srv := newVerifier(t, iss, nil)
	oldToken := mint(t, iss, jwtissuer.Claims{Subject: "before"})
	before := srv.fetches.Load()

	_, err := iss.Rotate()
	require.NoError(t, err)
	sub, err := v.Verify(t.Context(), mint(t, iss, jwtissuer.Claims{Subject: "after"}))
	require.NoError(t, err)
	require.Equal(t, "after", sub)
	require.Equal(t, before+1, srv.fetches.Load(), "one refetch for the unknown kid")

	// Tokens from the previous key still verify: it is still published.
	sub, err = v.Verify(t.Context(), oldToken)
	require.NoError(t, err)
	require.Equal(t, "before", sub)
}
