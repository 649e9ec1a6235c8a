package pgstore_test

import (
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/internal/testkit/pgtest"
)

// grantErase gives the runtime role the one privilege erasure adds to
// the append-only audit grant: DELETE on the audit table.
func grantErase(t *testing.T, e *env, schema string) {
	t.Helper()
	pgtest.Exec(t, e.migratorPool, "GRANT DELETE ON "+pgx.Identifier{schema, "encryption_vault_audit"}.Sanitize()+" TO "+ident(e.runtime.Name))
}

// TestAdminEraseIsAtomic: without DELETE on the audit table the erasure
// fails as a whole — the vault is not deleted either, so a retry after
// the grant erases everything.
func TestAdminEraseIsAtomic(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	const schema = "keybroker"
	e.migrate(t, schema)
	seedTwoUsers(t, e.admin, schema)
	store := e.store(t, schema)
	_, err := store.VaultErase(t.Context(), userA)
	requirePolicyViolation(t, err)
	v, n, err := store.VaultMeta(t.Context(), userA)
	require.NoError(t, err)
	require.NotNil(t, v, "the vault survives a failed erasure")
	require.EqualValues(t, 1, n)

	grantErase(t, e, schema)
	res, err := store.VaultErase(t.Context(), userA)
	require.NoError(t, err)
	require.True(t, res.VaultDeleted)
}

// TestAdminEraseSeenBySuperuser: what an erasure deleted, and what it
// left, as the superuser (whom row-level security does not bind) sees it.
func TestAdminEraseSeenBySuperuser(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	const schema = "keybroker"
	e.migrate(t, schema)
	grantErase(t, e, schema)
	seedTwoUsers(t, e.admin, schema)
	store := e.store(t, schema)
	res, err := store.VaultErase(t.Context(), userA)
	require.NoError(t, err)
	require.True(t, res.VaultDeleted)
	require.EqualValues(t, 1, res.AuditRowsDeleted)
	count := func(table, user string) int {
		var n int
		require.NoError(t, e.admin.QueryRow(t.Context(), "SELECT count(*) FROM "+pgx.Identifier{schema, table}.Sanitize()+" WHERE user_id = $1", user).Scan(&n))
		return n
	}
	require.Zero(t, count("encryption_vaults", userA))
	require.Zero(t, count("encryption_vault_audit", userA))
	require.Zero(t, count("encryption_vault_kek_index", userA), "the re-wrap index forgets the user too")
	require.Equal(t, 1, count("encryption_vaults", userB))
	require.Equal(t, 1, count("encryption_vault_kek_index", userB))
	require.Equal(t, 1, count("encryption_vault_audit", userB))
}
