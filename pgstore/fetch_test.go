package pgstore_test

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/pgstore"
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
	wrapOf := map[string]string{"alice": "YWxpY2U=", "bob": "Ym9i"}
	insertVaults(t, store, wrapOf)
	// Many reads on a small pool: every connection is reused, and a scope
	// left behind would show up as a wrong row.
	var reads []*broker.Vault
	for i := range 20 {
		user := []string{"alice", "bob"}[i%2]
		v, err := store.VaultRead(ctx, user)
		require.NoError(t, err)
		require.Equal(t, user, v.UserID)
		reads = append(reads, v)
	}
	// Rows are scanned into reused buffers: no vault read earlier shares
	// (or was overwritten through) a value of a later one.
	for _, v := range reads {
		require.Equal(t, wrapOf[v.UserID], *v.WrappedMK, v.UserID)
	}
	_, err := store.VaultRead(ctx, "carol")
	require.ErrorIs(t, err, broker.ErrNotFound)
	// And the reused buffer holds nothing of a row once it is recycled.
	scoped(t, e.runtimePool, "alice", func(tx pgx.Tx) {
		held, err := pgstore.VaultRowReset(tx.QueryRow(ctx, "SELECT "+pgstore.VaultColumns+" FROM kb.encryption_vaults WHERE user_id = 'alice'"))
		require.NoError(t, err)
		require.False(t, held, "a recycled row buffer holds nothing")
	})

	// The scope does not outlive the read on the runtime role's connections.
	var visible int
	require.NoError(t, e.runtimePool.QueryRow(ctx, "SELECT count(*) FROM kb.encryption_vaults").Scan(&visible))
	require.Zero(t, visible)
}

// TestVaultFetchRecordsEachCase: under forced row-level security, as the
// runtime role, each fetch of a batch reads and records under its own
// user's scope — a column default that reads the scope shows it for every
// row the cases record — a policy that refuses one user's row fails the
// batch naming that fetch, and the scope does not outlive the batch. (What
// each case records is the store contract's, storetest.)
func TestVaultFetchRecordsEachCase(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.migrate(t, "kb")
	store := e.store(t, "kb")
	rowsOf := auditRows(e.admin, "kb")
	ctx := context.Background()
	audit := pgx.Identifier{"kb", "encryption_vault_audit"}.Sanitize()
	_, err := e.admin.Exec(ctx, "ALTER TABLE "+audit+" ADD COLUMN checked_scope text DEFAULT current_setting('app.current_user_id', true)")
	require.NoError(t, err)
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
	batch := func(users ...string) *broker.FetchBatch {
		b := &broker.FetchBatch{Openable: []string{"k-local"}, Outcomes: outcomes}
		for _, user := range users {
			b.Fetches = append(b.Fetches, &broker.Fetch{Audit: &broker.AuditEntry{ID: user + "-" + randomHex(4), UserID: user, CreatedAt: time.Now()}})
		}
		return b
	}
	b := batch("local", "remote", "zk", "nobody", "local")
	require.NoError(t, store.VaultFetch(ctx, b))
	for _, f := range b.Fetches {
		if f.Vault != nil {
			require.Equal(t, f.Audit.UserID, f.Vault.UserID, "each read runs under its own user's scope")
		}
	}
	var recorded, wrongScope int
	require.NoError(t, e.admin.QueryRow(ctx, "SELECT count(*), count(*) FILTER (WHERE checked_scope IS DISTINCT FROM user_id) FROM "+audit).Scan(&recorded, &wrongScope))
	require.Equal(t, 4, recorded, "two fetches of local, zk and nobody; remote is recorded by the caller")
	require.Zero(t, wrongScope, "every row is recorded under its own user's scope")

	_, err = e.admin.Exec(ctx, "CREATE POLICY refuse_mallory ON "+audit+" AS RESTRICTIVE FOR INSERT WITH CHECK (user_id <> 'mallory')")
	require.NoError(t, err)
	refused := batch("local", "mallory", "zk")
	err = store.VaultFetch(ctx, refused)
	var item *broker.BatchItemError
	require.ErrorAs(t, err, &item)
	require.Equal(t, 1, item.Index, "the fetch the policy refused")
	requirePolicyViolation(t, err)
	for _, user := range []string{"local", "zk"} {
		rows, err := rowsOf(ctx, user)
		require.NoError(t, err)
		require.Len(t, rows, map[string]int{"local": 2, "zk": 1}[user], "nothing of the refused batch is kept")
	}

	// The scope does not outlive the batch on the runtime role's connections.
	var visible int
	require.NoError(t, e.runtimePool.QueryRow(ctx, "SELECT count(*) FROM kb.encryption_vaults").Scan(&visible))
	require.Zero(t, visible)
	var scope *string
	require.NoError(t, e.runtimePool.QueryRow(ctx, "SELECT NULLIF(current_setting('app.current_user_id', true), '')").Scan(&scope))
	require.Nil(t, scope)
}

// TestVaultFetchRecyclesNothing: VaultFetch recycles its batch and
// arguments, yet nothing of one batch reaches the next. A fetch of bob
// with no request metadata and no MACs, right after alice's with both,
// records NULLs, not alice's values; each row holds its own fetch's MAC
// of its case, byte for byte; each read is its own user's vault; and a
// call reset for recycling holds nothing of the batch it carried.
func TestVaultFetchRecyclesNothing(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.migrate(t, "kb")
	store := e.store(t, "kb")
	ctx := context.Background()
	wrapOf := map[string]string{"alice": "YWxpY2U=", "bob": "Ym9i"}
	insertVaults(t, store, wrapOf)
	batch := func(fetches ...*broker.Fetch) *broker.FetchBatch {
		return &broker.FetchBatch{Openable: []string{"k"}, Fetches: fetches, Outcomes: [broker.FetchDeferred]broker.FetchOutcome{
			broker.FetchMissing:       {Action: broker.ActionFailedFetch, Status: 404, Context: "missing"},
			broker.FetchZeroKnowledge: {Action: broker.ActionFetch, Status: 200, Context: "zk"},
			broker.FetchOpenable:      {Action: broker.ActionFetch, Status: 200},
		}}
	}
	created := time.Now().Truncate(time.Microsecond)
	alice := &broker.Fetch{Audit: &broker.AuditEntry{ID: "alice-1", UserID: "alice", IPAddress: "192.0.2.1", UserAgent: "alice-agent", CreatedAt: created}}
	for c := range alice.MACs {
		alice.MACs[c] = bytes.Repeat([]byte{byte(c + 1)}, 32)
	}
	require.NoError(t, store.VaultFetch(ctx, batch(alice)))
	bob := &broker.Fetch{Audit: &broker.AuditEntry{ID: "bob-1", UserID: "bob", CreatedAt: created.Add(time.Second)}}
	require.NoError(t, store.VaultFetch(ctx, batch(bob)))

	for _, f := range []*broker.Fetch{alice, bob} {
		require.Equal(t, f.Audit.UserID, f.Vault.UserID)
		require.Equal(t, wrapOf[f.Audit.UserID], *f.Vault.WrappedMK)
	}
	row := func(id string) (user string, ip, agent *string, mac []byte, at time.Time) {
		require.NoError(t, e.admin.QueryRow(ctx, "SELECT user_id, ip_address, user_agent, mac, created_at FROM "+
			pgx.Identifier{"kb", "encryption_vault_audit"}.Sanitize()+" WHERE id = $1", id).Scan(&user, &ip, &agent, &mac, &at))
		return
	}
	user, ip, agent, mac, at := row("alice-1")
	require.Equal(t, "alice", user)
	require.Equal(t, "192.0.2.1", *ip)
	require.Equal(t, "alice-agent", *agent)
	require.Equal(t, alice.MACs[broker.FetchOpenable], mac, "the MAC of the case the read found")
	require.True(t, created.Equal(at), "created_at %v, want %v", at, created)
	user, ip, agent, mac, at = row("bob-1")
	require.Equal(t, "bob", user)
	require.Nil(t, ip, "no IP address of an earlier fetch")
	require.Nil(t, agent, "no user agent of an earlier fetch")
	require.Nil(t, mac, "no MAC of an earlier fetch")
	require.True(t, created.Add(time.Second).Equal(at))

	require.Empty(t, pgstore.FetchCallReset(store, batch(alice, bob)), "a recycled call holds nothing")
}

// insertVaults gives each user of wrapOf a vault under KEK "k" whose
// wrap is the user's value.
func insertVaults(t *testing.T, store *pgstore.Store, wrapOf map[string]string) {
	t.Helper()
	for user, w := range wrapOf {
		require.NoError(t, store.InUserTx(t.Context(), user, func(tx broker.Tx) error {
			iv := ""
			_, err := tx.VaultInsert(t.Context(), &broker.Vault{UserID: user, WrappedMK: &w, WrapIV: &iv, FormatVersion: 2,
				KEKID: "k", CreatedAt: time.Now(), RecoveryFormatVersion: 1})
			return err
		}))
	}
}
