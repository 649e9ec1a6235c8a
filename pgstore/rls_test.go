package pgstore_test

import (
	"errors"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/internal/testkit/pgtest"
)

// The row-level security tests speak raw SQL as the runtime role: the
// policies must hold even for a query that forgets its WHERE clause.

const (
	userA = "user-a"
	userB = "user-b"
)

// seedTwoUsers writes a vault and an audit row for A and B as the
// superuser (which row-level security does not bind).
func seedTwoUsers(t *testing.T, admin *pgxpool.Pool, schema string) {
	t.Helper()
	vaults := pgx.Identifier{schema, "encryption_vaults"}.Sanitize()
	audit := pgx.Identifier{schema, "encryption_vault_audit"}.Sanitize()
	for _, u := range []string{userA, userB} {
		pgtest.Exec(t, admin, "INSERT INTO "+vaults+" (user_id, wrapped_mk, wrap_iv, kek_id) VALUES ($1, 'd3JhcA==', 'aXY=', 'env-v1')", u)
		pgtest.Exec(t, admin, "INSERT INTO "+audit+" (id, user_id, action, status) VALUES ($1, $2, 'init', 201)", "audit-"+u, u)
	}
}

func requirePolicyViolation(t *testing.T, err error) {
	t.Helper()
	var pgErr *pgconn.PgError
	require.True(t, errors.As(err, &pgErr), "want a server error, got %v", err)
	require.Equal(t, "42501", pgErr.Code, "want insufficient_privilege (row-level security), got %v", err)
}

func userIDs(t *testing.T, tx pgx.Tx, query string) []string {
	t.Helper()
	rows, err := tx.Query(t.Context(), query)
	require.NoError(t, err)
	ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(t, err)
	return ids
}

func TestRowLevelSecurity(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	const schema = "keybroker"
	e.migrate(t, schema)
	seedTwoUsers(t, e.admin, schema)
	ctx := t.Context()

	// search_path lets the statements below read like a careless query.
	pgtest.Exec(t, e.admin, "ALTER ROLE "+ident(e.runtime.Name)+" SET search_path TO "+ident(schema))
	pool := pgtest.NewPool(t, e.runtime.URL)

	t.Run("ScopedSeesOnlyOwnRows", func(t *testing.T) {
		scoped(t, pool, userA, func(tx pgx.Tx) {
			require.Equal(t, []string{userA}, userIDs(t, tx, "SELECT user_id FROM encryption_vaults"))
			require.Equal(t, []string{userA}, userIDs(t, tx, "SELECT user_id FROM encryption_vault_audit"))
		})
	})
	t.Run("ScopedCannotInsertForOtherUser", func(t *testing.T) {
		scoped(t, pool, userA, func(tx pgx.Tx) {
			_, err := tx.Exec(ctx, "INSERT INTO encryption_vaults (user_id, wrapped_mk, wrap_iv) VALUES ('user-c', 'd3JhcA==', 'aXY=')")
			requirePolicyViolation(t, err)
		})
		scoped(t, pool, userA, func(tx pgx.Tx) {
			_, err := tx.Exec(ctx, "INSERT INTO encryption_vault_audit (id, user_id, action, status) VALUES ('forged', $1, 'fetch', 200)", userB)
			requirePolicyViolation(t, err)
		})
	})
	t.Run("ScopedCannotUpdateOtherUser", func(t *testing.T) {
		scoped(t, pool, userA, func(tx pgx.Tx) {
			tag, err := tx.Exec(ctx, "UPDATE encryption_vaults SET kek_id = 'hijacked'")
			require.NoError(t, err)
			require.EqualValues(t, 1, tag.RowsAffected(), "only A's own row is visible to the update")
			tag, err = tx.Exec(ctx, "UPDATE encryption_vaults SET kek_id = 'hijacked' WHERE user_id = $1", userB)
			require.NoError(t, err)
			require.EqualValues(t, 0, tag.RowsAffected())
			tag, err = tx.Exec(ctx, "DELETE FROM encryption_vaults WHERE user_id = $1", userB)
			require.NoError(t, err)
			require.EqualValues(t, 0, tag.RowsAffected())
		})
		// Moving one's own row to another user breaks WITH CHECK.
		scoped(t, pool, userA, func(tx pgx.Tx) {
			_, err := tx.Exec(ctx, "UPDATE encryption_vaults SET user_id = 'user-c' WHERE user_id = $1", userA)
			requirePolicyViolation(t, err)
		})
		var kekID string
		require.NoError(t, e.admin.QueryRow(ctx, "SELECT kek_id FROM keybroker.encryption_vaults WHERE user_id = $1", userB).Scan(&kekID))
		require.Equal(t, "env-v1", kekID)
	})
	t.Run("UnscopedSeesNothing", func(t *testing.T) {
		scoped(t, pool, "", func(tx pgx.Tx) {
			require.Empty(t, userIDs(t, tx, "SELECT user_id FROM encryption_vaults"))
			require.Empty(t, userIDs(t, tx, "SELECT user_id FROM encryption_vault_audit"))
		})
		scoped(t, pool, "", func(tx pgx.Tx) {
			_, err := tx.Exec(ctx, "INSERT INTO encryption_vaults (user_id, wrapped_mk, wrap_iv) VALUES ('user-c', 'd3JhcA==', 'aXY=')")
			requirePolicyViolation(t, err)
		})
	})
	t.Run("ScopeEndsWithTransaction", func(t *testing.T) {
		// One connection, so the second transaction reuses the first's
		// session: set_config(..., true) must not outlive its transaction.
		cfg, err := pgxpool.ParseConfig(e.runtime.URL)
		require.NoError(t, err)
		cfg.MaxConns = 1
		single, err := pgxpool.NewWithConfig(ctx, cfg)
		require.NoError(t, err)
		defer single.Close()
		scoped(t, single, userA, func(tx pgx.Tx) {
			require.Len(t, userIDs(t, tx, "SELECT user_id FROM encryption_vaults"), 1)
		})
		scoped(t, single, "", func(tx pgx.Tx) {
			require.Empty(t, userIDs(t, tx, "SELECT user_id FROM encryption_vaults"))
		})
	})
	t.Run("OwnerIsBoundToo", func(t *testing.T) {
		// FORCE ROW LEVEL SECURITY: the migrator owns the tables and still
		// sees nothing unscoped.
		scoped(t, e.migratorPool, "", func(tx pgx.Tx) {
			require.Empty(t, userIDs(t, tx, "SELECT user_id FROM keybroker.encryption_vaults"))
		})
	})
}

// requireConstraintsEnforced breaks each CHECK constraint with raw SQL as
// the superuser (no row-level security in the way) and expects the
// server to reject it by the constraint's name.
func requireConstraintsEnforced(t *testing.T, admin *pgxpool.Pool, schema, userID string) {
	t.Helper()
	vaults := pgx.Identifier{schema, "encryption_vaults"}.Sanitize()
	cases := map[string]string{
		"encryption_vaults_has_wrap":     "INSERT INTO " + vaults + " (user_id, wrapped_mk, wrap_iv) VALUES ($1, NULL, NULL)",
		"encryption_vaults_wrap_iv_pair": "INSERT INTO " + vaults + " (user_id, wrapped_mk, wrap_iv) VALUES ($1, 'd3JhcA==', NULL)",
		"encryption_vaults_zk_consistency": "INSERT INTO " + vaults + " (user_id, wrapped_mk, wrap_iv, recovery_wrapped_mk, recovery_iv, zero_knowledge)" +
			" VALUES ($1, 'd3JhcA==', 'aXY=', 'cmVj', 'cml2', true)",
		"encryption_vaults_format_version_known": "INSERT INTO " + vaults + " (user_id, wrapped_mk, wrap_iv, format_version) VALUES ($1, 'd3JhcA==', 'aXY=', 3)",
		// A kept recovery wrap without the time it was kept.
		"encryption_vaults_restorable_complete": "INSERT INTO " + vaults + " (user_id, wrapped_mk, wrap_iv, restorable_recovery_wrapped_mk, restorable_recovery_iv, restorable_recovery_format_version)" +
			" VALUES ($1, 'd3JhcA==', 'aXY=', 'cmVj', 'cml2', 1)",
	}
	for constraint, insert := range cases {
		_, err := admin.Exec(t.Context(), insert, userID)
		var pgErr *pgconn.PgError
		require.True(t, errors.As(err, &pgErr), "%s: want a server error, got %v", constraint, err)
		require.Equal(t, "23514", pgErr.Code, "%s: want check_violation", constraint)
		require.Equal(t, constraint, pgErr.ConstraintName)
	}
	// The recovery half of the pair constraint, as an update of a good row.
	_, err := admin.Exec(t.Context(), "INSERT INTO "+vaults+" (user_id, wrapped_mk, wrap_iv) VALUES ($1, 'd3JhcA==', 'aXY=')", userID)
	require.NoError(t, err)
	_, err = admin.Exec(t.Context(), "UPDATE "+vaults+" SET recovery_wrapped_mk = 'cmVj' WHERE user_id = $1", userID)
	var pgErr *pgconn.PgError
	require.True(t, errors.As(err, &pgErr))
	require.Equal(t, "encryption_vaults_wrap_iv_pair", pgErr.ConstraintName)
}

func TestCheckConstraints(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.migrate(t, "keybroker")
	requireConstraintsEnforced(t, e.admin, "keybroker", "user-constraints")
}
