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

// TestVaultFetchRecordsEachCase: one batch reads the vaults of several
// users, each under its own scope, and records in the same commit the row
// each case calls for — the same rule as broker.FetchBatch.Case, with
// nothing recorded for a wrap that must go to a remote KEK.
func TestVaultFetchRecordsEachCase(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.migrate(t, "kb")
	store := e.store(t, "kb")
	rowsOf := auditRows(e.admin, "kb")
	ctx := context.Background()
	w, iv, rw, riv := "d3JhcA==", "", "cmVjb3Zlcnk=", "aXY="
	vaults := map[string]*broker.Vault{
		"local":  {UserID: "local", WrappedMK: &w, WrapIV: &iv, FormatVersion: 2, KEKID: "k-local", CreatedAt: time.Now(), RecoveryFormatVersion: 1},
		"remote": {UserID: "remote", WrappedMK: &w, WrapIV: &iv, FormatVersion: 2, KEKID: "k-remote", CreatedAt: time.Now(), RecoveryFormatVersion: 1},
		"zk": {UserID: "zk", FormatVersion: 2, KEKID: "k-local", CreatedAt: time.Now(), RecoveryWrappedMK: &rw, RecoveryIV: &riv,
			RecoveryFormatVersion: 2, RecoverySetAt: ptr(time.Now()), ZeroKnowledge: true},
	}
	for user, v := range vaults {
		require.NoError(t, store.InUserTx(ctx, user, func(tx broker.Tx) error {
			_, err := tx.VaultInsert(ctx, v)
			return err
		}))
	}
	outcomes := [broker.FetchDeferred]broker.FetchOutcome{
		broker.FetchMissing:       {Action: broker.ActionFailedFetch, Status: 404, Context: "missing"},
		broker.FetchZeroKnowledge: {Action: broker.ActionFetch, Status: 200, Context: "zk"},
		broker.FetchOpenable:      {Action: broker.ActionFetch, Status: 200},
	}
	users := []string{"local", "remote", "zk", "nobody", "local"}
	b := &broker.FetchBatch{Openable: []string{"k-local", "k-other"}, Outcomes: outcomes}
	for i, user := range users {
		b.Fetches = append(b.Fetches, &broker.Fetch{Audit: &broker.AuditEntry{
			ID: fmt.Sprintf("fetch-%d", i), UserID: user, IPAddress: "203.0.113.9", UserAgent: "ua", CreatedAt: time.Now()}})
	}
	require.NoError(t, store.VaultFetch(ctx, b))

	wantCase := map[string]broker.FetchCase{"local": broker.FetchOpenable, "remote": broker.FetchDeferred,
		"zk": broker.FetchZeroKnowledge, "nobody": broker.FetchMissing}
	for _, f := range b.Fetches {
		user := f.Audit.UserID
		if user == "nobody" {
			require.Nil(t, f.Vault)
		} else {
			require.NotNil(t, f.Vault, user)
			require.Equal(t, user, f.Vault.UserID, "each read runs under its own user's scope")
			require.Equal(t, vaults[user].KEKID, f.Vault.KEKID)
		}
		require.Equal(t, wantCase[user], b.Case(f.Vault), user)
	}
	recorded := map[string][]broker.AuditEntry{}
	for user := range wantCase {
		rows, err := rowsOf(ctx, user)
		require.NoError(t, err)
		recorded[user] = rows
	}
	require.Len(t, recorded["local"], 2, "one row per fetch")
	for _, r := range recorded["local"] {
		require.Equal(t, broker.ActionFetch, r.Action)
		require.Equal(t, 200, r.Status)
		require.Empty(t, r.Context)
		require.Equal(t, "203.0.113.9", r.IPAddress)
		require.Equal(t, "ua", r.UserAgent)
	}
	require.Empty(t, recorded["remote"], "a remote unwrap is recorded by the caller, after it")
	require.Len(t, recorded["zk"], 1)
	require.Equal(t, "zk", recorded["zk"][0].Context)
	require.Len(t, recorded["nobody"], 1)
	require.Equal(t, broker.ActionFailedFetch, recorded["nobody"][0].Action)
	require.Equal(t, 404, recorded["nobody"][0].Status)
	require.Equal(t, "missing", recorded["nobody"][0].Context)

	// All or nothing: a duplicate audit id fails the batch, and neither
	// fetch is recorded.
	bad := &broker.FetchBatch{Openable: []string{"k-local"}, Outcomes: outcomes, Fetches: []*broker.Fetch{
		{Audit: &broker.AuditEntry{ID: "fresh", UserID: "zk", CreatedAt: time.Now()}},
		{Audit: &broker.AuditEntry{ID: "fetch-0", UserID: "local", CreatedAt: time.Now()}},
	}}
	err := store.VaultFetch(ctx, bad)
	var item *broker.BatchItemError
	require.ErrorAs(t, err, &item, "the server said which statement failed")
	require.Equal(t, 1, item.Index, "the fetch whose audit id is taken")
	require.Nil(t, bad.Fetches[0].Vault, "no vault of a failed batch is handed out")
	rows, err := rowsOf(ctx, "zk")
	require.NoError(t, err)
	require.Len(t, rows, 1)

	// Without it the others run: the batch's own transaction was rolled
	// back, so they are recorded once.
	bad.Fetches = bad.Fetches[:1]
	require.NoError(t, store.VaultFetch(ctx, bad))
	rows, err = rowsOf(ctx, "zk")
	require.NoError(t, err)
	require.Len(t, rows, 2)

	empty := &broker.FetchBatch{Outcomes: outcomes, Fetches: []*broker.Fetch{{Audit: &broker.AuditEntry{ID: "x", CreatedAt: time.Now()}}}}
	require.ErrorIs(t, store.VaultFetch(ctx, empty), broker.ErrInvalidArgument)

	// The scope does not outlive the batch on the runtime role's connections.
	var visible int
	require.NoError(t, e.runtimePool.QueryRow(ctx, "SELECT count(*) FROM kb.encryption_vaults").Scan(&visible))
	require.Zero(t, visible)
}
