package pgtest_test

import (
	"net/url"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/internal/testkit/pgtest"
)

func TestDatabaseAndRoleLifecycle(t *testing.T) {
	t.Parallel()
	var dbName, roleName string
	t.Run("Create", func(t *testing.T) {
		dbURL := pgtest.NewDatabase(t)
		role := pgtest.NewRole(t, dbURL)
		roleName = role.Name

		pool := pgtest.NewPool(t, role.URL)
		var user string
		var super, bypass bool
		require.NoError(t, pool.QueryRow(t.Context(),
			"SELECT current_user, current_database(), rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user").
			Scan(&user, &dbName, &super, &bypass))
		require.Equal(t, role.Name, user)
		require.NotEqual(t, "postgres", dbName, "a fresh database, not the admin one")
		require.False(t, super)
		require.False(t, bypass)

		// The role may own things; cleanup must still drop it.
		pgtest.Exec(t, pgtest.NewPool(t, dbURL), "GRANT CREATE ON SCHEMA public TO "+pgx.Identifier{role.Name}.Sanitize())
		pgtest.Exec(t, pool, "CREATE TABLE owned_by_role (id int)")
	})

	admin := pgtest.NewPool(t, pgtest.AdminURL())
	var n int
	require.NoError(t, admin.QueryRow(t.Context(), "SELECT count(*) FROM pg_database WHERE datname = $1", dbName).Scan(&n))
	require.Zero(t, n, "database must be dropped when the test ends")
	require.NoError(t, admin.QueryRow(t.Context(), "SELECT count(*) FROM pg_roles WHERE rolname = $1", roleName).Scan(&n))
	require.Zero(t, n, "role must be dropped when the test ends")
}

func TestPlainDatabaseRoleMayCreateSchemas(t *testing.T) {
	t.Parallel()
	role, adminURL := pgtest.NewPlainDatabase(t)
	pool := pgtest.NewPool(t, role.URL)
	var super, bypass bool
	var db string
	require.NoError(t, pool.QueryRow(t.Context(),
		"SELECT rolsuper, rolbypassrls, current_database() FROM pg_roles WHERE rolname = current_user").Scan(&super, &bypass, &db))
	require.False(t, super)
	require.False(t, bypass)
	u, err := url.Parse(adminURL)
	require.NoError(t, err)
	require.Equal(t, "/"+db, u.Path, "the administrative URL names the same database")
	pgtest.Exec(t, pool, "CREATE SCHEMA keybroker")
}
