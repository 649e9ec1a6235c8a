//go:build cgo

package pkcs11_test

import (
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/kekproviders"
	"github.com/keybroker/keybroker/kekproviders/kektest"
	"github.com/keybroker/keybroker/kekproviders/pkcs11"
	"github.com/keybroker/keybroker/kekproviders/pkcs11/softhsmtest"
)

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
