package systemd_test

import (
	"crypto/rand"
	"encoding/base64"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/kekproviders/kektest"
	"github.com/keybroker/keybroker/kekproviders/systemd"
)

// writeCredential writes a fresh key as systemd would expose it.
func writeCredential(t *testing.T, dir, name string, base64Text bool) {
	t.Helper()
	key := make([]byte, 32)
	rand.Read(key)
	content := key
	if base64Text {
		content = []byte(base64.StdEncoding.EncodeToString(key) + "\n")
	}
	require.NoError(t, os.WriteFile(filepath.Join(dir, name), content, 0o400))
}

func TestConformance(t *testing.T) {
	t.Parallel()
	kektest.Run(t, func(t *testing.T) kektest.Subject {
		dir := t.TempDir()
		writeCredential(t, dir, "keybroker-kek", true)
		writeCredential(t, dir, "other-kek", false)
		kek, err := systemd.Open(systemd.Config{ID: "sd-1", Name: "keybroker-kek", Directory: dir})
		require.NoError(t, err)
		other, err := systemd.Open(systemd.Config{ID: "sd-2", Name: "other-kek", Directory: dir})
		require.NoError(t, err)
		return kektest.Subject{KEK: kek, Other: other}
	})
}

func TestNotUnderSystemd(t *testing.T) {
	t.Parallel()
	_, err := systemd.Open(systemd.Config{ID: "sd-1", Name: "keybroker-kek"})
	require.ErrorContains(t, err, "$CREDENTIALS_DIRECTORY is not set")
	require.ErrorContains(t, err, "LoadCredential=keybroker-kek:")
}

func TestMissingCredential(t *testing.T) {
	t.Parallel()
	_, err := systemd.Open(systemd.Config{ID: "sd-1", Name: "keybroker-kek", Directory: t.TempDir()})
	require.ErrorContains(t, err, `no credential "keybroker-kek"`)
	require.ErrorContains(t, err, "LoadCredentialEncrypted=keybroker-kek:")
}

func TestNameCannotLeaveTheDirectory(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	for _, name := range []string{"", "..", "../etc/passwd", "a/b"} {
		_, err := systemd.Open(systemd.Config{ID: "sd-1", Name: name, Directory: dir})
		require.Error(t, err, name)
	}
}

func TestMalformedCredential(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "short"), []byte("c2hvcnQ="), 0o400))
	_, err := systemd.Open(systemd.Config{ID: "sd-1", Name: "short", Directory: dir})
	require.ErrorContains(t, err, "decodes to 5 bytes")

	require.NoError(t, os.WriteFile(filepath.Join(dir, "zero"), make([]byte, 32), 0o400))
	_, err = systemd.Open(systemd.Config{ID: "sd-1", Name: "zero", Directory: dir})
	require.ErrorContains(t, err, "32 zero bytes")
}
