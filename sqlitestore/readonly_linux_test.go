package sqlitestore_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/keybroker/keybroker/sqlitestore"
)

// fsImmutableFL is FS_IMMUTABLE_FL of linux/fs.h (chattr +i).
const fsImmutableFL = 0x10

// makeReadOnly takes write access to dir away for real, even from root:
// permission bits do not stop root, so as root the directory is also made
// immutable (chattr +i), which does. Both are undone when the test ends.
func makeReadOnly(t *testing.T, dir string) {
	t.Helper()
	require.NoError(t, os.Chmod(dir, 0o500))
	t.Cleanup(func() { _ = os.Chmod(dir, 0o700) })
	if os.Geteuid() != 0 {
		return
	}
	f, err := os.Open(dir)
	require.NoError(t, err)
	defer f.Close()
	flags, err := unix.IoctlGetUint32(int(f.Fd()), unix.FS_IOC_GETFLAGS)
	if err == nil {
		err = unix.IoctlSetPointerInt(int(f.Fd()), unix.FS_IOC_SETFLAGS, int(flags|fsImmutableFL))
	}
	if err != nil {
		// Without CAP_LINUX_IMMUTABLE or on a file system without
		// attributes there is no way to deny root; say so loudly.
		t.Skipf("SKIPPED: running as root and cannot make %s immutable (%v): no read-only data directory can be created here", dir, err)
	}
	t.Cleanup(func() {
		g, err := os.Open(dir)
		if err != nil {
			return
		}
		defer g.Close()
		_ = unix.IoctlSetPointerInt(int(g.Fd()), unix.FS_IOC_SETFLAGS, int(flags&^fsImmutableFL))
	})
	// Prove the condition holds before relying on it.
	probe := filepath.Join(dir, "probe")
	err = os.WriteFile(probe, nil, 0o600)
	require.Error(t, err, "the directory must really be read-only")
}

func TestOpenRefusesReadOnlyDataDir(t *testing.T) {
	t.Parallel()
	t.Run("Empty", func(t *testing.T) {
		t.Parallel()
		dir := filepath.Join(t.TempDir(), "data")
		require.NoError(t, os.Mkdir(dir, 0o700))
		makeReadOnly(t, dir)
		_, err := open(t, dir)
		requireOneLineRefusal(t, err, "data directory "+dir+" is not writable (", "give this user write access to it, or point --data-dir elsewhere")
		entries, err := os.ReadDir(dir)
		require.NoError(t, err)
		require.Empty(t, entries)
	})
	t.Run("WithExistingDatabase", func(t *testing.T) {
		t.Parallel()
		dir := filepath.Join(t.TempDir(), "data")
		s, err := sqlitestore.Open(t.Context(), sqlitestore.Config{Dir: dir})
		require.NoError(t, err)
		require.NoError(t, s.Close())
		before := snapshot(t, dir)
		makeReadOnly(t, dir)

		_, err = open(t, dir)
		requireOneLineRefusal(t, err, "data directory "+dir+" is not writable (")
		require.Equal(t, before, snapshot(t, dir))
	})
}
