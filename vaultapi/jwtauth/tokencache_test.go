package jwtauth_test

import (
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/internal/jwtissuer"
	"github.com/keybroker/keybroker/vaultapi/jwtauth"
)

// A cached token is only as good as the key set it was verified against:
// once a refetch withdraws its key, the token is checked in full again
// and refused.
func TestCachedTokenRefusedAfterItsKeyIsWithdrawn(t *testing.T) {
	t.Parallel()
	oldIssuer, newIssuerKey := newIssuer(t), newIssuer(t)
	var current atomic.Pointer[http.Handler]
	serveOld := oldIssuer.JWKSHandler()
	current.Store(&serveOld)
	srv := startJWKS(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { (*current.Load()).ServeHTTP(w, r) }))
	v, err := jwtauth.New(t.Context(), jwtauth.Config{
		JWKSURL: srv.URL, Issuer: testIssuer, Audience: testAudience, MinRefreshInterval: time.Millisecond,
	})
	require.NoError(t, err)
	t.Cleanup(v.Close)

	token := mint(t, oldIssuer, jwtissuer.Claims{Subject: "alice"})
	for range 2 { // the second one is answered from the cache
		sub, err := v.Verify(t.Context(), token)
		require.NoError(t, err)
		require.Equal(t, "alice", sub)
	}

	// The issuer drops the old key; a token under the new key makes the
	// verifier refetch.
	serveNew := newIssuerKey.JWKSHandler()
	current.Store(&serveNew)
	sub, err := v.Verify(t.Context(), mint(t, newIssuerKey, jwtissuer.Claims{Subject: "bob"}))
	require.NoError(t, err)
	require.Equal(t, "bob", sub)

	_, err = v.Verify(t.Context(), token)
	requireUnauthorized(t, err, token)
	require.Contains(t, err.Error(), "unknown key id")
}

// Failures are never cached: the same bad token fails every time, and a
// good one after it still verifies.
func TestCacheKeepsRefusingBadTokens(t *testing.T) {
	t.Parallel()
	iss := newIssuer(t)
	v, _ := newVerifier(t, iss, nil)
	good := mint(t, iss, jwtissuer.Claims{Subject: "alice"})
	forged := good[:len(good)-4] + "AAAA"
	for range 3 {
		_, err := v.Verify(t.Context(), forged)
		requireUnauthorized(t, err, forged)
		expired := mint(t, iss, jwtissuer.Claims{Subject: "alice", IssuedAt: time.Now().Add(-2 * time.Hour), Expiry: time.Now().Add(-time.Hour)})
		_, err = v.Verify(t.Context(), expired)
		requireUnauthorized(t, err, expired)
	}
	sub, err := v.Verify(t.Context(), good)
	require.NoError(t, err)
	require.Equal(t, "alice", sub)
}

func TestTokenCacheCanBeDisabled(t *testing.T) {
	t.Parallel()
	iss := newIssuer(t)
	v, _ := newVerifier(t, iss, func(c *jwtauth.Config) { c.TokenCacheSize = -1 })
	token := mint(t, iss, jwtissuer.Claims{Subject: "alice"})
	for range 2 {
		sub, err := v.Verify(t.Context(), token)
		require.NoError(t, err)
		require.Equal(t, "alice", sub)
	}
}
