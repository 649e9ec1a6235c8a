package vaulttransit_test

import (
	"crypto/rand"
	"encoding/base64"
	"os"
	"path/filepath"
	"testing"
	"time"

	hcvault "github.com/hashicorp/vault/api"
	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/internal/testkit/kmstest/faketransit"
	"github.com/keybroker/keybroker/kek"
	"github.com/keybroker/keybroker/kekproviders"
	"github.com/keybroker/keybroker/kekproviders/kektest"
	"github.com/keybroker/keybroker/kekproviders/vaulttransit"
)

func noRetries() *int { n := 0; return &n }

// config is a token-authenticated config for key on srv.
func config(srv *faketransit.Server, key, id string) vaulttransit.Config {
	return vaulttransit.Config{
		ID:      id,
		Key:     key,
		Address: srv.URL,
		Timeout: 10 * time.Second,
		Auth:    vaulttransit.Auth{Token: srv.Token(faketransit.TokenOptions{})},
	}
}

func open(t *testing.T, cfg vaulttransit.Config) *vaulttransit.KEK {
	t.Helper()
	kek, err := vaulttransit.New(kektest.Context(t, 30*time.Second), cfg)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, kek.Close()) })
	return kek
}

func TestConformance(t *testing.T) {
	t.Parallel()
	srv := faketransit.Start(t)
	srv.CreateKey(t, "keybroker", true)
	srv.CreateKey(t, "other", true)
	kektest.Run(t, func(t *testing.T) kektest.Subject {
		return kektest.Subject{
			KEK:   open(t, config(srv, "keybroker", "vault-1")),
			Other: open(t, config(srv, "other", "vault-2")),
			Outage: func(t *testing.T) (kek.KEK, func()) {
				own := faketransit.Start(t)
				own.CreateKey(t, "keybroker", true)
				cfg := config(own, "keybroker", "vault-outage")
				cfg.MaxRetries = noRetries() // the client's retries wait a second each
				return open(t, cfg), own.Close
			},
			Deny: func(t *testing.T) (kek.KEK, func()) {
				cfg := config(srv, "keybroker", "vault-denied")
				return open(t, cfg), func() { srv.RevokeToken(cfg.Auth.Token) }
			},
			Stalled: func(t *testing.T, _ string, timeout time.Duration) kek.KEK {
				// New logs in and reads the key, so the backend must
				// answer until the KEK is open.
				own := faketransit.Start(t)
				own.CreateKey(t, "keybroker", true)
				cfg := config(own, "keybroker", "vault-stalled")
				cfg.Timeout = timeout
				k := open(t, cfg)
				own.Stall()
				return k
			},
			Rotate: func(t *testing.T) { srv.RotateKey(t, "keybroker") },
		}
	})
}

func randomKey() []byte {
	b := make([]byte, 32)
	rand.Read(b)
	return b
}

// TestRewrapMovesToTheLatestVersion: once min_decryption_version passes
// a wrap's version, only its rewrapped copy opens. (The conformance
// suite's KeyRotation checks KeyVersion, LatestVersion and Rewrap.)
func TestRewrapMovesToTheLatestVersion(t *testing.T) {
	t.Parallel()
	srv := faketransit.Start(t)
	srv.CreateKey(t, "keybroker", true)
	k := open(t, config(srv, "keybroker", "vault-1"))
	ctx := kektest.Context(t, 30*time.Second)
	b := kektest.Binding("alice", "vault-1")
	plaintext := randomKey()

	wrapped, err := k.Wrap(ctx, plaintext, b)
	require.NoError(t, err)
	require.Regexp(t, `^vault:v1:`, string(wrapped))
	srv.RotateKey(t, "keybroker")
	rewrapped, err := k.Rewrap(ctx, wrapped, b)
	require.NoError(t, err)
	require.Regexp(t, `^vault:v2:`, string(rewrapped))

	srv.SetMinDecryptionVersion(t, "keybroker", 2)
	back, err := k.Unwrap(ctx, rewrapped, b)
	require.NoError(t, err)
	require.Equal(t, plaintext, back)
	_, err = k.Unwrap(ctx, wrapped, b)
	require.ErrorIs(t, err, kek.ErrInvalidCiphertext)
}

// TestAssociatedDataCannotBeRewrapped shows why the binding travels as a
// derivation context: a ciphertext bound through associated_data does not
// survive transit/rewrap, which has no such parameter.
func TestAssociatedDataCannotBeRewrapped(t *testing.T) {
	t.Parallel()
	srv := faketransit.Start(t)
	srv.CreateKey(t, "plain", false)
	client, err := hcvault.NewClient(&hcvault.Config{Address: srv.URL})
	require.NoError(t, err)
	client.SetToken(srv.Token(faketransit.TokenOptions{}))
	ctx := kektest.Context(t, 30*time.Second)
	aad := base64.StdEncoding.EncodeToString([]byte("user_id=alice"))

	enc, err := client.Logical().WriteWithContext(ctx, "transit/encrypt/plain", map[string]any{
		"plaintext": base64.StdEncoding.EncodeToString(randomKey()), "associated_data": aad,
	})
	require.NoError(t, err)
	ciphertext := enc.Data["ciphertext"].(string)
	_, err = client.Logical().WriteWithContext(ctx, "transit/decrypt/plain", map[string]any{"ciphertext": ciphertext, "associated_data": aad})
	require.NoError(t, err)

	_, err = client.Logical().WriteWithContext(ctx, "transit/rewrap/plain", map[string]any{"ciphertext": ciphertext, "associated_data": aad})
	var respErr *hcvault.ResponseError
	require.ErrorAs(t, err, &respErr)
	require.Equal(t, 400, respErr.StatusCode)
}

func TestRefusesAKeyWithoutDerivation(t *testing.T) {
	t.Parallel()
	srv := faketransit.Start(t)
	srv.CreateKey(t, "plain", false)
	_, err := vaulttransit.New(kektest.Context(t, 30*time.Second), config(srv, "plain", "vault-1"))
	kektest.RequireDenied(t, err)
	require.ErrorContains(t, err, "derived=true")

	_, err = vaulttransit.New(kektest.Context(t, 30*time.Second), config(srv, "absent", "vault-1"))
	kektest.RequireDenied(t, err)
}

func TestSealedIsUnavailable(t *testing.T) {
	t.Parallel()
	srv := faketransit.Start(t)
	srv.CreateKey(t, "keybroker", true)
	cfg := config(srv, "keybroker", "vault-1")
	cfg.MaxRetries = noRetries()
	kek := open(t, cfg)
	ctx := kektest.Context(t, 30*time.Second)
	wrapped, err := kek.Wrap(ctx, randomKey(), nil)
	require.NoError(t, err)

	srv.Seal(true)
	_, err = kek.Unwrap(ctx, wrapped, nil)
	kektest.RequireUnavailable(t, err)
	kektest.RequireUnavailable(t, kek.Status(ctx))
	srv.Seal(false)
	_, err = kek.Unwrap(ctx, wrapped, nil)
	require.NoError(t, err)
}

// waitFor reads srv's events until want has been seen n times.
func waitFor(t *testing.T, srv *faketransit.Server, want string, n int) {
	t.Helper()
	deadline := time.After(20 * time.Second)
	for seen := 0; seen < n; {
		select {
		case e := <-srv.Events():
			if e == want {
				seen++
			}
		case <-deadline:
			t.Fatalf("saw %q %d of %d times", want, seen, n)
		}
	}
}

func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	require.NoError(t, os.WriteFile(path, []byte(content+"\n"), 0o600))
	return path
}

func TestTokenFileIsRenewed(t *testing.T) {
	t.Parallel()
	srv := faketransit.Start(t)
	srv.CreateKey(t, "keybroker", true)
	token := srv.Token(faketransit.TokenOptions{TTL: time.Second, Renewable: true})
	cfg := config(srv, "keybroker", "vault-1")
	cfg.Auth = vaulttransit.Auth{TokenFile: writeFile(t, "token", token)}
	kek := open(t, cfg)

	// The watcher renews at once and then every ~2/3 of the lease: by
	// the third renewal the first one-second lease has run out, so the
	// token only still works because it was renewed.
	waitFor(t, srv, "renew-self", 3)
	res := kekproviders.Check(kektest.Context(t, 30*time.Second), kek, nil)
	require.NoError(t, res.Err())
}

func TestAppRoleLogsInAgainWhenTheTokenRunsOut(t *testing.T) {
	t.Parallel()
	srv := faketransit.Start(t)
	srv.CreateKey(t, "keybroker", true)
	srv.AddAppRole("role-1", "secret-1", time.Second, false)
	cfg := config(srv, "keybroker", "vault-1")
	cfg.Auth = vaulttransit.Auth{Method: vaulttransit.AuthAppRole, RoleID: "role-1", SecretIDFile: writeFile(t, "secret-id", "secret-1")}
	kek := open(t, cfg)

	// The first login is New's; each token lives one second and cannot
	// be renewed, so by the third login the first token has expired.
	waitFor(t, srv, "login approle", 3)
	res := kekproviders.Check(kektest.Context(t, 30*time.Second), kek, nil)
	require.NoError(t, res.Err())

	cfg.Auth.SecretIDFile = writeFile(t, "secret-id", "wrong")
	_, err := vaulttransit.New(kektest.Context(t, 30*time.Second), cfg)
	kektest.RequireDenied(t, err)
}

func TestKubernetesLogin(t *testing.T) {
	t.Parallel()
	srv := faketransit.Start(t)
	srv.CreateKey(t, "keybroker", true)
	srv.AddKubernetesRole("keybroker", "eyJhbGciOiJSUzI1NiJ9.pod.sig", 0, false)
	cfg := config(srv, "keybroker", "vault-1")
	cfg.Auth = vaulttransit.Auth{Method: vaulttransit.AuthKubernetes, Role: "keybroker", JWTFile: writeFile(t, "jwt", "eyJhbGciOiJSUzI1NiJ9.pod.sig")}
	k := open(t, cfg)
	require.NoError(t, kekproviders.Check(kektest.Context(t, 30*time.Second), k, nil).Err())

	cfg.Auth.JWTFile = writeFile(t, "jwt", "eyJhbGciOiJSUzI1NiJ9.other.sig")
	_, err := vaulttransit.New(kektest.Context(t, 30*time.Second), cfg)
	kektest.RequireDenied(t, err)

	cfg.Auth.JWTFile = filepath.Join(t.TempDir(), "absent")
	_, err = vaulttransit.New(kektest.Context(t, 30*time.Second), cfg)
	require.ErrorContains(t, err, "service account token file")
	require.False(t, kek.Classify(err).Outage(), "a missing local file is not an outage: %v", err)
}

func TestNamespace(t *testing.T) {
	t.Parallel()
	srv := faketransit.Start(t)
	srv.CreateKey(t, "keybroker", true)
	srv.SetNamespace("team-a")
	cfg := config(srv, "keybroker", "vault-1")
	_, err := vaulttransit.New(kektest.Context(t, 30*time.Second), cfg)
	kektest.RequireDenied(t, err)

	cfg.Namespace = "team-a"
	kek := open(t, cfg)
	require.NoError(t, kekproviders.Check(kektest.Context(t, 30*time.Second), kek, nil).Err())
}

func TestNoToken(t *testing.T) {
	t.Setenv("VAULT_TOKEN", "")
	srv := faketransit.Start(t)
	srv.CreateKey(t, "keybroker", true)
	cfg := config(srv, "keybroker", "vault-1")
	cfg.Auth = vaulttransit.Auth{}
	_, err := vaulttransit.New(kektest.Context(t, 30*time.Second), cfg)
	require.ErrorContains(t, err, "no Vault token")

	t.Setenv("VAULT_TOKEN", srv.Token(faketransit.TokenOptions{}))
	open(t, cfg)
}

func TestKeyVersion(t *testing.T) {
	t.Parallel()
	for text, want := range map[string]int{"vault:v1:abc": 1, "vault:v12:abc": 12} {
		v, err := vaulttransit.KeyVersion([]byte(text))
		require.NoError(t, err)
		require.Equal(t, want, v)
	}
	for _, text := range []string{"", "vault:", "vault:v:abc", "vault:v0:abc", "vault:v1:", "vault:vx:abc", "v1:abc"} {
		_, err := vaulttransit.KeyVersion([]byte(text))
		require.ErrorIs(t, err, kek.ErrInvalidCiphertext, text)
	}
}

func TestConfigValidation(t *testing.T) {
	t.Parallel()
	for name, cfg := range map[string]vaulttransit.Config{
		"NoID":          {Key: "k"},
		"KeyPath":       {ID: "v", Key: "transit/keys/k"},
		"UnknownMethod": {ID: "v", Key: "k", Auth: vaulttransit.Auth{Method: "ldap"}},
		"AppRoleNoRole": {ID: "v", Key: "k", Auth: vaulttransit.Auth{Method: vaulttransit.AuthAppRole}},
		"K8sNoRole":     {ID: "v", Key: "k", Auth: vaulttransit.Auth{Method: vaulttransit.AuthKubernetes}},
		"TokenTwice":    {ID: "v", Key: "k", Auth: vaulttransit.Auth{Token: "a", TokenFile: "/b"}},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := vaulttransit.New(t.Context(), cfg)
			require.ErrorContains(t, err, "Config.")
		})
	}
}
