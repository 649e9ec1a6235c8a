//go:build cgo

package pkcs11_test

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
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

// TestPINFileModeIsChecked: a PIN file other local users may read hands
// them the HSM; it is refused with the chmod that fixes it, as a file://
// KEK is.
func TestPINFileModeIsChecked(t *testing.T) {
	t.Parallel()
	tok := tokenWithKey(t)
	require.NoError(t, os.Chmod(tok.PINFile, 0o644))
	_, err := kekproviders.Open(kektest.Context(t, opTimeout), tok.URI("kek", "hsm-mode"))
	var modeErr *pkcs11.PINModeError
	require.ErrorAs(t, err, &modeErr)
	require.ErrorContains(t, err, "chmod 600 "+tok.PINFile)
	require.NotContains(t, err.Error(), softhsmtest.UserPIN)

	require.NoError(t, os.Chmod(tok.PINFile, 0o400))
	openURI(t, tok.URI("kek", "hsm-mode"))
}

// TestPINFromSystemdCredential: pin-source=systemd-credential:NAME reads
// $CREDENTIALS_DIRECTORY/NAME, whose mode systemd answers for.
func TestPINFromSystemdCredential(t *testing.T) {
	t.Parallel()
	tok := tokenWithKey(t)
	credDir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(credDir, "hsm-pin"), []byte(softhsmtest.UserPIN), 0o440))
	opener := kekproviders.Opener{Getenv: func(name string) string {
		if name == "CREDENTIALS_DIRECTORY" {
			return credDir
		}
		return ""
	}}
	uri := "pkcs11:token=" + tok.Label + ";object=kek?module-path=" + tok.ModulePath + "&pin-source=systemd-credential:hsm-pin&id=hsm-cred&timeout=5s&max_sessions=2"
	k, err := opener.Open(kektest.Context(t, opTimeout), uri)
	require.NoError(t, err)
	defer k.(io.Closer).Close()
	require.NoError(t, kekproviders.Check(kektest.Context(t, opTimeout), k, nil).Err())

	_, err = opener.Open(kektest.Context(t, opTimeout), "pkcs11:token="+tok.Label+";object=kek?module-path="+tok.ModulePath+"&pin-source=systemd-credential:missing&id=hsm-cred")
	require.ErrorContains(t, err, "LoadCredential=missing:")
}

// TestWrongPINIsDenied: the token refuses the PIN at open; that is a
// refusal an operator fixes, and it is tried once.
func TestWrongPINIsDenied(t *testing.T) {
	t.Parallel()
	tok := tokenWithKey(t)
	require.NoError(t, os.WriteFile(tok.PINFile, []byte("not-the-pin\n"), 0o600))
	_, err := kekproviders.Open(kektest.Context(t, opTimeout), tok.URI("kek", "hsm-pin"))
	kektest.RequireDenied(t, err)
	require.ErrorContains(t, err, "refused the PIN")
	require.NotContains(t, err.Error(), "not-the-pin")
}

// TestRefusedPINIsNeverRetried: the PIN changes inside the HSM while
// keybroker runs, and the token drops keybroker's sessions. Every wrong
// try counts towards locking the token (for every application using it),
// so after the first refusal keybroker reports denied without trying the
// PIN again, however many calls come.
func TestRefusedPINIsNeverRetried(t *testing.T) {
	t.Parallel()
	tok := tokenWithKey(t)
	k := openURI(t, tok.URI("kek", "hsm-relogin"))
	ctx := kektest.Context(t, opTimeout)
	require.NoError(t, k.Status(ctx))
	logins := pkcs11.Logins(k)
	require.Equal(t, 1, logins)

	tok.SetUserPIN(t, softhsmtest.UserPIN, "a-new-pin-4321")
	tok.CloseAllSessions(t)
	for range 5 {
		_, err := k.Wrap(ctx, randomBytes(32), kektest.Binding("alice", k.ID()))
		kektest.RequireDenied(t, err)
		require.ErrorContains(t, err, "refused the PIN")
	}
	require.ErrorContains(t, k.Status(ctx), "refused the PIN")
	require.Equal(t, logins+1, pkcs11.Logins(k), "the refused PIN was tried more than once")
}

// TestLostSessionsAreReopened: a token reset (or a reconnect to a network
// HSM) closes every session and the login with them; the next call opens
// a new session, logs in again and succeeds.
func TestLostSessionsAreReopened(t *testing.T) {
	t.Parallel()
	tok := tokenWithKey(t)
	k := openURI(t, tok.URI("kek", "hsm-reset"))
	ctx := kektest.Context(t, opTimeout)
	b := kektest.Binding("alice", k.ID())
	wrapped, err := k.Wrap(ctx, randomBytes(32), b)
	require.NoError(t, err)
	tok.CloseAllSessions(t)
	_, err = k.Unwrap(ctx, wrapped, b)
	require.NoError(t, err)
	require.Equal(t, 2, pkcs11.Logins(k), "logged in again on the new session")
}

// TestDeletedKeyIsDenied: the key deleted from a token that is still
// there is a refusal (an operator must act), not an outage; a key made
// again under the same label is found again, and the old wraps do not
// open under it.
func TestDeletedKeyIsDenied(t *testing.T) {
	t.Parallel()
	tok := tokenWithKey(t)
	k := openURI(t, tok.URI("kek", "hsm-deleted"))
	ctx := kektest.Context(t, opTimeout)
	b := kektest.Binding("alice", k.ID())
	wrapped, err := k.Wrap(ctx, randomBytes(32), b)
	require.NoError(t, err)

	tok.DeleteKey(t, "kek")
	_, err = k.Unwrap(ctx, wrapped, b)
	kektest.RequireDenied(t, err)
	require.ErrorContains(t, err, "no secret key")
	kektest.RequireDenied(t, k.Status(ctx))

	tok.GenerateKey(t, "kek")
	_, err = k.Unwrap(ctx, wrapped, b)
	kektest.RequireBadData(t, err)
	fresh, err := k.Wrap(ctx, randomBytes(32), b)
	require.NoError(t, err)
	_, err = k.Unwrap(ctx, fresh, b)
	require.NoError(t, err)
}

// TestSessionsAreBounded: many concurrent calls share at most
// MaxSessions sessions, and Close closes them all.
func TestSessionsAreBounded(t *testing.T) {
	t.Parallel()
	tok := tokenWithKey(t)
	cfg := config(tok, "kek", "hsm-bounded")
	cfg.MaxSessions = 2
	k, err := pkcs11.New(kektest.Context(t, opTimeout), cfg)
	require.NoError(t, err)
	var most atomic.Int32
	pkcs11.SetBeforeCall(k, func() {
		n := int32(pkcs11.Sessions(k))
		for {
			m := most.Load()
			if n <= m || most.CompareAndSwap(m, n) {
				return
			}
		}
	})
	ctx := kektest.Context(t, opTimeout)
	var wg sync.WaitGroup
	errs := make(chan error, 32)
	for i := range 32 {
		wg.Go(func() {
			b := kektest.Binding(fmt.Sprintf("user-%d", i), k.ID())
			wrapped, err := k.Wrap(ctx, randomBytes(32), b)
			if err == nil {
				_, err = k.Unwrap(ctx, wrapped, b)
			}
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	require.Positive(t, most.Load())
	require.LessOrEqual(t, most.Load(), int32(2), "sessions open at once")
	require.NoError(t, k.Close())
	require.Zero(t, pkcs11.Sessions(k), "sessions left open after Close")
}

// TestCloseWaitsAndRefuses: Close waits for a call in the token, then
// every call fails with ErrClosed.
func TestCloseWaitsAndRefuses(t *testing.T) {
	t.Parallel()
	tok := tokenWithKey(t)
	k, err := pkcs11.New(kektest.Context(t, opTimeout), config(tok, "kek", "hsm-close"))
	require.NoError(t, err)
	entered := make(chan struct{})
	release := make(chan struct{})
	var once sync.Once
	pkcs11.SetBeforeCall(k, func() {
		once.Do(func() { close(entered) })
		<-release
	})
	ctx := kektest.Context(t, opTimeout)
	wrapDone := make(chan error, 1)
	go func() {
		_, err := k.Wrap(ctx, randomBytes(32), nil)
		wrapDone <- err
	}()
	<-entered
	closed := make(chan error, 1)
	go func() { closed <- k.Close() }()
	select {
	case <-closed:
		t.Fatal("Close returned while a call was in the token")
	case err := <-wrapDone:
		t.Fatalf("the held call returned: %v", err)
	default:
	}
	close(release)
	require.NoError(t, <-wrapDone)
	require.NoError(t, <-closed)
	_, err = k.Wrap(ctx, randomBytes(32), nil)
	require.ErrorIs(t, err, pkcs11.ErrClosed)
}

// TestModuleIsShared: KEKs over one module share its one initialization;
// the last to close finalizes it, and it can be loaded again. The module
// is a copy of SoftHSM's, loaded by no one else in this process.
func TestModuleIsShared(t *testing.T) {
	t.Parallel()
	tok := tokenWithKey(t)
	src, err := os.ReadFile(tok.ModulePath)
	require.NoError(t, err)
	dir, err := filepath.EvalSymlinks(t.TempDir())
	require.NoError(t, err)
	copyPath := filepath.Join(dir, "libsofthsm2-copy.so")
	require.NoError(t, os.WriteFile(copyPath, src, 0o755))

	open := func(id string) *pkcs11.KEK {
		cfg := config(tok, "kek", id)
		cfg.ModulePath = copyPath
		k, err := pkcs11.New(kektest.Context(t, opTimeout), cfg)
		require.NoError(t, err)
		return k
	}
	ctx := kektest.Context(t, opTimeout)
	first, second := open("hsm-a"), open("hsm-b")
	require.Equal(t, 2, pkcs11.ModuleRefs(copyPath))
	require.NoError(t, first.Close())
	require.Equal(t, 1, pkcs11.ModuleRefs(copyPath))
	require.NoError(t, second.Status(ctx), "the other KEK still works")
	require.NoError(t, second.Close())
	require.Equal(t, 0, pkcs11.ModuleRefs(copyPath), "finalized and unloaded")

	again := open("hsm-c")
	defer again.Close()
	require.NoError(t, kekproviders.Check(ctx, again, nil).Err())
}

// TestWritableModuleIsRefused: a module file others may write would run
// their code inside keybroker, next to every key.
func TestWritableModuleIsRefused(t *testing.T) {
	t.Parallel()
	tok := tokenWithKey(t)
	src, err := os.ReadFile(tok.ModulePath)
	require.NoError(t, err)
	copyPath := filepath.Join(t.TempDir(), "libsofthsm2.so")
	require.NoError(t, os.WriteFile(copyPath, src, 0o755))
	require.NoError(t, os.Chmod(copyPath, 0o777))
	cfg := config(tok, "kek", "hsm-writable")
	cfg.ModulePath = copyPath
	_, err = pkcs11.New(kektest.Context(t, opTimeout), cfg)
	require.ErrorContains(t, err, "chmod go-w")
	require.Equal(t, 0, pkcs11.ModuleRefs(copyPath), "never loaded")
}

// TestUnwrapDoesNotTrustGeneralErrors: SoftHSM reports a GCM tag mismatch
// as CKR_GENERAL_ERROR, the code of a failing token. A wrap that does not
// open is bad data only while the self-test wrap still opens; once the
// token itself fails, the same answer is an outage.
func TestUnwrapDoesNotTrustGeneralErrors(t *testing.T) {
	t.Parallel()
	tok := tokenWithKey(t)
	k := openURI(t, tok.URI("kek", "hsm-general"))
	ctx := kektest.Context(t, opTimeout)
	b := kektest.Binding("alice", k.ID())
	wrapped, err := k.Wrap(ctx, randomBytes(32), b)
	require.NoError(t, err)
	tampered := bytes.Clone(wrapped)
	tampered[len(tampered)-1] ^= 1
	_, err = k.Unwrap(ctx, tampered, b)
	kektest.RequireBadData(t, err)

	tok.Remove(t)
	_, err = k.Unwrap(ctx, tampered, b)
	kektest.RequireUnavailable(t, err)
}
