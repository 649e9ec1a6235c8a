package jwtauth

import (
	"net/http"
	"net/url"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestCheckRedirectRefusesDowngradeAndLoops(t *testing.T) {
	t.Parallel()
	req := func(raw string) *http.Request {
		u, err := url.Parse(raw)
		require.NoError(t, err)
		return &http.Request{URL: u}
	}
	origin := []*http.Request{req("https://auth.example.test/jwks")}

	require.NoError(t, checkRedirect(req("https://cdn.example.test/jwks"), origin))
	require.Error(t, checkRedirect(req("http://auth.example.test/jwks"), origin))
	require.Error(t, checkRedirect(req("https://auth.example.test/jwks"), append(origin, origin[0], origin[0])))
	// Plain-http origins (dev mode on localhost) may redirect within http.
	require.NoError(t, checkRedirect(req("http://127.0.0.1:2/jwks"), []*http.Request{req("http://127.0.0.1:1/jwks")}))
}
