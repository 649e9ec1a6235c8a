package sqlitestore_test

import (
	"context"
	"database/sql"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/broker/storetest"
	"github.com/keybroker/keybroker/sqlitestore"
)

// TestStoreContract runs the store contract suite. The subtests that need
// no store of their own share one, in parallel, so the store's
// serialisation of writers is exercised too.
func TestStoreContract(t *testing.T) {
	t.Parallel()
	shared := harness(t, openStore(t, t.TempDir()))
	storetest.Run(t, func(t *testing.T, empty bool) storetest.Harness {
		if empty {
			return harness(t, openStore(t, t.TempDir()))
		}
		return shared
	})
}

// TestDataKeyContract runs the data-key part of the contract, each
// subtest on a database of its own.
func TestDataKeyContract(t *testing.T) {
	t.Parallel()
	storetest.RunDataKeys(t, func(t *testing.T, _ bool) storetest.Harness { return harness(t, openStore(t, t.TempDir())) })
}

// harness is the suite's view of store: its raw SQL reads what was
// really written and reopens format 1.
func harness(t *testing.T, store *sqlitestore.Store) storetest.Harness {
	raw := rawDB(t, store.Path())
	return storetest.Harness{Store: store, AuditRows: auditRows(raw), ReopenFormat1: func(t *testing.T) { reopenFormat1(t, raw) }}
}

// openStore opens a store in dir and closes it when the test ends.
func openStore(t *testing.T, dir string) *sqlitestore.Store {
	t.Helper()
	store, err := sqlitestore.Open(t.Context(), sqlitestore.Config{Dir: dir})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, store.Close()) })
	return store
}

// rawDB opens the database file behind the store's back, for the raw SQL
// that checks what was really written and tries to break the constraints.
func rawDB(t *testing.T, path string) *sql.DB {
	t.Helper()
	db, err := sql.Open("sqlite", "file:"+path+"?_busy_timeout=10000&_txlock=immediate")
	require.NoError(t, err)
	t.Cleanup(func() { _ = db.Close() })
	return db
}

func auditRows(db *sql.DB) func(ctx context.Context, userID string) ([]broker.AuditEntry, error) {
	return func(ctx context.Context, userID string) ([]broker.AuditEntry, error) {
		rows, err := db.QueryContext(ctx, `SELECT id, user_id, action, COALESCE(ip_address, ''), COALESCE(user_agent, ''),
    COALESCE(context, ''), status, created_at
FROM encryption_vault_audit WHERE user_id = ?1 ORDER BY created_at, rowid`, userID)
		if err != nil {
			return nil, err
		}
		defer rows.Close()
		var out []broker.AuditEntry
		for rows.Next() {
			var e broker.AuditEntry
			var createdAt string
			if err := rows.Scan(&e.ID, &e.UserID, &e.Action, &e.IPAddress, &e.UserAgent, &e.Context, &e.Status, &createdAt); err != nil {
				return nil, err
			}
			if e.CreatedAt, err = time.Parse(time.RFC3339Nano, createdAt); err != nil {
				return nil, err
			}
			out = append(out, e)
		}
		return out, rows.Err()
	}
}

// TestAuditSealContract runs the tamper-evidence part of the contract,
// the attacker writing the database file's tables directly.
func TestAuditSealContract(t *testing.T) {
	t.Parallel()
	storetest.RunAuditSeal(t, func(t *testing.T) (storetest.Harness, func(*testing.T, string)) {
		store := openStore(t, t.TempDir())
		raw := rawDB(t, store.Path())
		return harness(t, store), func(t *testing.T, sql string) {
			t.Helper()
			res, err := raw.ExecContext(t.Context(), sql)
			require.NoError(t, err, sql)
			n, err := res.RowsAffected()
			require.NoError(t, err)
			require.NotZero(t, n, "the tampering changed nothing: %s", sql)
		}
	})
}

// TestAuditRetentionContract runs the audit retention contract, each
// subtest on a database of its own.
func TestAuditRetentionContract(t *testing.T) {
	t.Parallel()
	storetest.RunAuditRetention(t, func(t *testing.T, _ bool) storetest.Harness { return harness(t, openStore(t, t.TempDir())) })
}
