package secretfile_test

import (
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/kekproviders/internal/secretfile"
)

func write(t *testing.T, content string, mode os.FileMode) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "secret")
	require.NoError(t, os.WriteFile(path, []byte(content), 0o600))
	require.NoError(t, os.Chmod(path, mode)) // whatever the umask
	return path
}

// TestReadRefusesLooseFiles: Read refuses a file group or others may read,
// naming what it holds and the chmod, and never quoting the content;
// ReadManaged reads the same file.
func TestReadRefusesLooseFiles(t *testing.T) {
	t.Parallel()
	if runtime.GOOS == "windows" {
		t.Skip("no POSIX permission bits")
	}
	path := write(t, "s3cret-value", 0o640)
	_, err := secretfile.Read(path, 64, "PIN")
	var modeErr *secretfile.ModeError
	require.ErrorAs(t, err, &modeErr)
	require.Equal(t, secretfile.ModeError{What: "PIN", Path: path, Mode: 0o640}, *modeErr)
	require.EqualError(t, err, path+" has mode 0640: a PIN file must be readable by its owner only, not by group or others: chmod 600 "+path)

	got, err := secretfile.ReadManaged(path, 64, "PIN")
	require.NoError(t, err)
	require.Equal(t, "s3cret-value", string(got))

	require.NoError(t, os.Chmod(path, 0o400))
	got, err = secretfile.Read(path, 64, "PIN")
	require.NoError(t, err)
	require.Equal(t, "s3cret-value", string(got))
}

// TestReadBoundsTheSize: a file one byte over the bound is refused without
// its content in the error; one at the bound is read whole.
func TestReadBoundsTheSize(t *testing.T) {
	t.Parallel()
	path := write(t, strings.Repeat("x", 17), 0o600)
	_, err := secretfile.Read(path, 16, "AppRole role id")
	require.EqualError(t, err, path+" is larger than 16 bytes; is it really an AppRole role id?")

	got, err := secretfile.Read(path, 17, "token")
	require.NoError(t, err)
	require.Len(t, got, 17)

	_, err = secretfile.ReadManaged(filepath.Join(t.TempDir(), "absent"), 16, "token")
	require.ErrorIs(t, err, fs.ErrNotExist)
}

// TestShellQuote: a path the shell would split or expand is quoted, one
// it reads as is stays bare.
func TestShellQuote(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		"/etc/keybroker/kek": "/etc/keybroker/kek",
		"/tmp/a b":           "'/tmp/a b'",
		"/tmp/it's":          `'/tmp/it'\''s'`,
		"/tmp/$HOME":         "'/tmp/$HOME'",
		"":                   "''",
	} {
		require.Equal(t, want, secretfile.ShellQuote(in), in)
	}
}
