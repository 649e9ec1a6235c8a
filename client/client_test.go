package client_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/client"
	"github.com/keybroker/keybroker/internal/jwtissuer"
	"github.com/keybroker/keybroker/internal/testkit/apitest"
	"github.com/keybroker/keybroker/vaultapi"
)

// server is a real keybroker (internal/testkit/apitest): the SQLite store in a
// temp dir, a local KEK, an EdDSA issuer whose JWKS the verifier fetches
// over HTTP, the vault API behind httptest.
type server struct {
	url    string
	issuer *jwtissuer.Issuer
}

func newServer(t *testing.T) *server {
	t.Helper()
	srv := apitest.Start(t, apitest.Options{})
	return &server{url: srv.URL, issuer: srv.Issuer}
}

// clientFor returns a client of user whose token source mints a fresh
// token per request, as a service with expiring tokens would.
func (s *server) clientFor(t *testing.T, user string) *client.Client {
	t.Helper()
	c, err := client.New(client.Config{
		BaseURL: s.url,
		TokenSource: func(context.Context) (string, error) {
			return s.issuer.Mint(jwtissuer.Claims{Subject: user})
		},
	})
	require.NoError(t, err)
	return c
}

// requireAPIError asserts err is the server's answer with this status and
// code, matched both ways a caller would.
func requireAPIError(t *testing.T, err error, status int, code client.ErrorCode) {
	t.Helper()
	require.ErrorIs(t, err, code)
	var apiErr *client.APIError
	require.ErrorAs(t, err, &apiErr)
	require.Equal(t, status, apiErr.Status)
	require.Equal(t, string(code), apiErr.Code)
	require.NotEmpty(t, apiErr.Message)
}

func TestBasePathMatchesServer(t *testing.T) {
	t.Parallel()
	require.Equal(t, vaultapi.BasePath, client.BasePath)
}

// TestWholeStory walks a user through every route, as the demo does.
func TestWholeStory(t *testing.T) {
	t.Parallel()
	srv := newServer(t)
	c := srv.clientFor(t, "alice")
	ctx := t.Context()

	st, err := c.Status(ctx)
	require.NoError(t, err)
	require.Equal(t, client.Status{}, *st, "no vault yet: same shape, all false")

	_, err = c.Key(ctx)
	requireAPIError(t, err, http.StatusNotFound, client.ErrVaultNotInitialised)

	// init → key
	initKey, err := c.Init(ctx)
	require.NoError(t, err)
	require.Len(t, initKey.MasterKey, client.MasterKeySize)
	require.Equal(t, broker.FormatBound, initKey.FormatVersion)
	require.Equal(t, "env-v1", initKey.KEKID)
	require.False(t, initKey.RequiresRecoveryCode)
	again, err := c.Init(ctx)
	require.NoError(t, err)
	require.Equal(t, initKey.MasterKey, again.MasterKey, "init is idempotent")
	fetched, err := c.Key(ctx)
	require.NoError(t, err)
	require.Equal(t, initKey.MasterKey, fetched.MasterKey)
	mk := initKey.MasterKey

	// zero-knowledge needs a recovery wrap first
	err = c.EnableZeroKnowledge(ctx)
	requireAPIError(t, err, http.StatusBadRequest, client.ErrRecoveryWrapMissing)

	// recovery wrap, as the browser builds it
	secret, code := client.NewRecoveryCode()
	wrappedMK, iv, err := client.WrapWithRecovery(mk, secret)
	require.NoError(t, err)
	before := time.Now().Add(-time.Second)
	require.NoError(t, c.SetRecoveryWrap(ctx, mk, wrappedMK, iv))
	st, err = c.Status(ctx)
	require.NoError(t, err)
	require.True(t, st.VaultExists)
	require.True(t, st.HasRecoveryWrap)
	require.False(t, st.ZeroKnowledge)
	require.NotNil(t, st.RecoverySetAt)
	require.WithinRange(t, *st.RecoverySetAt, before, time.Now().Add(time.Second))

	// enable zero-knowledge (idempotent)
	require.NoError(t, c.EnableZeroKnowledge(ctx))
	require.NoError(t, c.EnableZeroKnowledge(ctx))

	// the key is now the recovery blob
	zk, err := c.Key(ctx)
	require.NoError(t, err)
	require.True(t, zk.RequiresRecoveryCode)
	require.Nil(t, zk.MasterKey)
	require.Empty(t, zk.KEKID)
	require.Equal(t, wrappedMK, zk.RecoveryWrappedMK)
	require.Equal(t, iv, zk.RecoveryIV)
	zkInit, err := c.Init(ctx)
	require.NoError(t, err)
	require.True(t, zkInit.RequiresRecoveryCode, "init in zero-knowledge mode returns the blob too")

	// unlock with the code, as typed by a person
	_, wrongCode := client.NewRecoveryCode()
	_, err = zk.Unlock(wrongCode)
	require.ErrorIs(t, err, client.ErrWrongRecoveryCode)
	unlocked, err := zk.Unlock(strings.ToLower(strings.ReplaceAll(code, "-", " ")))
	require.NoError(t, err)
	require.Equal(t, mk, unlocked)

	// what zero-knowledge forbids
	err = c.ClearRecoveryWrap(ctx)
	requireAPIError(t, err, http.StatusConflict, client.ErrZKActive)
	_, err = c.Rotate(ctx)
	requireAPIError(t, err, http.StatusConflict, client.ErrZKRotateForbidden)
	wrongKey := make([]byte, client.MasterKeySize)
	_, _ = rand.Read(wrongKey)
	err = c.DisableZeroKnowledge(ctx, wrongKey)
	requireAPIError(t, err, http.StatusConflict, client.ErrMasterKeyMismatch)

	// disable zero-knowledge with the unlocked key
	require.NoError(t, c.DisableZeroKnowledge(ctx, unlocked))
	back, err := c.Key(ctx)
	require.NoError(t, err)
	require.False(t, back.RequiresRecoveryCode)
	require.Equal(t, mk, back.MasterKey, "the server wraps the same key again")

	// rotate: a new key, and the recovery wrap of the old one is gone
	rotated, err := c.Rotate(ctx)
	require.NoError(t, err)
	require.Len(t, rotated.MasterKey, client.MasterKeySize)
	require.NotEqual(t, mk, rotated.MasterKey)
	latest, err := c.Key(ctx)
	require.NoError(t, err)
	require.Equal(t, rotated.MasterKey, latest.MasterKey)

	st, err = c.Status(ctx)
	require.NoError(t, err)
	require.Equal(t, client.Status{VaultExists: true}, *st, "rotate clears the recovery wrap")

	// a fresh recovery code for the new key, then cleared
	code2, err := c.SetRecoveryCode(ctx, rotated.MasterKey)
	require.NoError(t, err)
	require.NotEqual(t, code, code2)
	require.NoError(t, c.EnableZeroKnowledge(ctx))
	zk2, err := c.Key(ctx)
	require.NoError(t, err)
	unlocked2, err := zk2.Unlock(code2)
	require.NoError(t, err)
	require.Equal(t, rotated.MasterKey, unlocked2)
	require.NoError(t, c.DisableZeroKnowledge(ctx, unlocked2))
	require.NoError(t, c.ClearRecoveryWrap(ctx))
	st, err = c.Status(ctx)
	require.NoError(t, err)
	require.False(t, st.HasRecoveryWrap)
	require.Nil(t, st.RecoverySetAt)
}

func TestTypedErrors(t *testing.T) {
	t.Parallel()
	srv := newServer(t)
	ctx := t.Context()

	t.Run("NotInitialised", func(t *testing.T) {
		t.Parallel()
		c := srv.clientFor(t, "fresh-user")
		secret, _ := client.NewRecoveryCode()
		wrapped, iv, err := client.WrapWithRecovery(bytes.Repeat([]byte{7}, 32), secret)
		require.NoError(t, err)
		requireAPIError(t, c.SetRecoveryWrap(ctx, bytes.Repeat([]byte{7}, 32), wrapped, iv), http.StatusNotFound, client.ErrVaultNotInitialised)
		requireAPIError(t, c.ClearRecoveryWrap(ctx), http.StatusNotFound, client.ErrVaultNotInitialised)
		requireAPIError(t, c.EnableZeroKnowledge(ctx), http.StatusNotFound, client.ErrVaultNotInitialised)
		requireAPIError(t, c.DisableZeroKnowledge(ctx, bytes.Repeat([]byte{7}, 32)), http.StatusNotFound, client.ErrVaultNotInitialised)
	})
	t.Run("BadLengths", func(t *testing.T) {
		t.Parallel()
		c := srv.clientFor(t, "bad-lengths")
		key, err := c.Init(ctx)
		require.NoError(t, err)
		mk := key.MasterKey
		// The server is the authority on lengths; the client passes them on.
		requireAPIError(t, c.SetRecoveryWrap(ctx, mk, make([]byte, 47), make([]byte, 12)), http.StatusBadRequest, client.ErrBadRequest)
		requireAPIError(t, c.SetRecoveryWrap(ctx, mk, make([]byte, 48), make([]byte, 16)), http.StatusBadRequest, client.ErrBadRequest)
		requireAPIError(t, c.SetRecoveryWrap(ctx, mk, nil, nil), http.StatusBadRequest, client.ErrBadRequest)
		// The proof is the client's to make: without a 32-byte key there
		// is none, and nothing is sent.
		err = c.SetRecoveryWrap(ctx, mk[:31], make([]byte, 48), make([]byte, 12))
		require.ErrorContains(t, err, "a master key is 32 bytes")
		var apiErr *client.APIError
		require.False(t, errors.As(err, &apiErr))
		requireAPIError(t, c.DisableZeroKnowledge(ctx, make([]byte, 31)), http.StatusBadRequest, client.ErrBadRequest)
	})
	t.Run("Unauthorized", func(t *testing.T) {
		t.Parallel()
		c, err := client.New(client.Config{BaseURL: srv.url, Token: "not-a-jwt"})
		require.NoError(t, err)
		_, err = c.Status(ctx)
		requireAPIError(t, err, http.StatusUnauthorized, client.ErrUnauthorized)
		require.NotContains(t, err.Error(), "not-a-jwt", "tokens never appear in errors")

		other, err := jwtissuer.New("https://auth.test") // same iss, unknown key
		require.NoError(t, err)
		forged, err := other.Mint(jwtissuer.Claims{Subject: "alice"})
		require.NoError(t, err)
		c, err = client.New(client.Config{BaseURL: srv.url, Token: forged})
		require.NoError(t, err)
		_, err = c.Key(ctx)
		requireAPIError(t, err, http.StatusUnauthorized, client.ErrUnauthorized)
	})
	t.Run("WrongBaseURL", func(t *testing.T) {
		t.Parallel()
		// A prefix the server does not serve: its 404 is NOT_FOUND, not
		// VAULT_NOT_INITIALISED, so a misconfiguration is not mistaken
		// for a user without a vault.
		c, err := client.New(client.Config{BaseURL: srv.url + "/elsewhere", Token: "x"})
		require.NoError(t, err)
		_, err = c.Key(ctx)
		requireAPIError(t, err, http.StatusNotFound, client.ErrNotFound)
		require.NotErrorIs(t, err, client.ErrVaultNotInitialised)
	})
	t.Run("TokenSourceFails", func(t *testing.T) {
		t.Parallel()
		errNoSession := errors.New("no session")
		c, err := client.New(client.Config{BaseURL: srv.url, TokenSource: func(context.Context) (string, error) {
			return "", errNoSession
		}})
		require.NoError(t, err)
		_, err = c.Init(ctx)
		require.ErrorIs(t, err, errNoSession)
		var apiErr *client.APIError
		require.False(t, errors.As(err, &apiErr), "nothing was sent")
	})
	t.Run("UsersAreIsolated", func(t *testing.T) {
		t.Parallel()
		a, b := srv.clientFor(t, "iso-a"), srv.clientFor(t, "iso-b")
		ka, err := a.Init(ctx)
		require.NoError(t, err)
		_, err = b.Key(ctx)
		requireAPIError(t, err, http.StatusNotFound, client.ErrVaultNotInitialised)
		kb, err := b.Init(ctx)
		require.NoError(t, err)
		require.NotEqual(t, ka.MasterKey, kb.MasterKey)
	})
}

// TestNonKeybrokerAnswers: what a proxy or a broken server may send in
// keybroker's place still becomes a typed error, never a panic or a key.
func TestNonKeybrokerAnswers(t *testing.T) {
	t.Parallel()
	proxy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case client.BasePath + "/status":
			w.Header().Set("Retry-After", "7")
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = io.WriteString(w, `{"error":"the key store is unavailable; retry later","code":"STORE_UNAVAILABLE"}`)
		case client.BasePath + "/key":
			w.WriteHeader(http.StatusBadGateway)
			_, _ = io.WriteString(w, "<html>502 Bad Gateway</html>")
		case client.BasePath + "/init":
			_, _ = io.WriteString(w, `{"masterKey":"c2hvcnQ=","formatVersion":2,"kekId":"env-v1"}`)
		case client.BasePath + "/rotate":
			_, _ = io.WriteString(w, `{"masterKey": "QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUE=", trailing garbage`)
		}
	}))
	t.Cleanup(proxy.Close)
	c, err := client.New(client.Config{BaseURL: proxy.URL + "/", Token: "t"})
	require.NoError(t, err)
	ctx := t.Context()

	_, err = c.Status(ctx)
	requireAPIError(t, err, http.StatusServiceUnavailable, client.ErrStoreUnavailable)
	var apiErr *client.APIError
	require.ErrorAs(t, err, &apiErr)
	require.True(t, apiErr.Temporary())
	require.Equal(t, 7*time.Second, apiErr.RetryAfter)

	_, err = c.Key(ctx)
	require.ErrorAs(t, err, &apiErr)
	require.Equal(t, http.StatusBadGateway, apiErr.Status)
	require.Empty(t, apiErr.Code)
	require.Equal(t, "keybroker: HTTP 502: Bad Gateway", err.Error())
	require.False(t, apiErr.Temporary())

	_, err = c.Init(ctx)
	require.ErrorContains(t, err, "masterKey is 5 bytes, want 32")

	_, err = c.Rotate(ctx)
	require.ErrorContains(t, err, "not the expected JSON")
	require.NotContains(t, err.Error(), "QUFB", "a malformed answer is not quoted: it may hold a key")
}

func TestConfigValidation(t *testing.T) {
	t.Parallel()
	for name, tc := range map[string]struct {
		cfg client.Config
		msg string
	}{
		"NoURL":       {client.Config{Token: "t"}, "Config.BaseURL is required"},
		"NoScheme":    {client.Config{BaseURL: "localhost:3001", Token: "t"}, "http or https URL"},
		"FTP":         {client.Config{BaseURL: "ftp://host", Token: "t"}, "http or https URL"},
		"Credentials": {client.Config{BaseURL: "http://u:p@host", Token: "t"}, "must not carry credentials"},
		"Query":       {client.Config{BaseURL: "http://host/?x=1", Token: "t"}, "must not carry credentials, a query"},
		"NoToken":     {client.Config{BaseURL: "http://host"}, "TokenSource or Config.Token is required"},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			_, err := client.New(tc.cfg)
			require.ErrorContains(t, err, tc.msg)
			require.NotContains(t, err.Error(), ":p@", "credentials are not echoed")
		})
	}
}

// TestCancelledRequest: the caller's context ends a request in flight.
func TestCancelledRequest(t *testing.T) {
	t.Parallel()
	arrived := make(chan struct{})
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(arrived)
		<-r.Context().Done() // answers only when the client goes away
	}))
	t.Cleanup(slow.Close)
	c, err := client.New(client.Config{BaseURL: slow.URL, Token: "t"})
	require.NoError(t, err)

	ctx, cancel := context.WithCancel(t.Context())
	go func() {
		<-arrived
		cancel()
	}()
	_, err = c.Key(ctx)
	require.ErrorIs(t, err, context.Canceled)
	var apiErr *client.APIError
	require.False(t, errors.As(err, &apiErr))
}

// TestZeroKnowledgeRecoveryCodeIsProven: the client proves the key by
// itself, so replacing the recovery code of a zero-knowledge vault works
// with the key and is refused with another.
func TestZeroKnowledgeRecoveryCodeIsProven(t *testing.T) {
	t.Parallel()
	srv := newServer(t)
	c := srv.clientFor(t, "proven")
	ctx := t.Context()
	key, err := c.Init(ctx)
	require.NoError(t, err)
	_, err = c.ReplaceRecoveryCode(ctx, "")
	require.ErrorIs(t, err, client.ErrNotZeroKnowledge)
	code, err := c.SetRecoveryCode(ctx, key.MasterKey)
	require.NoError(t, err)
	require.NoError(t, c.EnableZeroKnowledge(ctx))

	other := bytes.Repeat([]byte{7}, client.MasterKeySize)
	_, err = c.SetRecoveryCode(ctx, other)
	requireAPIError(t, err, http.StatusForbidden, client.ErrKeyProofMismatch)
	_, err = c.ReplaceRecoveryCode(ctx, strings.Repeat("0", 64))
	require.ErrorIs(t, err, client.ErrWrongRecoveryCode)

	code2, err := c.ReplaceRecoveryCode(ctx, code)
	require.NoError(t, err)
	zk, err := c.Key(ctx)
	require.NoError(t, err)
	mk, err := zk.Unlock(code2)
	require.NoError(t, err)
	require.Equal(t, key.MasterKey, mk)
	_, err = zk.Unlock(code)
	require.ErrorIs(t, err, client.ErrWrongRecoveryCode, "the old code's wrap is replaced")
}

func TestKeyProofKnownAnswer(t *testing.T) {
	t.Parallel()
	mk := make([]byte, client.MasterKeySize)
	for i := range mk {
		mk[i] = byte(i)
	}
	// HMAC-SHA256(key = 00 01 … 1f, "keybroker key possession proof v1").
	require.Equal(t, "52062bf27dacbea8bca68e2f4e46036f5ceb742a6f3a8cbbd22ebf9e0a2103bd", hex.EncodeToString(client.KeyProof(mk)))
	require.Len(t, client.KeyProof(mk), client.KeyProofSize)
}
