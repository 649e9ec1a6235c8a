package main

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/internal/jwtissuer"
	"github.com/keybroker/keybroker/internal/testkit/kmstest/localkms"
	"github.com/keybroker/keybroker/internal/testkit/pgtest"
)

// TestServeWithTwoKMSRegions: $KEYBROKER_KEK lists two KMS keys, two
// local-kms instances standing for two regions. With one region down a
// server starts ready, serves every row, and /readyz and "kek status" say
// which KEK is down and how many data keys each opens. A configuration
// that drops every KEK wrapping the data keys is refused.
func TestServeWithTwoKMSRegions(t *testing.T) {
	t.Setenv("AWS_ACCESS_KEY_ID", "AKIDLOCALKMS")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "local-kms-secret")
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	eu, us := localkms.Start(t), localkms.Start(t)
	eu.CreateKey(t, "kb")
	us.CreateKey(t, "kb")
	uri := func(kms *localkms.Server, id string) string {
		return "awskms:///alias/kb?id=" + id + "&region=" + localkms.Region + "&max_attempts=1&timeout=2s&endpoint=" + url.QueryEscape(kms.URL)
	}
	issuer, err := jwtissuer.New("https://auth.test")
	require.NoError(t, err)
	jwks := httptest.NewServer(issuer.JWKSHandler())
	defer jwks.Close()
	role, _ := pgtest.NewPlainDatabase(t)
	env := map[string]string{
		"DATABASE_URL":           role.URL,
		"KEYBROKER_KEK":          uri(eu, "aws-eu") + " " + uri(us, "aws-us"),
		"KEYBROKER_JWKS_URL":     jwks.URL,
		"KEYBROKER_JWT_ISSUER":   "https://auth.test",
		"KEYBROKER_JWT_AUDIENCE": "https://auth.test",
		"KEYBROKER_ADDR":         "127.0.0.1:0",
	}
	tok := tokenFor(t, issuer, "alice")

	srv := startServe(t, env, "serve")
	status, body := fetch(t, srv.addr, http.MethodPost, "/init", tok)
	require.Equal(t, http.StatusOK, status)
	require.NoError(t, srv.stop())

	eu.Close()
	srv2 := startServe(t, env, "serve")
	status, again := fetch(t, srv2.addr, http.MethodGet, "/key", tok)
	require.Equal(t, http.StatusOK, status, "a server started with one region down serves")
	require.Equal(t, body["masterKey"], again["masterKey"])

	type check struct {
		Name, ID, Status string
		DataKeys         *struct{ Opens, Wraps, Total int }
	}
	var ready struct {
		Status string
		Checks []check
	}
	require.Eventually(t, func() bool {
		status, _, raw := call(t, http.MethodGet, "http://"+srv2.addr+"/readyz", nil)
		require.Equal(t, http.StatusOK, status, "ready: %s", raw)
		require.NoError(t, json.Unmarshal(raw, &ready))
		for _, c := range ready.Checks {
			if c.ID == "aws-eu" && c.DataKeys != nil && c.Status == "degraded" {
				return true
			}
		}
		return false
	}, 10*time.Second, 20*time.Millisecond)
	keks := map[string]check{}
	for _, c := range ready.Checks {
		if c.Name == "kek" {
			keks[c.ID] = c
		}
	}
	require.Equal(t, "degraded", keks["aws-eu"].Status)
	require.Equal(t, struct{ Opens, Wraps, Total int }{0, 1, 1}, *keks["aws-eu"].DataKeys)
	require.Equal(t, "ok", keks["aws-us"].Status)
	require.Equal(t, struct{ Opens, Wraps, Total int }{1, 1, 1}, *keks["aws-us"].DataKeys)

	var out bytes.Buffer
	require.NoError(t, run(t.Context(), []string{"kek", "status"}, envFunc(env), &out, io.Discard, nil))
	lines := map[string]string{}
	for _, line := range strings.Split(out.String(), "\n") {
		if f := strings.Fields(line); len(f) > 1 && strings.HasPrefix(f[0], "aws-") {
			lines[f[0]] = line
		}
	}
	require.Contains(t, out.String(), "data key wrapped by aws-eu, aws-us")
	require.Contains(t, lines["aws-eu"], "0 of 1 data keys (wraps 1)")
	require.Contains(t, lines["aws-eu"], "UNAVAILABLE")
	require.Contains(t, lines["aws-us"], "1 of 1 data keys (wraps 1)")
	require.Regexp(t, `1 of 1 data keys \(wraps 1\)\s+ok`, lines["aws-us"])
	require.NoError(t, srv2.stop())

	// A new KEK alone, neither region listed: refused, naming both.
	other := localkms.Start(t)
	other.CreateKey(t, "kb")
	env["KEYBROKER_KEK"] = uri(other, "aws-other")
	_, err = launchServe(t, env, &hooks{}, "serve")
	require.Error(t, err)
	require.Contains(t, err.Error(), `wrapped only by "aws-eu", "aws-us"`)
}
