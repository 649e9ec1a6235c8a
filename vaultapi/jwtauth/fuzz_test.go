package jwtauth_test

import (
	"encoding/base64"
	"strings"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v3/jwa"
	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/internal/jwtissuer"
	"github.com/keybroker/keybroker/vaultapi/jwtauth"
)

// decodedParts decodes a compact token's three segments, or returns false.
func decodedParts(token string) ([3]string, bool) {
	var parts [3]string
	segments := strings.Split(token, ".")
	if len(segments) != 3 {
		return parts, false
	}
	for i, s := range segments {
		b, err := base64.RawURLEncoding.DecodeString(s)
		if err != nil {
			return parts, false
		}
		parts[i] = string(b)
	}
	return parts, true
}

// FuzzVerify checks that Verify never panics and never accepts a token
// unless it is, once decoded, byte for byte one the issuer really signed:
// the spare low bits of a segment's last base64url character are the only
// slack a mutation may get away with.
func FuzzVerify(f *testing.F) {
	iss := newIssuer(f)
	v, _ := newVerifier(f, iss, func(c *jwtauth.Config) {
		// Fuzzed kids must not turn into a refetch per input.
		c.MinRefreshInterval = time.Hour
		c.RefreshInterval = 2 * time.Hour
	})
	kid := iss.KeyID()
	now := time.Now()

	valid := map[[3]string]string{}
	addValid := func(token, sub string) {
		parts, ok := decodedParts(token)
		require.True(f, ok)
		valid[parts] = sub
		f.Add(token)
	}
	addValid(mint(f, iss, jwtissuer.Claims{Subject: "user-1"}), "user-1")
	addValid(mint(f, iss, jwtissuer.Claims{Subject: "usér-名前", Audience: []string{"other", testAudience}}), "usér-名前")

	f.Add("")
	f.Add("garbage")
	f.Add("a.b.c")
	f.Add("....")
	f.Add("eyJhbGciOiJub25lIn0.e30.")
	f.Add(b64(map[string]any{"alg": "none", "kid": kid}) + "." + b64(validPayload()) + ".")
	f.Add(signRaw(f, jwa.HS256(), []byte(iss.PublicKey()), kid, validPayload()))
	f.Add(signRaw(f, jwa.EdDSA(), ed25519Key(f), kid, validPayload()))
	f.Add(signRaw(f, jwa.EdDSA(), ed25519Key(f), "../../etc/passwd", validPayload()))
	f.Add(mint(f, iss, jwtissuer.Claims{Subject: "u", IssuedAt: now.Add(-2 * time.Hour), Expiry: now.Add(-time.Hour)}))
	f.Add(mint(f, iss, jwtissuer.Claims{Subject: "u\x00"}))
	f.Add(mint(f, iss, jwtissuer.Claims{Subject: "u", OmitExpiry: true}))
	f.Add(mint(f, iss, jwtissuer.Claims{}))

	f.Fuzz(func(t *testing.T, token string) {
		sub, err := v.Verify(t.Context(), token)
		if err != nil {
			require.ErrorIs(t, err, jwtauth.ErrUnauthorized)
			require.Empty(t, sub)
			if len(token) > 16 {
				require.NotContains(t, err.Error(), token)
			}
			return
		}
		parts, ok := decodedParts(token)
		require.True(t, ok, "accepted a token that is not three base64url segments")
		want, ok := valid[parts]
		require.True(t, ok, "accepted a token the issuer never signed")
		require.Equal(t, want, sub)
	})
}
