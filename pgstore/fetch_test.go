package pgstore_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/broker"
)

// TestVaultReadIsScopedByRLS: the pipelined read sets the scope in the
// same implicit transaction as its select, so it sees the user's row and
// only that row — as the runtime role, under forced row-level security.
func TestVaultReadIsScopedByRLS(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.migrate(t, "kb")
	store := e.store(t, "kb")
	ctx := context.Background()
	for _, user := range []string{"alice", "bob"} {
		require.NoError(t, store.InUserTx(ctx, user, func(tx broker.Tx) error {
			w, iv := "d3JhcA==", ""
			_, err := tx.VaultInsert(ctx, &broker.Vault{UserID: user, WrappedMK: &w, WrapIV: &iv, FormatVersion: 2,
				KEKID: "k", CreatedAt: time.Now(), RecoveryFormatVersion: 1})
			return err
		}))
	}
	// Many reads on a small pool: every connection is reused, and a scope
	// left behind would show up as a wrong row.
	for i := range 20 {
		user := []string{"alice", "bob"}[i%2]
		v, err := store.VaultRead(ctx, user)
		require.NoError(t, err)
		require.Equal(t, user, v.UserID)
	}
	_, err := store.VaultRead(ctx, "carol")
	require.ErrorIs(t, err, broker.ErrNotFound)

	// The scope does not outlive the read on the runtime role's connections.
	var visible int
	require.NoError(t, e.runtimePool.QueryRow(ctx, "SELECT count(*) FROM kb.encryption_vaults").Scan(&visible))
	require.Zero(t, visible)
}

// TestAuditAppendCommitsManyUsersAtOnce: one batch carries rows of many
// users through row-level security, and a bad row aborts all of them.
func TestAuditAppendCommitsManyUsersAtOnce(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.migrate(t, "kb")
	store := e.store(t, "kb")
	rowsOf := auditRows(e.admin, "kb")
	ctx := context.Background()
	var entries []*broker.AuditEntry
	for i := range 50 {
		entries = append(entries, &broker.AuditEntry{
			ID: fmt.Sprintf("id-%d", i), UserID: fmt.Sprintf("user-%d", i%7), Action: broker.ActionFetch,
			Status: 200, CreatedAt: time.Now(),
		})
	}
	require.NoError(t, store.AuditAppend(ctx, entries))
	for u := range 7 {
		rows, err := rowsOf(ctx, fmt.Sprintf("user-%d", u))
		require.NoError(t, err)
		want := 50 / 7
		if u < 50%7 {
			want++
		}
		require.Len(t, rows, want)
	}

	// A duplicate id fails the batch: none of its rows is kept.
	bad := []*broker.AuditEntry{
		{ID: "fresh-1", UserID: "zed", Action: broker.ActionFetch, Status: 200, CreatedAt: time.Now()},
		{ID: "id-0", UserID: "zed", Action: broker.ActionFetch, Status: 200, CreatedAt: time.Now()},
	}
	require.Error(t, store.AuditAppend(ctx, bad))
	rows, err := rowsOf(ctx, "zed")
	require.NoError(t, err)
	require.Empty(t, rows)
}
