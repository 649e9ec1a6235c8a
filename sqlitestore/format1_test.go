package sqlitestore_test

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/base64"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/sqlitestore"
)

// reopenFormat1 reopens format 1 the way docs/rotation.md tells the owner
// of the database file to, before importing format-1 rows: a fresh store
// never held one and starts closed. A store without the closure (before
// it existed) is left as it is.
func reopenFormat1(t *testing.T, raw *sql.DB) {
	t.Helper()
	ctx := t.Context()
	var n int
	require.NoError(t, raw.QueryRowContext(ctx, `SELECT count(*) FROM sqlite_master WHERE name = 'encryption_vault_format1'`).Scan(&n))
	if n == 0 {
		return
	}
	tx, err := raw.BeginTx(ctx, nil)
	require.NoError(t, err)
	defer func() { _ = tx.Rollback() }()
	for _, stmt := range []string{
		`DROP TRIGGER encryption_vault_format1_no_reopen`,
		`UPDATE encryption_vault_format1 SET closed_at = NULL, closed_by = NULL`,
		`CREATE TRIGGER encryption_vault_format1_no_reopen BEFORE UPDATE ON encryption_vault_format1
    WHEN OLD.closed_at IS NOT NULL
BEGIN
    SELECT RAISE(ABORT, 'keybroker: format 1 is closed for good (UPDATE refused on encryption_vault_format1)');
END`,
	} {
		_, err := tx.ExecContext(ctx, stmt)
		require.NoError(t, err, stmt)
	}
	require.NoError(t, tx.Commit())
}

// legacyWrap wraps mk the way the original service did: AES-256-GCM under
// kek without AAD, the IV in its own column.
func legacyWrap(t *testing.T, kek broker.KEK, mk []byte) (wrappedMK, iv string) {
	t.Helper()
	wrapped, err := kek.Wrap(t.Context(), mk, nil)
	require.NoError(t, err)
	return base64.StdEncoding.EncodeToString(wrapped[12:]), base64.StdEncoding.EncodeToString(wrapped[:12])
}

// TestPastedFormat1WrapRefusedOnceClosedSQLite is the attack of a vault-row
// writer on the embedded store: after the re-wrap job has upgraded every
// format-1 row, the writer pastes a victim's format-1 wrap, from a copy
// of the file taken before the job ran, into their own row. It must not
// open — on the service that ran the job and on one that just started —
// and every attempt to reopen format 1 through SQL must fail.
func TestPastedFormat1WrapRefusedOnceClosedSQLite(t *testing.T) {
	t.Parallel()
	store := openStore(t, t.TempDir())
	raw := rawDB(t, store.Path())
	ctx := t.Context()
	reopenFormat1(t, raw) // a file that held the original service's rows

	kek := localKEK(t, "env-v1")
	ring, err := broker.NewKeyring(kek)
	require.NoError(t, err)
	victimMK := make([]byte, 32)
	rand.Read(victimMK)
	dumpWrapped, dumpIV := legacyWrap(t, kek, victimMK)
	now := time.Now().UTC().Format(time.RFC3339Nano)
	_, err = raw.ExecContext(ctx, `INSERT INTO encryption_vaults (user_id, wrapped_mk, wrap_iv, format_version, kek_id, created_at)
VALUES ('victim', ?1, ?2, 1, 'env-v1', ?3)`, dumpWrapped, dumpIV, now)
	require.NoError(t, err)

	svc, err := broker.New(ctx, broker.Config{Store: store, Keyring: ring, Logger: slog.New(slog.DiscardHandler)})
	require.NoError(t, err)
	got, err := svc.Key(ctx, "victim", broker.RequestMeta{})
	require.NoError(t, err, "format 1 opens while rows need it")
	require.Equal(t, victimMK, got.MasterKey)
	_, err = svc.Init(ctx, "mallory", broker.RequestMeta{})
	require.NoError(t, err)

	job, err := broker.NewRewrapJob(broker.RewrapConfig{Store: store, Keyring: ring, Logger: slog.New(slog.DiscardHandler)})
	require.NoError(t, err)
	res, err := job.Run(ctx)
	require.NoError(t, err)
	require.EqualValues(t, 1, res.Done, "the victim's row is upgraded")

	paste := func(user string) {
		t.Helper()
		_, err := raw.ExecContext(ctx, `INSERT INTO encryption_vaults (user_id, wrapped_mk, wrap_iv, format_version, kek_id, created_at)
VALUES (?1, ?2, ?3, 1, 'env-v1', ?4)
ON CONFLICT (user_id) DO UPDATE SET wrapped_mk = excluded.wrapped_mk, wrap_iv = excluded.wrap_iv,
    format_version = 1, kek_id = 'env-v1', key_check = NULL`, user, dumpWrapped, dumpIV, now)
		require.NoError(t, err)
	}
	requireRefused := func(svc *broker.Service, user string) {
		t.Helper()
		got, err := svc.Key(ctx, user, broker.RequestMeta{IPAddress: "203.0.113.9"})
		require.ErrorIs(t, err, broker.ErrUnwrapFailed)
		require.Nil(t, got)
		var action, note string
		var status int
		require.NoError(t, raw.QueryRowContext(ctx, `SELECT action, status, context FROM encryption_vault_audit
WHERE user_id = ?1 ORDER BY created_at DESC, rowid DESC LIMIT 1`, user).Scan(&action, &status, &note))
		require.Equal(t, []any{"failed_fetch", 500, "format1-closed"}, []any{action, status, note})
	}

	paste("mallory")
	requireRefused(svc, "mallory")
	requireRefused(svc, "mallory") // remembered as closed
	restarted, err := broker.New(ctx, broker.Config{Store: store, Keyring: ring, Logger: slog.New(slog.DiscardHandler)})
	require.NoError(t, err)
	requireRefused(restarted, "mallory")

	// Reopening through SQL, without dropping the triggers first.
	for _, stmt := range []string{
		`UPDATE encryption_vault_format1 SET closed_at = NULL, closed_by = NULL`,
		`DELETE FROM encryption_vault_format1`,
		`INSERT OR REPLACE INTO encryption_vault_format1 (singleton, closed_at, closed_by) VALUES (1, NULL, NULL)`,
	} {
		_, err := raw.ExecContext(ctx, stmt)
		require.ErrorContains(t, err, "format 1 is closed for good", stmt)
	}
	// A fresh format-1 row does not reopen it either.
	paste("mallory-2")
	fresh, err := broker.New(ctx, broker.Config{Store: store, Keyring: ring, Logger: slog.New(slog.DiscardHandler)})
	require.NoError(t, err)
	requireRefused(fresh, "mallory-2")
	requireRefused(fresh, "mallory")

	// The job does not open them either: they fail, and are not moved.
	res, err = job.Run(ctx)
	require.NoError(t, err)
	require.EqualValues(t, 2, res.Failed)
	require.Zero(t, res.Done)
	for _, f := range res.Failures {
		require.ErrorIs(t, f.Err, broker.ErrUnwrapFailed, f.UserID)
		require.ErrorContains(t, f.Err, "format 1 is closed", f.UserID)
	}

	got, err = fresh.Key(ctx, "victim", broker.RequestMeta{})
	require.NoError(t, err)
	require.Equal(t, victimMK, got.MasterKey, "the victim is unaffected")
	require.Equal(t, broker.FormatBound, got.FormatVersion)
}

// readHookStore is the embedded store that runs a hook once, right after
// its first VaultRead.
type readHookStore struct {
	*sqlitestore.Store
	once      sync.Once
	afterRead func()
}

func (s *readHookStore) VaultRead(ctx context.Context, userID string) (*broker.Vault, error) {
	v, err := s.Store.VaultRead(ctx, userID)
	s.once.Do(s.afterRead)
	return v, err
}

// TestFormat1ClosingUnderAFetchSQLite: the fetch path of the embedded
// store (a read, then the audit commit) read the last format-1 row just
// before the re-wrap job upgraded it and closed format 1: it reads the row
// again and opens the format-2 wrap.
func TestFormat1ClosingUnderAFetchSQLite(t *testing.T) {
	t.Parallel()
	inner := openStore(t, t.TempDir())
	raw := rawDB(t, inner.Path())
	ctx := t.Context()
	reopenFormat1(t, raw)
	kek := localKEK(t, "env-v1")
	ring, err := broker.NewKeyring(kek)
	require.NoError(t, err)
	mk := make([]byte, 32)
	rand.Read(mk)
	wrappedMK, iv := legacyWrap(t, kek, mk)
	_, err = raw.ExecContext(ctx, `INSERT INTO encryption_vaults (user_id, wrapped_mk, wrap_iv, format_version, kek_id) VALUES ('legacy', ?1, ?2, 1, 'env-v1')`, wrappedMK, iv)
	require.NoError(t, err)

	store := &readHookStore{Store: inner, afterRead: func() {
		job, err := broker.NewRewrapJob(broker.RewrapConfig{Store: inner, Keyring: ring, Logger: slog.New(slog.DiscardHandler)})
		require.NoError(t, err)
		res, err := job.Run(ctx)
		require.NoError(t, err)
		require.True(t, res.Format1ClosedNow)
	}}
	svc, err := broker.New(ctx, broker.Config{Store: store, Keyring: ring, Logger: slog.New(slog.DiscardHandler)})
	require.NoError(t, err)
	res, err := svc.Key(ctx, "legacy", broker.RequestMeta{})
	require.NoError(t, err)
	require.Equal(t, mk, res.MasterKey)
	require.Equal(t, broker.FormatBound, res.FormatVersion)
	var failed int
	require.NoError(t, raw.QueryRowContext(ctx, `SELECT count(*) FROM encryption_vault_audit WHERE user_id = 'legacy' AND action = 'failed_fetch'`).Scan(&failed))
	require.Zero(t, failed)
}
