package main

import (
	"context"
	"io"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestMalformedKEKURIIsNotRepeated: a KEK URI that does not parse may
// hold a token or a password; the startup error names the problem, never
// the URI, whichever path parses it first (with and without
// $KEYBROKER_KEK_ID).
func TestMalformedKEKURIIsNotRepeated(t *testing.T) {
	t.Parallel()
	const secret = "hvs.SUPERSECRETTOKEN"
	for name, env := range map[string]map[string]string{
		"WithKEKID":    {"KEYBROKER_KEK": "vault-transit://kb?token=" + secret + "\x01", "KEYBROKER_KEK_ID": "vt-1"},
		"WithoutKEKID": {"KEYBROKER_KEK": "vault-transit://kb?id=vt-1&token=" + secret + "\x01"},
		"Userinfo":     {"KEYBROKER_KEK": "vault-transit://us%zzer:" + secret + "@kb?id=vt-1"},
	} {
		t.Run(name, func(t *testing.T) {
			env["DATABASE_URL"] = "postgres://postgres@127.0.0.1:1/none?sslmode=disable"
			env["KEYBROKER_JWKS_URL"] = "http://127.0.0.1:1/jwks"
			env["KEYBROKER_JWT_ISSUER"], env["KEYBROKER_JWT_AUDIENCE"] = "https://auth.test", "https://auth.test"
			var errOut syncBuffer
			err := run(context.Background(), []string{"serve"}, envFunc(env), io.Discard, &errOut, nil)
			require.Error(t, err)
			require.NotContains(t, err.Error(), secret)
			require.NotContains(t, errOut.String(), secret)
		})
	}
}
