package migrations

import (
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/internal/testkit/pgtest"
)

type indexRow struct {
	UserID        string
	KEKID         string
	FormatVersion int16
	Wrapped       bool
	ZeroKnowledge bool
}

func kekIndex(t *testing.T, admin *pgxpool.Pool, schema string) []indexRow {
	t.Helper()
	rows, err := admin.Query(t.Context(), `SELECT user_id, kek_id, format_version, wrapped, zero_knowledge FROM `+
		pgx.Identifier{schema, "encryption_vault_kek_index"}.Sanitize()+` ORDER BY user_id`)
	require.NoError(t, err)
	got, err := pgx.CollectRows(rows, pgx.RowToStructByPos[indexRow])
	require.NoError(t, err)
	return got
}

// TestKEKIndexBackfillsExistingRows applies 0001-0003, writes rows as the
// original service would, then the rest: the index must list them even
// though the forced policies hide every row from the migrating owner.
func TestKEKIndexBackfillsExistingRows(t *testing.T) {
	t.Parallel()
	pool, admin := migratorPool(t)
	ctx := t.Context()
	all := mustAll(t)
	_, err := apply(ctx, pool, "keybroker", all[:3])
	require.NoError(t, err)
	pgtest.Exec(t, admin, `INSERT INTO keybroker.encryption_vaults (user_id, wrapped_mk, wrap_iv, format_version, kek_id)
VALUES ('legacy', 'd3JhcA==', 'aXY=', 1, 'env-v1'), ('bound', 'd3JhcA==', '', 2, 'kms-1')`)
	pgtest.Exec(t, admin, `INSERT INTO keybroker.encryption_vaults (user_id, format_version, kek_id, recovery_wrapped_mk, recovery_iv, zero_knowledge)
VALUES ('zk', 1, 'env-v1', 'cmVj', 'aXY=', true)`)

	applied, err := Apply(ctx, pool, "keybroker")
	require.NoError(t, err)
	require.Contains(t, applied, "0004_kek_index.sql")
	require.Equal(t, []indexRow{
		{"bound", "kms-1", 2, true, false},
		{"legacy", "env-v1", 1, true, false},
		{"zk", "env-v1", 1, false, true},
	}, kekIndex(t, admin, "keybroker"))

	var forced bool
	require.NoError(t, admin.QueryRow(ctx, `SELECT relforcerowsecurity FROM pg_class WHERE oid = 'keybroker.encryption_vaults'::regclass`).Scan(&forced))
	require.True(t, forced, "the migration must force row-level security again after the backfill")
}

// TestKEKIndexFollowsEveryChange writes through a runtime role that may
// only touch encryption_vaults (no grant on the index): the definer
// trigger must keep the index in step with inserts, updates and deletes,
// in the writer's transaction.
func TestKEKIndexFollowsEveryChange(t *testing.T) {
	t.Parallel()
	pool, admin := migratorPool(t)
	ctx := t.Context()
	_, err := Apply(ctx, pool, "keybroker")
	require.NoError(t, err)
	runtime := pgtest.NewRole(t, admin.Config().ConnString())
	pgtest.Exec(t, pool, "GRANT USAGE ON SCHEMA keybroker TO "+pgx.Identifier{runtime.Name}.Sanitize())
	pgtest.Exec(t, pool, "GRANT SELECT, INSERT, UPDATE, DELETE ON keybroker.encryption_vaults TO "+pgx.Identifier{runtime.Name}.Sanitize())
	rt := pgtest.NewPool(t, runtime.URL)

	scoped := func(user, sql string, args ...any) {
		t.Helper()
		tx, err := rt.Begin(ctx)
		require.NoError(t, err)
		defer func() { _ = tx.Rollback(ctx) }()
		_, err = tx.Exec(ctx, "SELECT set_config('app.current_user_id', $1, true)", user)
		require.NoError(t, err)
		_, err = tx.Exec(ctx, sql, args...)
		require.NoError(t, err)
		require.NoError(t, tx.Commit(ctx))
	}
	scoped("alice", `INSERT INTO keybroker.encryption_vaults (user_id, wrapped_mk, wrap_iv, format_version, kek_id) VALUES ('alice', 'd3JhcA==', '', 2, 'env-v1')`)
	scoped("bob", `INSERT INTO keybroker.encryption_vaults (user_id, wrapped_mk, wrap_iv, format_version, kek_id) VALUES ('bob', 'd3JhcA==', 'aXY=', 1, 'env-v1')`)
	require.Equal(t, []indexRow{{"alice", "env-v1", 2, true, false}, {"bob", "env-v1", 1, true, false}}, kekIndex(t, admin, "keybroker"))

	scoped("alice", `UPDATE keybroker.encryption_vaults SET kek_id = 'kms-2' WHERE user_id = 'alice'`)
	scoped("bob", `UPDATE keybroker.encryption_vaults SET recovery_wrapped_mk = 'cmVj', recovery_iv = 'aXY=' WHERE user_id = 'bob'`)
	scoped("bob", `UPDATE keybroker.encryption_vaults SET wrapped_mk = NULL, wrap_iv = NULL, zero_knowledge = true WHERE user_id = 'bob'`)
	require.Equal(t, []indexRow{{"alice", "kms-2", 2, true, false}, {"bob", "env-v1", 1, false, true}}, kekIndex(t, admin, "keybroker"))

	// A rolled-back change leaves no trace in the index.
	tx, err := rt.Begin(ctx)
	require.NoError(t, err)
	_, err = tx.Exec(ctx, "SELECT set_config('app.current_user_id', 'alice', true)")
	require.NoError(t, err)
	_, err = tx.Exec(ctx, `UPDATE keybroker.encryption_vaults SET kek_id = 'never' WHERE user_id = 'alice'`)
	require.NoError(t, err)
	require.NoError(t, tx.Rollback(ctx))

	scoped("bob", `DELETE FROM keybroker.encryption_vaults WHERE user_id = 'bob'`)
	require.Equal(t, []indexRow{{"alice", "kms-2", 2, true, false}}, kekIndex(t, admin, "keybroker"))

	// The runtime role cannot write the index by hand.
	_, err = rt.Exec(ctx, `INSERT INTO keybroker.encryption_vault_kek_index VALUES ('forged', 'x', 2, true, false)`)
	require.Error(t, err)
}
