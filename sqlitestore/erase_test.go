package sqlitestore_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/sqlitestore"
)

// TestErasedAndReplacedWrapsLeaveTheFile: with secure_delete, an erased
// vault and a wrap replaced by a rotation are not left readable in the
// database file's free space once the WAL is checkpointed (Close).
func TestErasedAndReplacedWrapsLeaveTheFile(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	s, err := sqlitestore.Open(t.Context(), sqlitestore.Config{Dir: dir})
	require.NoError(t, err)

	erased := "RVJBU0VELVdSQVAtZm9yLWdkcHItdGVzdA" + strings.Repeat("A", 30)
	replaced := "UkVQTEFDRUQtV1JBUC1ieS1yb3RhdGlvbg" + strings.Repeat("B", 30)
	for user, wrap := range map[string]string{"erased": erased, "rotated": replaced} {
		require.NoError(t, s.InUserTx(t.Context(), user, func(tx broker.Tx) error {
			_, err := tx.VaultInsert(t.Context(), &broker.Vault{UserID: user, WrappedMK: &wrap, WrapIV: ptr(""),
				FormatVersion: broker.FormatBound, KEKID: "k", CreatedAt: time.Now(), RecoveryFormatVersion: 1})
			return err
		}))
	}
	res, err := s.VaultErase(t.Context(), "erased", nil)
	require.NoError(t, err)
	require.True(t, res.VaultDeleted)
	require.NoError(t, s.InUserTx(t.Context(), "rotated", func(tx broker.Tx) error {
		v, err := tx.VaultGet(t.Context(), true)
		require.NoError(t, err)
		v.WrappedMK = ptr("bmV3LXdyYXA=")
		return tx.VaultUpdate(t.Context(), v)
	}))
	require.NoError(t, s.Close())

	_, err = os.Stat(filepath.Join(dir, sqlitestore.FileName+"-wal"))
	require.ErrorIs(t, err, os.ErrNotExist, "Close checkpoints and removes the WAL")
	raw, err := os.ReadFile(filepath.Join(dir, sqlitestore.FileName))
	require.NoError(t, err)
	// Not require.Contains: its failure message would print the whole file.
	require.False(t, strings.Contains(string(raw), erased[:34]), "an erased wrap must not linger in the file")
	require.False(t, strings.Contains(string(raw), replaced[:34]), "a replaced wrap must not linger in the file")
	require.True(t, strings.Contains(string(raw), "bmV3LXdyYXA="), "the live row is in the file: the search itself works")
}
