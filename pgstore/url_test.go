package pgstore_test

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/migrations"
	"github.com/keybroker/keybroker/pgstore"
)

// TestURLErrorsSayWhichPart: a database URL that does not parse is
// reported with the part that is wrong and the URL echoed with its query,
// the password redacted — never just "cannot parse".
func TestURLErrorsSayWhichPart(t *testing.T) {
	t.Parallel()
	for name, c := range map[string]struct{ url, says, echoed string }{
		"Port":            {"postgres://kb:s3cretpw@db.internal:notaport/kb", `invalid port ":notaport" after host`, "postgres://kb:xxxxx@db.internal:notaport/kb"},
		"SlashInPassword": {"postgres://kb:s3cret/pw@db.internal/kb?sslmode=verify-full", "percent-encode it (/ is %2F", "postgres://kb:xxxxx@db.internal/kb?sslmode=verify-full"},
		"Scheme":          {"postgresql+asyncpg://kb:s3cretpw@db/kb", `the scheme is "postgresql+asyncpg"`, "postgresql+asyncpg://kb:xxxxx@db/kb"},
		"SSLMode":         {"postgres://kb:s3cretpw@db/kb?sslmode=verify", `sslmode="verify": use disable`, "postgres://kb:xxxxx@db/kb?sslmode=verify"},
		"PoolMaxConns":    {"postgres://kb@db/kb?pool_max_conns=lots&password=s3cretpw", `pool_max_conns="lots"`, "postgres://kb@db/kb?pool_max_conns=lots&password=xxxxx"},
		"KeywordValue":    {"host=db port=nope password=s3cretpw", "keyword=value string", "host=db port=nope password=xxxxx"},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			err := pgstore.CheckURL(c.url)
			var urlErr *pgstore.URLError
			require.ErrorAs(t, err, &urlErr)
			require.ErrorContains(t, err, c.says)
			require.Equal(t, c.echoed, urlErr.URL)
			require.NotContains(t, err.Error(), "s3cret")

			_, err = pgstore.OpenPool(t.Context(), c.url)
			require.ErrorAs(t, err, &urlErr, "OpenPool says the same")
			require.NotContains(t, err.Error(), "s3cret")
		})
	}
	require.NoError(t, pgstore.CheckURL("postgres://kb:p%2Fw@db.internal:5432/kb?sslmode=verify-full&pool_max_conns=4"))
}

func TestRedactURL(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		"postgres://u:pw@h/db":                       "postgres://u:xxxxx@h/db",
		"postgres://u@h/db?password=pw&sslmode=x":    "postgres://u@h/db?password=xxxxx&sslmode=x",
		"postgres://u:p@ss@h/db":                     "postgres://u:xxxxx@h/db",
		"postgres:///kb?host=/run/postgresql&user=u": "postgres:///kb?host=/run/postgresql&user=u",
		"user=u password='a b' host=h":               "user=u password=xxxxx host=h",
	} {
		require.Equal(t, want, pgstore.RedactURL(in), in)
	}
}

func TestPoolSize(t *testing.T) {
	t.Parallel()
	pool, err := pgstore.NewPool(t.Context(), pgstore.PoolConfig{URL: "postgres://u@127.0.0.1:1/db", MaxConns: 3})
	require.NoError(t, err)
	require.EqualValues(t, 3, pool.Config().MaxConns)
	pool.Close()
	pool, err = pgstore.NewPool(t.Context(), pgstore.PoolConfig{URL: "postgres://u@127.0.0.1:1/db?pool_max_conns=5", MaxConns: 3})
	require.NoError(t, err)
	require.EqualValues(t, 5, pool.Config().MaxConns, "the URL's pool_max_conns wins")
	pool.Close()
	n, ok := pgstore.URLPoolSize("postgres://u@h/db?pool_max_conns=5")
	require.True(t, ok)
	require.Equal(t, 5, n)
	_, ok = pgstore.URLPoolSize("postgres://u@h/db")
	require.False(t, ok)
}

// TestConnectionBudget reads the server's limits as a plain role can.
func TestConnectionBudget(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	pool, err := pgstore.NewPool(t.Context(), pgstore.PoolConfig{URL: e.runtime.URL, MaxConns: 7})
	require.NoError(t, err)
	defer pool.Close()
	b, err := pgstore.ReadConnectionBudget(t.Context(), pool)
	require.NoError(t, err)
	var maxConns int
	require.NoError(t, e.admin.QueryRow(t.Context(), "SELECT current_setting('max_connections')::int").Scan(&maxConns))
	require.Equal(t, maxConns, b.MaxConnections)
	require.Positive(t, b.Reserved)
	require.GreaterOrEqual(t, b.Open, 2, "the admin pool and this one at least")
	require.Equal(t, 7, b.Pool)
	require.Equal(t, (maxConns-b.Reserved)/7, b.Replicas())

	require.True(t, pgstore.ConnectionBudget{MaxConnections: 100, Reserved: 3, Pool: 64}.Tight(), "one replica only")
	require.True(t, pgstore.ConnectionBudget{MaxConnections: 100, Reserved: 3, Open: 80, Own: 1, Pool: 32}.Tight(), "others hold most")
	require.False(t, pgstore.ConnectionBudget{MaxConnections: 100, Reserved: 3, Open: 5, Own: 1, Pool: 8}.Tight())
}

// TestPrivilegesForMigrations: a role that may not create keybroker's
// schema is told the GRANT to run — before the migrations, and when the
// migrations meet the refusal (SQLSTATE 42501) — instead of the raw
// SQLSTATE.
func TestPrivilegesForMigrations(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	err := pgstore.CheckMigratePrivileges(t.Context(), e.runtimePool, "keybroker")
	var privErr *pgstore.PrivilegeError
	require.ErrorAs(t, err, &privErr)
	require.False(t, privErr.SchemaExists)
	require.ErrorContains(t, err, `the database role "`+e.runtime.Name+`" may not create the schema "keybroker"`)
	require.ErrorContains(t, err, "GRANT CREATE ON DATABASE ")
	require.ErrorContains(t, err, " TO "+ident(e.runtime.Name)+";")

	_, migrateErr := migrations.Apply(t.Context(), e.runtimePool, "keybroker")
	require.Error(t, migrateErr)
	err = pgstore.ExplainMigrateError(t.Context(), e.runtimePool, "keybroker", migrateErr)
	require.ErrorAs(t, err, &privErr)
	require.ErrorContains(t, err, "GRANT CREATE ON DATABASE ")
	require.NotContains(t, err.Error(), "SQLSTATE")

	require.NoError(t, pgstore.CheckMigratePrivileges(t.Context(), e.migratorPool, "keybroker"))
	e.migrate(t, "keybroker")
	require.NoError(t, pgstore.CheckMigratePrivileges(t.Context(), e.migratorPool, "keybroker"))
	err = pgstore.CheckMigratePrivileges(t.Context(), e.runtimePool, "keybroker")
	require.ErrorAs(t, err, &privErr)
	require.True(t, privErr.SchemaExists)
	require.ErrorContains(t, err, "ALTER SCHEMA ")
}
