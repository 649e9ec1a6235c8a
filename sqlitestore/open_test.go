package sqlitestore_test

import (
	"context"
	"crypto/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/sqlitestore"
)

// open is sqlitestore.Open with the test's context.
func open(t *testing.T, dir string) (*sqlitestore.Store, error) {
	t.Helper()
	s, err := sqlitestore.Open(t.Context(), sqlitestore.Config{Dir: dir})
	if err == nil {
		t.Cleanup(func() { _ = s.Close() })
	}
	return s, err
}

// snapshot is every file of a directory with its content: what "nothing
// already stored is touched" compares.
func snapshot(t *testing.T, dir string) map[string]string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	files := make(map[string]string, len(entries))
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		require.NoError(t, err)
		files[e.Name()] = string(b)
	}
	return files
}

// requireOneLineRefusal asserts the shape every refusal of Open has: one
// line that names the problem and says what to do.
func requireOneLineRefusal(t *testing.T, err error, parts ...string) {
	t.Helper()
	require.Error(t, err)
	msg := err.Error()
	require.NotContains(t, msg, "\n", "refusals are one line")
	require.True(t, strings.HasPrefix(msg, "sqlitestore: "), msg)
	for _, p := range parts {
		require.Contains(t, msg, p)
	}
	require.False(t, broker.IsUnavailable(err), "bad input is not an outage: %v", err)
}

func TestOpenCreatesPrivateDirAndFile(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "nested", "data")
	s, err := open(t, dir)
	require.NoError(t, err)
	require.Equal(t, []string{"0001_encryption_vaults.sql", "0002_data_keys.sql", "0003_recovery_proof.sql", "0004_format1_closure.sql", "0005_data_key_rotation.sql", "0006_audit_upkeep.sql", "0007_audit_seal.sql", "0008_data_key_wraps.sql"}, s.Migrated())
	require.Equal(t, filepath.Join(dir, sqlitestore.FileName), s.Path())
	require.NoError(t, s.Ping(t.Context()))

	info, err := os.Stat(dir)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o700), info.Mode().Perm(), "the data directory holds wrapped keys")
	info, err = os.Stat(s.Path())
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), info.Mode().Perm())
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	for _, e := range entries {
		require.False(t, strings.HasPrefix(e.Name(), ".keybroker-write-check"), "the write probe must be removed: %s", e.Name())
	}

	raw := rawDB(t, s.Path())
	var mode string
	require.NoError(t, raw.QueryRow(`PRAGMA journal_mode`).Scan(&mode))
	require.Equal(t, "wal", mode, "WAL is persistent in the file")
	var version int
	var name, checksum string
	require.NoError(t, raw.QueryRow(`SELECT version, name, checksum FROM keybroker_migrations ORDER BY version LIMIT 1`).Scan(&version, &name, &checksum))
	require.Equal(t, 1, version)
	require.Equal(t, "0001_encryption_vaults.sql", name)
	require.Len(t, checksum, 64)
}

func TestReopenAppliesNothingAndKeepsRows(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	first, err := sqlitestore.Open(t.Context(), sqlitestore.Config{Dir: dir})
	require.NoError(t, err)
	v := &broker.Vault{UserID: "alice", WrappedMK: ptr("d3JhcA=="), WrapIV: ptr(""), FormatVersion: broker.FormatBound,
		KEKID: "env-v1", RecoveryFormatVersion: 1}
	require.NoError(t, first.InUserTx(t.Context(), "alice", func(tx broker.Tx) error {
		_, err := tx.VaultInsert(t.Context(), v)
		return err
	}))
	require.NoError(t, first.Close())

	second, err := open(t, dir)
	require.NoError(t, err)
	require.Empty(t, second.Migrated())
	require.NoError(t, second.InUserTx(t.Context(), "alice", func(tx broker.Tx) error {
		got, err := tx.VaultGet(t.Context(), false)
		require.NoError(t, err)
		require.Equal(t, "d3JhcA==", *got.WrappedMK)
		return nil
	}))
}

func ptr[T any](v T) *T { return &v }

func TestOpenRefusesGarbageFile(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	garbage := make([]byte, 8192)
	_, _ = rand.Read(garbage)
	path := filepath.Join(dir, sqlitestore.FileName)
	require.NoError(t, os.WriteFile(path, garbage, 0o600))
	before := snapshot(t, dir)

	_, err := open(t, dir)
	requireOneLineRefusal(t, err, path+" is not a keybroker SQLite database (file is not a database): move it away or point --data-dir elsewhere")
	require.ErrorIs(t, err, sqlitestore.ErrNotKeybrokerDatabase)
	require.Equal(t, before, snapshot(t, dir), "the file must be left exactly as it was")
}

func TestOpenRefusesDamagedDatabase(t *testing.T) {
	t.Parallel()
	// The magic is right, so the header check passes and SQLite itself
	// must find the damage.
	dir := t.TempDir()
	damaged := make([]byte, 8192)
	_, _ = rand.Read(damaged)
	copy(damaged, "SQLite format 3\x00")
	path := filepath.Join(dir, sqlitestore.FileName)
	require.NoError(t, os.WriteFile(path, damaged, 0o600))
	before := snapshot(t, dir)

	_, err := open(t, dir)
	requireOneLineRefusal(t, err, path+" is not a keybroker SQLite database (", "move it away or point --data-dir elsewhere")
	require.ErrorIs(t, err, sqlitestore.ErrNotKeybrokerDatabase)
	require.Equal(t, before, snapshot(t, dir))
}

func TestOpenRefusesTruncatedHeader(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	path := filepath.Join(dir, sqlitestore.FileName)
	require.NoError(t, os.WriteFile(path, []byte("SQLite"), 0o600))
	_, err := open(t, dir)
	requireOneLineRefusal(t, err, "(file is not a database)")
	require.ErrorIs(t, err, sqlitestore.ErrNotKeybrokerDatabase)
}

// foreignDatabase writes a valid SQLite database of another application
// (rollback journal, as most applications leave them) with the given SQL.
func foreignDatabase(t *testing.T, dir string, statements ...string) {
	t.Helper()
	db := rawDB(t, filepath.Join(dir, sqlitestore.FileName))
	for _, s := range statements {
		_, err := db.Exec(s)
		require.NoError(t, err)
	}
	require.NoError(t, db.Close())
}

func TestOpenRefusesForeignDatabase(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	foreignDatabase(t, dir,
		`CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)`,
		`INSERT INTO notes (body) VALUES ('groceries')`)
	before := snapshot(t, dir)

	_, err := open(t, dir)
	requireOneLineRefusal(t, err, "is not a keybroker SQLite database", `"notes"`, "no keybroker_migrations",
		"will not migrate into another application's database", "move it away or point --data-dir elsewhere")
	require.ErrorIs(t, err, sqlitestore.ErrNotKeybrokerDatabase)
	require.Equal(t, before, snapshot(t, dir), "another application's database must not be touched (not even switched to WAL)")
}

func TestOpenRefusesForeignApplicationID(t *testing.T) {
	t.Parallel()
	// No tables yet, but the header says the file is someone else's.
	dir := t.TempDir()
	foreignDatabase(t, dir, `PRAGMA application_id = 1234`)
	before := snapshot(t, dir)
	_, err := open(t, dir)
	requireOneLineRefusal(t, err, "application_id is 0x4d2")
	require.ErrorIs(t, err, sqlitestore.ErrNotKeybrokerDatabase)
	require.Equal(t, before, snapshot(t, dir))
}

func TestOpenRefusesChangedMigration(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	s, err := sqlitestore.Open(t.Context(), sqlitestore.Config{Dir: dir})
	require.NoError(t, err)
	require.NoError(t, s.Close())
	raw := rawDB(t, filepath.Join(dir, sqlitestore.FileName))
	_, err = raw.Exec(`UPDATE keybroker_migrations SET checksum = 'recorded-by-another-build' WHERE version = 1`)
	require.NoError(t, err)

	_, err = open(t, dir)
	requireOneLineRefusal(t, err, "migration 0001_encryption_vaults.sql", "checksum mismatch", "recorded-by-another-build")

	var checksum string
	require.NoError(t, raw.QueryRow(`SELECT checksum FROM keybroker_migrations WHERE version = 1`).Scan(&checksum))
	require.Equal(t, "recorded-by-another-build", checksum, "a refused Open must not rewrite the record")
}

func TestOpenToleratesNewerMigrations(t *testing.T) {
	t.Parallel()
	// A newer binary migrated further; this one still starts, as on
	// PostgreSQL during a rolling upgrade.
	dir := t.TempDir()
	s, err := sqlitestore.Open(t.Context(), sqlitestore.Config{Dir: dir})
	require.NoError(t, err)
	require.NoError(t, s.Close())
	raw := rawDB(t, filepath.Join(dir, sqlitestore.FileName))
	_, err = raw.Exec(`INSERT INTO keybroker_migrations (version, name, checksum, applied_at) VALUES (99, '0099_future.sql', 'x', '2030-01-01T00:00:00.000000Z')`)
	require.NoError(t, err)
	s, err = open(t, dir)
	require.NoError(t, err)
	require.Empty(t, s.Migrated())
}

func TestOpenRefusesDataDirUnderRegularFile(t *testing.T) {
	t.Parallel()
	file := filepath.Join(t.TempDir(), "plain-file")
	require.NoError(t, os.WriteFile(file, []byte("x"), 0o600))
	_, err := open(t, filepath.Join(file, "data"))
	requireOneLineRefusal(t, err, "cannot create data directory", "not a directory", "point --data-dir elsewhere")
}

func TestOpenRefusesDatabaseThatIsADirectory(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	require.NoError(t, os.Mkdir(filepath.Join(dir, sqlitestore.FileName), 0o700))
	_, err := open(t, dir)
	requireOneLineRefusal(t, err, "(not a regular file)")
}

func TestConfigValidation(t *testing.T) {
	t.Parallel()
	_, err := sqlitestore.Open(t.Context(), sqlitestore.Config{})
	require.ErrorContains(t, err, "Config.Dir is required")
	_, err = sqlitestore.Open(t.Context(), sqlitestore.Config{Dir: t.TempDir(), BusyTimeout: -1})
	require.ErrorContains(t, err, "Config.BusyTimeout")
}

func TestOpenAcceptsOddPaths(t *testing.T) {
	t.Parallel()
	// The DSN is a file: URI; characters URIs reserve must survive it.
	dir := filepath.Join(t.TempDir(), "a dir?with #odd%20chars")
	s, err := open(t, dir)
	require.NoError(t, err)
	_, err = os.Stat(filepath.Join(dir, sqlitestore.FileName))
	require.NoError(t, err, "the database must be in the directory asked for")
	require.NoError(t, s.Ping(t.Context()))
}

func TestClosedStoreIsUnavailable(t *testing.T) {
	t.Parallel()
	s, err := sqlitestore.Open(t.Context(), sqlitestore.Config{Dir: t.TempDir()})
	require.NoError(t, err)
	require.NoError(t, s.Close())
	require.NoError(t, s.Close(), "Close is idempotent")

	called := false
	err = s.InUserTx(t.Context(), "alice", func(tx broker.Tx) error {
		called = true
		return nil
	})
	require.False(t, called)
	require.True(t, broker.IsUnavailable(err), "%v", err)
	require.ErrorIs(t, err, sqlitestore.ErrClosed)
	err = s.Ping(t.Context())
	require.True(t, broker.IsUnavailable(err), "%v", err)
}

func TestLockedByAnotherProcessPastTimeoutIsUnavailable(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	s, err := sqlitestore.Open(t.Context(), sqlitestore.Config{Dir: dir, BusyTimeout: 50 * time.Millisecond})
	require.NoError(t, err)
	t.Cleanup(func() { _ = s.Close() })

	// Another process (here: another connection) takes the write lock
	// and keeps it.
	raw := rawDB(t, s.Path())
	holder, err := raw.Conn(t.Context())
	require.NoError(t, err)
	defer holder.Close()
	_, err = holder.ExecContext(t.Context(), `BEGIN IMMEDIATE`)
	require.NoError(t, err)

	err = s.InUserTx(t.Context(), "alice", func(tx broker.Tx) error {
		_, err := tx.VaultInsert(t.Context(), &broker.Vault{UserID: "alice", WrappedMK: ptr("d3JhcA=="), WrapIV: ptr(""),
			FormatVersion: broker.FormatBound, KEKID: "env-v1", RecoveryFormatVersion: 1})
		return err
	})
	var ue *broker.UnavailableError
	require.ErrorAs(t, err, &ue, "a lock held past the busy timeout is an outage: %v", err)
	require.Equal(t, broker.DependencyStore, ue.Dependency)
	// WAL: readers do not wait for the writer.
	require.NoError(t, s.Ping(t.Context()))

	_, err = holder.ExecContext(t.Context(), `ROLLBACK`)
	require.NoError(t, err)
	require.NoError(t, s.InUserTx(t.Context(), "alice", func(tx broker.Tx) error {
		_, err := tx.VaultGet(t.Context(), false)
		require.ErrorIs(t, err, broker.ErrNotFound, "the refused transaction stored nothing")
		return nil
	}))
}

func TestCancelledWhileQueuedIsUnavailable(t *testing.T) {
	t.Parallel()
	s, err := open(t, t.TempDir())
	require.NoError(t, err)

	entered, release := make(chan struct{}), make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- s.InUserTx(context.Background(), "holder", func(tx broker.Tx) error {
			close(entered)
			<-release
			return nil
		})
	}()
	<-entered

	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	called := false
	err = s.InUserTx(ctx, "alice", func(tx broker.Tx) error {
		called = true
		return nil
	})
	require.False(t, called)
	require.True(t, broker.IsUnavailable(err), "%v", err)
	require.ErrorIs(t, err, context.Canceled)

	close(release)
	require.NoError(t, <-done)
}
