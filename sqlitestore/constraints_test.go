package sqlitestore_test

import (
	"database/sql"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/broker"
)

// TestConstraintsRawSQL writes bad rows with raw SQL, past the store: the
// invariants live in the schema, so a careless tool or a bug in a future
// store method cannot break them either.
func TestConstraintsRawSQL(t *testing.T) {
	t.Parallel()
	store := openStore(t, t.TempDir())
	raw := rawDB(t, store.Path())
	exec := func(query string, args ...any) error {
		_, err := raw.ExecContext(t.Context(), query, args...)
		return err
	}
	// A valid row as the original service wrote it, relying on defaults.
	require.NoError(t, exec(`INSERT INTO encryption_vaults (user_id, wrapped_mk, wrap_iv) VALUES ('valid', 'd3JhcA==', 'aXY=')`))

	for _, tc := range []struct {
		name, constraint, insert, update string
	}{
		{
			name: "NoWrapAtAll", constraint: "encryption_vaults_has_wrap",
			insert: `INSERT INTO encryption_vaults (user_id, wrapped_mk, wrap_iv) VALUES ('bad', NULL, NULL)`,
			update: `UPDATE encryption_vaults SET wrapped_mk = NULL, wrap_iv = NULL WHERE user_id = 'valid'`,
		},
		{
			name: "ServerWrapWithoutIV", constraint: "encryption_vaults_wrap_iv_pair",
			insert: `INSERT INTO encryption_vaults (user_id, wrapped_mk, wrap_iv) VALUES ('bad', 'd3JhcA==', NULL)`,
			update: `UPDATE encryption_vaults SET wrap_iv = NULL WHERE user_id = 'valid'`,
		},
		{
			name: "RecoveryIVWithoutWrap", constraint: "encryption_vaults_wrap_iv_pair",
			insert: `INSERT INTO encryption_vaults (user_id, wrapped_mk, wrap_iv, recovery_iv) VALUES ('bad', 'd3JhcA==', 'aXY=', 'aXY=')`,
			update: `UPDATE encryption_vaults SET recovery_iv = 'aXY=' WHERE user_id = 'valid'`,
		},
		{
			name: "ZeroKnowledgeWithServerWrap", constraint: "encryption_vaults_zk_consistency",
			insert: `INSERT INTO encryption_vaults (user_id, wrapped_mk, wrap_iv, recovery_wrapped_mk, recovery_iv, zero_knowledge)
VALUES ('bad', 'd3JhcA==', 'aXY=', 'cmVj', 'aXY=', 1)`,
			update: `UPDATE encryption_vaults SET zero_knowledge = true WHERE user_id = 'valid'`,
		},
		{
			name: "UnknownFormat", constraint: "encryption_vaults_format_version_known",
			insert: `INSERT INTO encryption_vaults (user_id, wrapped_mk, wrap_iv, format_version) VALUES ('bad', 'd3JhcA==', 'aXY=', 3)`,
			update: `UPDATE encryption_vaults SET format_version = 0 WHERE user_id = 'valid'`,
		},
		{
			name: "RestorableWithoutTakenAt", constraint: "encryption_vaults_restorable_complete",
			insert: `INSERT INTO encryption_vaults (user_id, wrapped_mk, wrap_iv, restorable_recovery_wrapped_mk, restorable_recovery_iv, restorable_recovery_format_version)
VALUES ('bad', 'd3JhcA==', 'aXY=', 'cmVj', 'aXY=', 1)`,
			update: `UPDATE encryption_vaults SET restorable_recovery_wrapped_mk = 'cmVj' WHERE user_id = 'valid'`,
		},
		{
			name: "ZeroKnowledgeNotBoolean", constraint: "zero_knowledge IN (0, 1)",
			insert: `INSERT INTO encryption_vaults (user_id, wrapped_mk, wrap_iv, zero_knowledge) VALUES ('bad', 'd3JhcA==', 'aXY=', 2)`,
			update: `UPDATE encryption_vaults SET zero_knowledge = 2 WHERE user_id = 'valid'`,
		},
		{
			// STRICT tables: a value of the wrong type is refused, not stored.
			name: "StrictTypes", constraint: "cannot store TEXT value in INTEGER column",
			insert: `INSERT INTO encryption_vaults (user_id, wrapped_mk, wrap_iv, format_version) VALUES ('bad', 'd3JhcA==', 'aXY=', 'two')`,
			update: `UPDATE encryption_vaults SET recovery_format_version = 'one' WHERE user_id = 'valid'`,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			require.ErrorContains(t, exec(tc.insert), tc.constraint)
			require.ErrorContains(t, exec(tc.update), tc.constraint)
		})
	}

	var n int
	require.NoError(t, raw.QueryRow(`SELECT count(*) FROM encryption_vaults WHERE user_id = 'bad'`).Scan(&n))
	require.Zero(t, n)

	// The valid row is unchanged, and its defaults (timestamp format
	// included) read back through the store.
	require.NoError(t, store.InUserTx(t.Context(), "valid", func(tx broker.Tx) error {
		v, err := tx.VaultGet(t.Context(), false)
		require.NoError(t, err)
		require.Equal(t, "d3JhcA==", *v.WrappedMK)
		require.Equal(t, "aXY=", *v.WrapIV)
		require.Equal(t, broker.FormatLegacy, v.FormatVersion)
		require.Equal(t, "env-v1", v.KEKID)
		require.False(t, v.ZeroKnowledge)
		require.False(t, v.CreatedAt.IsZero())
		require.Nil(t, v.RecoveryWrappedMK)
		return nil
	}))
}

// TestScopeIsEnforcedWithoutRLS shows what replaces row-level security on
// SQLite: the store's own filter. Raw SQL sees every row, the store's
// transaction only its user's.
func TestScopeIsEnforcedWithoutRLS(t *testing.T) {
	t.Parallel()
	store := openStore(t, t.TempDir())
	raw := rawDB(t, store.Path())
	for _, u := range []string{"alice", "bob"} {
		_, err := raw.Exec(`INSERT INTO encryption_vaults (user_id, wrapped_mk, wrap_iv) VALUES (?1, 'd3JhcA==', 'aXY=')`, u)
		require.NoError(t, err)
	}
	var n int
	require.NoError(t, raw.QueryRow(`SELECT count(*) FROM encryption_vaults`).Scan(&n))
	require.Equal(t, 2, n, "SQLite has no row-level security: raw SQL sees everyone")

	require.NoError(t, store.InUserTx(t.Context(), "alice", func(tx broker.Tx) error {
		v, err := tx.VaultGet(t.Context(), true)
		require.NoError(t, err)
		require.Equal(t, "alice", v.UserID)
		v.UserID = "bob"
		v.KEKID = "hijacked"
		require.ErrorContains(t, tx.VaultUpdate(t.Context(), v), `row of user "bob" in a transaction scoped to user "alice"`)
		return nil
	}))
	var kekID string
	require.NoError(t, raw.QueryRow(`SELECT kek_id FROM encryption_vaults WHERE user_id = 'bob'`).Scan(&kekID))
	require.Equal(t, "env-v1", kekID)
	require.ErrorIs(t, raw.QueryRow(`SELECT kek_id FROM encryption_vaults WHERE kek_id = 'hijacked'`).Scan(&kekID), sql.ErrNoRows)
}
