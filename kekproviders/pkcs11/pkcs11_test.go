//go:build cgo

package pkcs11_test

import (
	"crypto/rand"
	"io"
	"testing"
	"time"

	cryptoki "github.com/miekg/pkcs11"
	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/kek"
	"github.com/keybroker/keybroker/kekproviders"
	"github.com/keybroker/keybroker/kekproviders/kektest"
	"github.com/keybroker/keybroker/kekproviders/localkek"
	"github.com/keybroker/keybroker/kekproviders/pkcs11"
	"github.com/keybroker/keybroker/kekproviders/pkcs11/softhsmtest"
)

const opTimeout = 30 * time.Second

// openURI opens uri through the one factory, as keybroker does, and
// closes the KEK when the test ends.
func openURI(t *testing.T, uri string) *pkcs11.KEK {
	t.Helper()
	k, err := kekproviders.Opener{}.Open(kektest.Context(t, opTimeout), uri)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, k.(io.Closer).Close()) })
	return k.(*pkcs11.KEK)
}

// openConfig opens a KEK from a Config and closes it when the test ends.
func openConfig(t *testing.T, cfg pkcs11.Config) *pkcs11.KEK {
	t.Helper()
	k, err := pkcs11.New(kektest.Context(t, opTimeout), cfg)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, k.Close()) })
	return k
}

func config(tok *softhsmtest.Token, object, id string) pkcs11.Config {
	return pkcs11.Config{
		ID:         id,
		ModulePath: tok.ModulePath,
		Selector:   pkcs11.Selector{TokenLabel: tok.Label, Object: object},
		PINSource:  "file:" + tok.PINFile,
	}
}

// tokenWithKey makes a token with one good key labelled "kek".
func tokenWithKey(t *testing.T) *softhsmtest.Token {
	t.Helper()
	tok := softhsmtest.NewToken(t)
	tok.GenerateKey(t, "kek")
	return tok
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

func TestConformance(t *testing.T) {
	t.Parallel()
	kektest.Run(t, func(t *testing.T) kektest.Subject {
		tok := softhsmtest.NewToken(t)
		tok.GenerateKey(t, "kek")
		tok.GenerateKey(t, "other")
		return kektest.Subject{
			KEK:   openURI(t, tok.URI("kek", "hsm-1")),
			Other: openURI(t, tok.URI("other", "hsm-other")),
			// Outage: the token is pulled out (SoftHSM: its files go). Its
			// key handles go stale, the token no longer answers: an
			// outage, not a refusal and not bad data.
			Outage: func(t *testing.T) (kek.KEK, func()) {
				tok := tokenWithKey(t)
				return openURI(t, tok.URI("kek", "hsm-outage")), func() { tok.Remove(t) }
			},
			// Deny: an HSM administrator takes the key's use away
			// (CKA_ENCRYPT and CKA_DECRYPT false).
			Deny: func(t *testing.T) (kek.KEK, func()) {
				tok := tokenWithKey(t)
				return openURI(t, tok.URI("kek", "hsm-deny")), func() {
					tok.SetKeyAttributes(t, "kek", cryptoki.NewAttribute(cryptoki.CKA_ENCRYPT, false), cryptoki.NewAttribute(cryptoki.CKA_DECRYPT, false))
				}
			},
			// Stalled: a token that takes a call and never answers. SoftHSM
			// cannot hang, so a hook holds every call inside the provider's
			// call goroutine, session taken, until the test ends; with one
			// session, a second call also waits for the first's session.
			Stalled: func(t *testing.T, _ string, timeout time.Duration) kek.KEK {
				tok := tokenWithKey(t)
				cfg := config(tok, "kek", "hsm-stalled")
				cfg.Timeout = timeout
				cfg.MaxSessions = 1
				k := openConfig(t, cfg)
				release := make(chan struct{})
				pkcs11.SetBeforeCall(k, func() { <-release })
				t.Cleanup(func() { close(release) }) // runs before Close
				return k
			},
		}
	})
}

// TestWrapFormat: a wrap is IV (12) ‖ ciphertext ‖ tag (16), AES-256-GCM
// with the canonical binding encoding as AAD — byte for byte what a local
// KEK over the same key makes and opens. The key is imported with a known
// value for this test only.
func TestWrapFormat(t *testing.T) {
	t.Parallel()
	tok := softhsmtest.NewToken(t)
	keyBytes := randomBytes(32)
	tok.ImportKey(t, "imported", keyBytes)
	hsm := openURI(t, tok.URI("imported", "hsm-format"))
	local, err := localkek.New("hsm-format", keyBytes, false)
	require.NoError(t, err)
	ctx := kektest.Context(t, opTimeout)
	b := kektest.Binding("alice", "hsm-format")

	plaintext := randomBytes(32)
	wrapped, err := hsm.Wrap(ctx, plaintext, b)
	require.NoError(t, err)
	require.Len(t, wrapped, 12+32+16)
	back, err := local.Unwrap(ctx, wrapped, b)
	require.NoError(t, err, "a local KEK over the same key opens the token's wrap")
	require.Equal(t, plaintext, back)

	localWrap, err := local.Wrap(ctx, plaintext, b)
	require.NoError(t, err)
	back, err = hsm.Unwrap(ctx, localWrap, b)
	require.NoError(t, err, "the token opens a local KEK's wrap")
	require.Equal(t, plaintext, back)
}

// TestExtractableKeyIsRefused: a key that can leave the token is no HSM
// key — whoever has the PIN reads it out (shown here) and every wrap with
// it. keybroker refuses to use one.
func TestExtractableKeyIsRefused(t *testing.T) {
	t.Parallel()
	tok := softhsmtest.NewToken(t)
	tok.GenerateKey(t, "extractable", cryptoki.NewAttribute(cryptoki.CKA_EXTRACTABLE, true), cryptoki.NewAttribute(cryptoki.CKA_SENSITIVE, false))
	tok.GenerateKey(t, "wrappable", cryptoki.NewAttribute(cryptoki.CKA_EXTRACTABLE, true))

	// The attack: with the PIN, the key's value is one call away.
	tok.Admin(t, func(ctx *cryptoki.Ctx, s cryptoki.SessionHandle) {
		require.NoError(t, ctx.FindObjectsInit(s, []*cryptoki.Attribute{cryptoki.NewAttribute(cryptoki.CKA_LABEL, "extractable")}))
		handles, _, err := ctx.FindObjects(s, 1)
		require.NoError(t, ctx.FindObjectsFinal(s))
		require.NoError(t, err)
		attrs, err := ctx.GetAttributeValue(s, handles[0], []*cryptoki.Attribute{cryptoki.NewAttribute(cryptoki.CKA_VALUE, nil)})
		require.NoError(t, err)
		require.Len(t, attrs[0].Value, 32, "the key's value read out of the token")
	})

	for _, label := range []string{"extractable", "wrappable"} {
		t.Run(label, func(t *testing.T) {
			_, err := kekproviders.Open(kektest.Context(t, opTimeout), tok.URI(label, "hsm-x"))
			require.ErrorContains(t, err, "can leave the token")
			require.ErrorContains(t, err, "CKA_EXTRACTABLE=false")
		})
	}
}

func TestUnfitKeysAreRefused(t *testing.T) {
	t.Parallel()
	tok := softhsmtest.NewToken(t)
	tok.GenerateKey(t, "aes128", cryptoki.NewAttribute(cryptoki.CKA_VALUE_LEN, 16))
	tok.GenerateKey(t, "generic", cryptoki.NewAttribute(cryptoki.CKA_KEY_TYPE, cryptoki.CKK_GENERIC_SECRET))
	tok.GenerateKey(t, "sign-only", cryptoki.NewAttribute(cryptoki.CKA_ENCRYPT, false), cryptoki.NewAttribute(cryptoki.CKA_DECRYPT, false))
	tok.GenerateKey(t, "twin")
	tok.GenerateKey(t, "twin")
	cases := []struct {
		object, want string
		denied       bool
	}{
		{"aes128", "AES-128", false},
		{"generic", "not an AES key", false},
		{"sign-only", "may not encrypt and decrypt", true},
		{"twin", "more than one secret key", false},
		{"missing", "no secret key", true},
	}
	for _, tc := range cases {
		t.Run(tc.object, func(t *testing.T) {
			_, err := kekproviders.Open(kektest.Context(t, opTimeout), tok.URI(tc.object, "hsm-x"))
			require.ErrorContains(t, err, tc.want)
			if tc.denied {
				kektest.RequireDenied(t, err)
			}
		})
	}
}

// TestKeyByID: the URI's path id= is the key's CKA_ID (percent-encoded
// bytes), not the KEK id of the query; it tells apart keys that share a
// label.
func TestKeyByID(t *testing.T) {
	t.Parallel()
	tok := softhsmtest.NewToken(t)
	tok.GenerateKey(t, "kek", cryptoki.NewAttribute(cryptoki.CKA_ID, []byte{0x01, 0xa2}))
	tok.GenerateKey(t, "kek", cryptoki.NewAttribute(cryptoki.CKA_ID, []byte{0x02}))
	uri := func(id string) string {
		return "pkcs11:token=" + tok.Label + ";object=kek;id=" + id + "?module-path=" + tok.ModulePath + "&pin-source=file:" + tok.PINFile + "&id=hsm-by-id"
	}
	first := openURI(t, uri("%01%A2"))
	second := openURI(t, uri("%02"))
	require.Equal(t, "hsm-by-id", first.ID())
	ctx := kektest.Context(t, opTimeout)
	b := kektest.Binding("alice", "hsm-by-id")
	wrapped, err := first.Wrap(ctx, randomBytes(32), b)
	require.NoError(t, err)
	_, err = second.Unwrap(ctx, wrapped, b)
	kektest.RequireBadData(t, err)
}

func TestTokenSelection(t *testing.T) {
	t.Parallel()
	tok := tokenWithKey(t)
	bySerial := "pkcs11:serial=" + tok.Serial + ";object=kek?module-path=" + tok.ModulePath + "&pin-source=file:" + tok.PINFile + "&id=hsm-serial"
	k := openURI(t, bySerial)
	require.NoError(t, k.Status(kektest.Context(t, opTimeout)))

	_, err := kekproviders.Open(kektest.Context(t, opTimeout), "pkcs11:token=no-such-token;object=kek?module-path="+tok.ModulePath+"&pin-source=file:"+tok.PINFile+"&id=hsm-x")
	require.ErrorContains(t, err, "no token matches")
	require.ErrorContains(t, err, tok.Label, "the error lists the tokens the module sees")
}
