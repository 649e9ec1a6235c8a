package jwtissuer_test

import (
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v3/jwk"
	"github.com/lestrrat-go/jwx/v3/jwt"
	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/internal/jwtissuer"
)

const issuerName = "https://dev.keybroker.test"

// fetchJWKS gets the issuer's JWKS over real HTTP, as a verifier would.
func fetchJWKS(t *testing.T, iss *jwtissuer.Issuer) jwk.Set {
	t.Helper()
	srv := httptest.NewServer(iss.JWKSHandler())
	t.Cleanup(srv.Close)
	res, err := srv.Client().Get(srv.URL)
	require.NoError(t, err)
	defer res.Body.Close()
	require.Equal(t, http.StatusOK, res.StatusCode)
	require.Equal(t, "application/jwk-set+json", res.Header.Get("Content-Type"))
	body, err := io.ReadAll(res.Body)
	require.NoError(t, err)
	require.NotContains(t, string(body), `"d"`, "the JWKS must hold public keys only")
	set, err := jwk.Parse(body)
	require.NoError(t, err)
	return set
}

func header(t *testing.T, token string) map[string]any {
	t.Helper()
	raw, err := base64.RawURLEncoding.DecodeString(strings.Split(token, ".")[0])
	require.NoError(t, err)
	var h map[string]any
	require.NoError(t, json.Unmarshal(raw, &h))
	return h
}

func TestMintVerifiesAgainstJWKS(t *testing.T) {
	t.Parallel()
	iss, err := jwtissuer.New(issuerName)
	require.NoError(t, err)
	require.Equal(t, issuerName, iss.Issuer())

	token, err := iss.Mint(jwtissuer.Claims{Subject: "user-1", Audience: []string{"keybroker"}})
	require.NoError(t, err)
	require.Equal(t, map[string]any{"alg": "EdDSA", "typ": "JWT", "kid": iss.KeyID()}, header(t, token))

	tok, err := jwt.Parse([]byte(token), jwt.WithKeySet(fetchJWKS(t, iss)), jwt.WithIssuer(issuerName), jwt.WithAudience("keybroker"))
	require.NoError(t, err)
	sub, _ := tok.Subject()
	require.Equal(t, "user-1", sub)
	iat, _ := tok.IssuedAt()
	exp, _ := tok.Expiration()
	require.Equal(t, jwtissuer.DefaultTTL, exp.Sub(iat))
}

// TestMintDefaultAudienceIsTheIssuer: like Better Auth's JWT plugin, a
// token's aud defaults to the issuer's own name, whatever iss it was
// told to claim.
func TestMintDefaultAudienceIsTheIssuer(t *testing.T) {
	t.Parallel()
	iss, err := jwtissuer.New(issuerName)
	require.NoError(t, err)
	for _, c := range []jwtissuer.Claims{{Subject: "u"}, {Subject: "u", Issuer: "https://other.test"}} {
		token, err := iss.Mint(c)
		require.NoError(t, err)
		tok, err := jwt.ParseInsecure([]byte(token))
		require.NoError(t, err)
		aud, ok := tok.Audience()
		require.True(t, ok)
		require.Equal(t, []string{issuerName}, aud)
	}
}

func TestMintOptionalClaims(t *testing.T) {
	t.Parallel()
	iss, err := jwtissuer.New(issuerName)
	require.NoError(t, err)
	at := time.Unix(1_700_000_000, 0)
	token, err := iss.Mint(jwtissuer.Claims{
		Issuer:       "https://other.test",
		IssuedAt:     at,
		NotBefore:    at.Add(time.Minute),
		OmitExpiry:   true,
		OmitAudience: true,
		Extra:        map[string]any{"role": "admin"},
	})
	require.NoError(t, err)
	tok, err := jwt.ParseInsecure([]byte(token))
	require.NoError(t, err)
	_, hasSub := tok.Subject()
	_, hasExp := tok.Expiration()
	_, hasAud := tok.Audience()
	require.False(t, hasSub)
	require.False(t, hasExp)
	require.False(t, hasAud)
	gotIss, _ := tok.Issuer()
	require.Equal(t, "https://other.test", gotIss)
	nbf, _ := tok.NotBefore()
	require.True(t, at.Add(time.Minute).Equal(nbf))
	var role string
	require.NoError(t, tok.Get("role", &role))
	require.Equal(t, "admin", role)
}

func TestRotateKeepsOldKeysPublished(t *testing.T) {
	t.Parallel()
	iss, err := jwtissuer.New(issuerName)
	require.NoError(t, err)
	oldKid := iss.KeyID()
	oldToken, err := iss.MintSubject("u")
	require.NoError(t, err)

	newKid, err := iss.Rotate()
	require.NoError(t, err)
	require.NotEqual(t, oldKid, newKid)
	require.Equal(t, newKid, iss.KeyID())
	newToken, err := iss.MintSubject("u")
	require.NoError(t, err)
	require.Equal(t, newKid, header(t, newToken)["kid"])

	set := fetchJWKS(t, iss)
	require.Equal(t, 2, set.Len())
	for _, token := range []string{oldToken, newToken} {
		_, err := jwt.Parse([]byte(token), jwt.WithKeySet(set))
		require.NoError(t, err)
	}
}

func TestNewFromSeedIsDeterministic(t *testing.T) {
	t.Parallel()
	seed := make([]byte, ed25519.SeedSize)
	a, err := jwtissuer.NewFromSeed(issuerName, "dev", seed)
	require.NoError(t, err)
	b, err := jwtissuer.NewFromSeed(issuerName, "dev", seed)
	require.NoError(t, err)
	require.Equal(t, a.PublicKey(), b.PublicKey())

	_, err = jwtissuer.NewFromSeed(issuerName, "dev", seed[:31])
	require.Error(t, err)
	_, err = jwtissuer.NewFromSeed(issuerName, "", seed)
	require.Error(t, err)
	_, err = jwtissuer.NewFromSeed("", "dev", seed)
	require.Error(t, err)
	_, err = jwtissuer.New("")
	require.Error(t, err)
}

func TestSaveLoadRoundTrip(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "issuer.json")
	iss, err := jwtissuer.New(issuerName)
	require.NoError(t, err)
	_, err = iss.Rotate()
	require.NoError(t, err)
	require.NoError(t, iss.Save(path))

	info, err := os.Stat(path)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), info.Mode().Perm())

	loaded, err := jwtissuer.Load(path)
	require.NoError(t, err)
	require.Equal(t, issuerName, loaded.Issuer())
	require.Equal(t, iss.KeyID(), loaded.KeyID())
	require.Equal(t, iss.PublicKey(), loaded.PublicKey())

	// A token from the loaded issuer verifies against the original's JWKS.
	token, err := loaded.MintSubject("u")
	require.NoError(t, err)
	_, err = jwt.Parse([]byte(token), jwt.WithKeySet(fetchJWKS(t, iss)))
	require.NoError(t, err)

	// Saving again over an existing file replaces it.
	require.NoError(t, loaded.Save(path))
	entries, err := os.ReadDir(filepath.Dir(path))
	require.NoError(t, err)
	require.Len(t, entries, 1, "no temporary files left behind")
}

func TestLoadRefusesBadFiles(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	iss, err := jwtissuer.New(issuerName)
	require.NoError(t, err)
	good := filepath.Join(dir, "good.json")
	require.NoError(t, iss.Save(good))

	t.Run("TooOpenPermissions", func(t *testing.T) {
		path := filepath.Join(dir, "open.json")
		body, err := os.ReadFile(good)
		require.NoError(t, err)
		require.NoError(t, os.WriteFile(path, body, 0o600))
		require.NoError(t, os.Chmod(path, 0o644))
		_, err = jwtissuer.Load(path)
		require.ErrorContains(t, err, "too open")
	})
	t.Run("Missing", func(t *testing.T) {
		_, err := jwtissuer.Load(filepath.Join(dir, "absent.json"))
		require.ErrorIs(t, err, os.ErrNotExist)
	})
	for name, body := range map[string]string{
		"NotJSON":    "nope",
		"NoIssuer":   `{"jwks":{"keys":[]}}`,
		"NoKeys":     `{"issuer":"x","jwks":{"keys":[]}}`,
		"PublicOnly": `{"issuer":"x","jwks":` + mustPublicJWKS(t, iss) + `}`,
	} {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(dir, name+".json")
			require.NoError(t, os.WriteFile(path, []byte(body), 0o600))
			_, err := jwtissuer.Load(path)
			require.Error(t, err)
		})
	}
}

func mustPublicJWKS(t *testing.T, iss *jwtissuer.Issuer) string {
	t.Helper()
	body, err := iss.PublicJWKS()
	require.NoError(t, err)
	return string(body)
}

func TestLoadOrCreate(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "dev-issuer.json")
	first, err := jwtissuer.LoadOrCreate(path, issuerName)
	require.NoError(t, err)
	second, err := jwtissuer.LoadOrCreate(path, issuerName)
	require.NoError(t, err)
	require.Equal(t, first.KeyID(), second.KeyID(), "the persisted key survives a restart")

	_, err = jwtissuer.LoadOrCreate(path, "https://someone-else.test")
	require.ErrorContains(t, err, "someone-else")
}

func TestJWKSHandlerMethods(t *testing.T) {
	t.Parallel()
	iss, err := jwtissuer.New(issuerName)
	require.NoError(t, err)
	rec := httptest.NewRecorder()
	iss.JWKSHandler().ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/jwks", nil))
	require.Equal(t, http.StatusMethodNotAllowed, rec.Code)
	require.Equal(t, "GET, HEAD", rec.Header().Get("Allow"))
}
