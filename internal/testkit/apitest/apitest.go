// Package apitest starts a real keybroker vault API for tests: a store of
// the caller's, a local KEK, an EdDSA issuer whose JWKS the verifier
// fetches over loopback HTTP, and the vault API behind httptest. Tests of
// vaultapi, client and others share it instead of wiring the same pieces
// each time.
package apitest

import (
	"context"
	"crypto/rand"
	"io"
	"log/slog"
	"net/http/httptest"
	"testing"

	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/internal/jwtissuer"
	"github.com/keybroker/keybroker/kekproviders/localkek"
	"github.com/keybroker/keybroker/sqlitestore"
	"github.com/keybroker/keybroker/vaultapi"
	"github.com/keybroker/keybroker/vaultapi/jwtauth"
)

// DefaultIssuer is the iss (and aud) of the tokens the harness mints and
// accepts.
const DefaultIssuer = "https://auth.test"

// Options configure Start. Every field is optional.
type Options struct {
	// Store holds the vaults; default the embedded store in a temp dir.
	Store broker.Store
	// Keyring wraps the keys; default a random local KEK with id env-v1.
	Keyring *broker.Keyring
	// Issuer signs tokens; default a fresh one named DefaultIssuer. Pass
	// one to share tokens between servers.
	Issuer *jwtissuer.Issuer
	// Logger receives the server's logs; default discarded.
	Logger *slog.Logger
	// Verifier adjusts the verifier's config (JWKSURL, Issuer and Audience
	// are set).
	Verifier func(*jwtauth.Config)
	// API adjusts the vault API's config (Service, Verifier and Logger
	// are set).
	API func(*vaultapi.Config)
	// Broker adjusts the domain service's config (Store, Keyring and
	// Logger are set), e.g. to observe group commits.
	Broker func(*broker.Config)
}

// Server is a running vault API.
type Server struct {
	URL     string // the httptest server's base URL
	JWKSURL string // where the verifier fetches the issuer's keys
	Issuer  *jwtissuer.Issuer
	Service *broker.Service
	API     *vaultapi.API
	Store   broker.Store
}

// Start starts a server that stops when the test ends.
func Start(t testing.TB, opts Options) *Server {
	t.Helper()
	ctx := context.Background()
	if opts.Store == nil {
		store, err := sqlitestore.Open(ctx, sqlitestore.Config{Dir: t.TempDir()})
		must(t, err)
		t.Cleanup(func() { _ = store.Close() })
		opts.Store = store
	}
	if opts.Keyring == nil {
		opts.Keyring = NewKeyring(t, "env-v1")
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.NewJSONHandler(io.Discard, nil))
	}
	if opts.Issuer == nil {
		issuer, err := jwtissuer.New(DefaultIssuer)
		must(t, err)
		opts.Issuer = issuer
	}
	bcfg := broker.Config{Store: opts.Store, Keyring: opts.Keyring, Logger: opts.Logger}
	if opts.Broker != nil {
		opts.Broker(&bcfg)
	}
	svc, err := broker.New(ctx, bcfg)
	must(t, err)

	jwks := httptest.NewServer(opts.Issuer.JWKSHandler())
	t.Cleanup(jwks.Close)
	// Pinned as production must be: the issuer's tokens carry its name in
	// iss and, by default, aud.
	vcfg := jwtauth.Config{JWKSURL: jwks.URL, Issuer: opts.Issuer.Issuer(), Audience: opts.Issuer.Issuer()}
	if opts.Verifier != nil {
		opts.Verifier(&vcfg)
	}
	verifier, err := jwtauth.New(ctx, vcfg)
	must(t, err)
	t.Cleanup(verifier.Close)

	acfg := vaultapi.Config{Service: svc, Verifier: verifier, Logger: opts.Logger}
	if opts.API != nil {
		opts.API(&acfg)
	}
	api, err := vaultapi.New(acfg)
	must(t, err)
	srv := httptest.NewServer(api.Handler())
	t.Cleanup(srv.Close)
	return &Server{URL: srv.URL, JWKSURL: jwks.URL, Issuer: opts.Issuer, Service: svc, API: api, Store: opts.Store}
}

// NewKeyring returns a keyring of one random local KEK with the given id.
func NewKeyring(t testing.TB, id string) *broker.Keyring {
	t.Helper()
	key := make([]byte, localkek.KeySize)
	rand.Read(key)
	kek, err := localkek.New(id, key, false)
	must(t, err)
	ring, err := broker.NewKeyring(kek)
	must(t, err)
	return ring
}

// Token mints a token for user.
func (s *Server) Token(t testing.TB, user string) string {
	t.Helper()
	tok, err := s.Issuer.Mint(jwtissuer.Claims{Subject: user})
	must(t, err)
	return tok
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
