package jwtauth_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"fmt"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v3/jwa"
	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/internal/jwtissuer"
	"github.com/keybroker/keybroker/vaultapi/jwtauth"
)

// The JWKS through bursts, rotations, outages and mistakes, and the verifier's life cycle.

// verifyBurst verifies every token concurrently and returns the errors.
func verifyBurst(ctx context.Context, v *jwtauth.Verifier, tokens []string) []error {
	errs := make([]error, len(tokens))
	var wg sync.WaitGroup
	for i, tok := range tokens {
		wg.Go(func() { _, errs[i] = v.Verify(ctx, tok) })
	}
	wg.Wait()
	return errs
}

func strangerTokens(t *testing.T, n int) []string {
	t.Helper()
	_, stranger, err := ed25519.GenerateKey(rand.Reader)
	require.NoError(t, err)
	tokens := make([]string, n)
	for i := range tokens {
		tokens[i] = signRaw(t, jwa.EdDSA(), stranger, fmt.Sprintf("unknown-%d", i), validPayload())
	}
	return tokens
}

func TestUnknownKidBurstCausesOneFetch(t *testing.T) {
	t.Parallel()
	iss := newIssuer(t)
	v, srv := newVerifier(t, iss, func(c *jwtauth.Config) {
		c.MinRefreshInterval = time.Hour
		c.RefreshInterval = 2 * time.Hour
	})
	tokens := strangerTokens(t, 50)

	before := srv.fetches.Load()
	for _, err := range verifyBurst(t.Context(), v, tokens) {
		require.ErrorIs(t, err, jwtauth.ErrUnauthorized)
	}
	require.Equal(t, int64(1), srv.fetches.Load()-before, "50 unknown kids, one shared refetch")

	// Inside the rate-limit window, further unknown kids fetch nothing.
	for _, err := range verifyBurst(t.Context(), v, tokens) {
		require.ErrorIs(t, err, jwtauth.ErrUnauthorized)
	}
	require.Equal(t, int64(1), srv.fetches.Load()-before)
}

func TestRotatedKeyBurstSharesOneFetch(t *testing.T) {
	t.Parallel()
	iss := newIssuer(t)
	v, srv := newVerifier(t, iss, func(c *jwtauth.Config) {
		c.MinRefreshInterval = time.Hour
		c.RefreshInterval = 2 * time.Hour
	})
	_, err := iss.Rotate()
	require.NoError(t, err)
	tokens := make([]string, 50)
	for i := range tokens {
		tokens[i] = mint(t, iss, jwtissuer.Claims{Subject: fmt.Sprintf("user-%d", i)})
	}

	before := srv.fetches.Load()
	for _, err := range verifyBurst(t.Context(), v, tokens) {
		require.NoError(t, err, "every caller sees the refetched key")
	}
	require.Equal(t, int64(1), srv.fetches.Load()-before)
}

func TestJWKSDownAtStart(t *testing.T) {
	t.Parallel()
	iss := newIssuer(t)
	srv := startJWKS(t, iss.JWKSHandler())
	url := srv.URL
	srv.Close() // nothing listens there any more

	v, err := jwtauth.New(t.Context(), jwtauth.Config{JWKSURL: url, MinRefreshInterval: time.Millisecond})
	require.NoError(t, err, "an unreachable JWKS must not make New fail")
	t.Cleanup(v.Close)
	require.False(t, v.Ready())
	ready, fetchErr := v.Status()
	require.False(t, ready)
	require.Error(t, fetchErr)

	tok := mint(t, iss, jwtissuer.Claims{Subject: "u"})
	_, err = v.Verify(t.Context(), tok)
	requireUnauthorized(t, err, tok)
	require.Contains(t, err.Error(), "signing keys not loaded")
}

func TestJWKSRecoversAfterFailingAtStart(t *testing.T) {
	t.Parallel()
	iss := newIssuer(t)
	srv := startJWKS(t, iss.JWKSHandler())
	srv.down.Store(true)

	v, err := jwtauth.New(t.Context(), jwtauth.Config{JWKSURL: srv.URL, MinRefreshInterval: 5 * time.Millisecond})
	require.NoError(t, err)
	t.Cleanup(v.Close)
	require.False(t, v.Ready())
	tok := mint(t, iss, jwtissuer.Claims{Subject: "u"})
	_, err = v.Verify(t.Context(), tok)
	require.ErrorIs(t, err, jwtauth.ErrUnauthorized)

	// No token traffic needed: the verifier retries on its own until the
	// key set loads (a not-ready pod receives no requests to trigger it).
	srv.down.Store(false)
	require.Eventually(t, v.Ready, 5*time.Second, 5*time.Millisecond)
	ready, fetchErr := v.Status()
	require.True(t, ready)
	require.NoError(t, fetchErr)
	sub, err := v.Verify(t.Context(), tok)
	require.NoError(t, err)
	require.Equal(t, "u", sub)
}

func TestJWKSOutageKeepsLastGoodKeys(t *testing.T) {
	t.Parallel()
	iss := newIssuer(t)
	v, srv := newVerifier(t, iss, nil)
	tok := mint(t, iss, jwtissuer.Claims{Subject: "u"})
	srv.Close()

	// An unknown kid forces a refetch, which fails...
	_, stranger, err := ed25519.GenerateKey(rand.Reader)
	require.NoError(t, err)
	_, err = v.Verify(t.Context(), signRaw(t, jwa.EdDSA(), stranger, "nope", validPayload()))
	require.ErrorIs(t, err, jwtauth.ErrUnauthorized)
	ready, fetchErr := v.Status()
	require.True(t, ready)
	require.Error(t, fetchErr)

	// ...but the cached keys keep working.
	sub, err := v.Verify(t.Context(), tok)
	require.NoError(t, err)
	require.Equal(t, "u", sub)
}

func TestVerifyAfterClose(t *testing.T) {
	t.Parallel()
	iss := newIssuer(t)
	v, _ := newVerifier(t, iss, nil)
	v.Close()
	v.Close() // idempotent
	require.False(t, v.Ready())
	_, err := v.Verify(t.Context(), mint(t, iss, jwtissuer.Claims{Subject: "u"}))
	require.ErrorIs(t, err, jwtauth.ErrUnauthorized)
}

func TestNewWithCanceledContext(t *testing.T) {
	t.Parallel()
	iss := newIssuer(t)
	srv := startJWKS(t, iss.JWKSHandler())
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	_, err := jwtauth.New(ctx, jwtauth.Config{JWKSURL: srv.URL})
	require.ErrorIs(t, err, context.Canceled)
}

func TestNewValidatesConfig(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name  string
		cfg   jwtauth.Config
		field string
	}{
		{"MissingJWKSURL", jwtauth.Config{}, "JWKSURL"},
		{"RelativeJWKSURL", jwtauth.Config{JWKSURL: "/jwks"}, "JWKSURL"},
		{"FileJWKSURL", jwtauth.Config{JWKSURL: "file:///etc/jwks.json"}, "JWKSURL"},
		{"UnknownAlgorithm", jwtauth.Config{JWKSURL: "http://127.0.0.1:1/", Algorithms: []string{"EdDSa"}}, "Algorithms"},
		{"OnlyRefusedAlgorithms", jwtauth.Config{JWKSURL: "http://127.0.0.1:1/", Algorithms: []string{"none", "HS256"}}, "Algorithms"},
		{"NegativeLeeway", jwtauth.Config{JWKSURL: "http://127.0.0.1:1/", Leeway: -time.Second}, "Leeway"},
		{"HugeLeeway", jwtauth.Config{JWKSURL: "http://127.0.0.1:1/", Leeway: time.Hour}, "Leeway"},
		{"TinyMaxLifetime", jwtauth.Config{JWKSURL: "http://127.0.0.1:1/", MaxLifetime: time.Second}, "MaxLifetime"},
		{"NegativeMaxLifetime", jwtauth.Config{JWKSURL: "http://127.0.0.1:1/", MaxLifetime: -time.Hour}, "MaxLifetime"},
		{"MinAboveRefresh", jwtauth.Config{JWKSURL: "http://127.0.0.1:1/", MinRefreshInterval: time.Hour, RefreshInterval: time.Minute}, "MinRefreshInterval"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := jwtauth.New(t.Context(), tc.cfg)
			require.Error(t, err)
			require.Contains(t, err.Error(), tc.field)
		})
	}
}

// TestJWKSMistakeRefusesToStart: a JWKS URL whose server answers 4xx (a
// typo in the path, a route behind a login) or with something that is
// not a key set (the issuer's web page) is a mistake no wait fixes: New
// refuses, naming the URL and the status, instead of starting a server
// that answers 401 to everyone. An outage (5xx, 429, nothing listening)
// starts not ready, as before.
func TestJWKSMistakeRefusesToStart(t *testing.T) {
	t.Parallel()
	for name, c := range map[string]struct {
		status int
		body   string
		says   string
	}{
		"NotFound":     {http.StatusNotFound, "not found", "answered 404 Not Found"},
		"Unauthorized": {http.StatusUnauthorized, "login first", "answered 401 Unauthorized"},
		"WebPage":      {http.StatusOK, "<html>welcome</html>", "answered 200 OK with something that is not a JWK set"},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			srv := startJWKS(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.WriteHeader(c.status)
				_, _ = w.Write([]byte(c.body))
			}))
			_, err := jwtauth.New(t.Context(), jwtauth.Config{JWKSURL: srv.URL + "/api/auth/jwk", MinRefreshInterval: time.Millisecond})
			var jwksErr *jwtauth.JWKSError
			require.ErrorAs(t, err, &jwksErr)
			require.ErrorContains(t, err, c.says)
			require.ErrorContains(t, err, srv.URL+"/api/auth/jwk", "the message names the URL")
			require.Equal(t, c.status, jwksErr.Status)
		})
	}
	for name, status := range map[string]int{"Unavailable": http.StatusServiceUnavailable, "BadGateway": http.StatusBadGateway,
		"TooManyRequests": http.StatusTooManyRequests} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			srv := startJWKS(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(status) }))
			v, err := jwtauth.New(t.Context(), jwtauth.Config{JWKSURL: srv.URL, MinRefreshInterval: time.Millisecond})
			require.NoError(t, err, "an outage starts not ready")
			t.Cleanup(v.Close)
			require.False(t, v.Ready())
		})
	}
}
