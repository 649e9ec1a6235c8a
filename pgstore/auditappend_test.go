package pgstore_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/broker"
)

// TestAuditAppendChecksEveryRowUnderRLS: the one-statement group commit
// still runs the audit table's policy on every row, each under its own
// user's scope. A restrictive policy that refuses one user makes the
// whole batch fail, and nothing of it is kept.
func TestAuditAppendChecksEveryRowUnderRLS(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.migrate(t, "kb")
	store := e.store(t, "kb")
	rowsOf := auditRows(e.admin, "kb")
	ctx := context.Background()
	audit := pgx.Identifier{"kb", "encryption_vault_audit"}.Sanitize()
	e2 := func(id, user string) *broker.AuditEntry {
		return &broker.AuditEntry{ID: id, UserID: user, Action: broker.ActionFetch, Status: 200, CreatedAt: time.Now(),
			IPAddress: "192.0.2.1", UserAgent: "ua", Context: ""}
	}

	// The scope a row was checked under is recorded by a column default
	// that reads it: it must be the row's own user, for every row.
	_, err := e.admin.Exec(ctx, "ALTER TABLE "+audit+" ADD COLUMN checked_scope text DEFAULT current_setting('app.current_user_id', true)")
	require.NoError(t, err)
	var batch []*broker.AuditEntry
	for i := range 40 {
		batch = append(batch, e2(fmt.Sprintf("a-%d", i), fmt.Sprintf("user-%d", i%5)))
	}
	require.NoError(t, store.AuditAppend(ctx, batch))
	for u := range 5 {
		rows, err := rowsOf(ctx, fmt.Sprintf("user-%d", u))
		require.NoError(t, err)
		require.Len(t, rows, 8)
		for _, r := range rows {
			require.Equal(t, "192.0.2.1", r.IPAddress)
			require.Empty(t, r.Context, "empty strings are stored as NULL")
		}
	}
	var checked, wrongScope int
	require.NoError(t, e.admin.QueryRow(ctx, "SELECT count(*), count(*) FILTER (WHERE checked_scope IS DISTINCT FROM user_id) FROM "+audit).Scan(&checked, &wrongScope))
	require.Equal(t, 40, checked)
	require.Zero(t, wrongScope, "every row is checked under its own user's scope")

	_, err = e.admin.Exec(ctx, "CREATE POLICY refuse_mallory ON "+audit+" AS RESTRICTIVE FOR INSERT WITH CHECK (user_id <> 'mallory')")
	require.NoError(t, err)
	err = store.AuditAppend(ctx, []*broker.AuditEntry{e2("b-1", "alice"), e2("b-2", "mallory"), e2("b-3", "bob")})
	require.Error(t, err)
	for _, user := range []string{"alice", "mallory", "bob"} {
		rows, err := rowsOf(ctx, user)
		require.NoError(t, err)
		require.Empty(t, rows, user)
	}

	// The scope is transaction-local: nothing of it outlives the append
	// on the runtime role's connections.
	var scope *string
	require.NoError(t, e.runtimePool.QueryRow(ctx, "SELECT NULLIF(current_setting('app.current_user_id', true), '')").Scan(&scope))
	require.Nil(t, scope)
}
