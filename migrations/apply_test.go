package migrations

import (
	"context"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/internal/testkit/pgtest"
)

// migratorPool returns a pool of a fresh database connecting as a role
// that is not superuser and holds only CREATE on the database: all
// Apply needs.
func migratorPool(t *testing.T) (migrator, admin *pgxpool.Pool) {
	t.Helper()
	dbURL := pgtest.NewDatabase(t)
	admin = pgtest.NewPool(t, dbURL)
	role := pgtest.NewRole(t, dbURL)
	var db string
	require.NoError(t, admin.QueryRow(t.Context(), "SELECT current_database()").Scan(&db))
	pgtest.Exec(t, admin, "GRANT CREATE ON DATABASE "+pgx.Identifier{db}.Sanitize()+" TO "+pgx.Identifier{role.Name}.Sanitize())
	return pgtest.NewPool(t, role.URL), admin
}

func allNames(t *testing.T) []string {
	all := mustAll(t)
	names := make([]string, len(all))
	for i, m := range all {
		names[i] = m.Name
	}
	return names
}

func TestApplyTwiceIsIdempotent(t *testing.T) {
	t.Parallel()
	pool, _ := migratorPool(t)
	ctx := t.Context()

	applied, err := Apply(ctx, pool, "keybroker")
	require.NoError(t, err)
	require.Equal(t, allNames(t), applied)

	applied, err = Apply(ctx, pool, "keybroker")
	require.NoError(t, err)
	require.Empty(t, applied)

	all := mustAll(t)
	rows, err := pool.Query(ctx, "SELECT version, name, checksum FROM keybroker.keybroker_migrations ORDER BY version")
	require.NoError(t, err)
	type record struct {
		Version        int
		Name, Checksum string
	}
	got, err := pgx.CollectRows(rows, pgx.RowToStructByPos[record])
	require.NoError(t, err)
	require.Len(t, got, len(all))
	for i, m := range all {
		require.Equal(t, record{m.Version, m.Name, m.Checksum}, got[i])
	}
}

func TestApplyConcurrently(t *testing.T) {
	t.Parallel()
	dbURL := pgtest.NewDatabase(t)
	// A pool per migrator, as several replicas starting at once would have.
	const replicas = 6
	pools := make([]*pgxpool.Pool, replicas)
	for i := range pools {
		pools[i] = pgtest.NewPool(t, dbURL)
	}
	results := make([][]string, replicas)
	errs := make([]error, replicas)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range replicas {
		wg.Go(func() {
			<-start
			results[i], errs[i] = Apply(t.Context(), pools[i], "keybroker")
		})
	}
	close(start)
	wg.Wait()

	seen := map[string]int{}
	for i := range replicas {
		require.NoError(t, errs[i], "replica %d", i)
		for _, name := range results[i] {
			seen[name]++
		}
	}
	for _, name := range allNames(t) {
		require.Equal(t, 1, seen[name], "%s must be applied exactly once", name)
	}
	require.Len(t, seen, len(allNames(t)))
}

func TestApplyRefusesChangedFile(t *testing.T) {
	t.Parallel()
	pool, _ := migratorPool(t)
	ctx := t.Context()
	_, err := Apply(ctx, pool, "keybroker")
	require.NoError(t, err)

	pgtest.Exec(t, pool, "UPDATE keybroker.keybroker_migrations SET checksum = 'edited' WHERE version = 2")
	_, err = Apply(ctx, pool, "keybroker")
	require.ErrorContains(t, err, "checksum mismatch")
	require.ErrorContains(t, err, "0002_recovery_wrap.sql")

	pgtest.Exec(t, pool, "UPDATE keybroker.keybroker_migrations SET checksum = $1, name = '0002_renamed.sql' WHERE version = 2", mustAll(t)[1].Checksum)
	_, err = Apply(ctx, pool, "keybroker")
	require.ErrorContains(t, err, `recorded as "0002_renamed.sql"`)
}

func TestApplyToleratesNewerVersions(t *testing.T) {
	t.Parallel()
	pool, _ := migratorPool(t)
	ctx := t.Context()
	_, err := Apply(ctx, pool, "keybroker")
	require.NoError(t, err)
	// A newer replica applied a migration this binary does not know.
	pgtest.Exec(t, pool, "INSERT INTO keybroker.keybroker_migrations (version, name, checksum) VALUES (999, '0999_future.sql', 'x')")
	applied, err := Apply(ctx, pool, "keybroker")
	require.NoError(t, err)
	require.Empty(t, applied)
}

func TestApplyRollsBackFailedMigration(t *testing.T) {
	t.Parallel()
	pool, _ := migratorPool(t)
	ctx := t.Context()
	broken := []Migration{
		{Version: 1, Name: "0001_ok.sql", SQL: "CREATE TABLE first (id int);", Checksum: "c1"},
		{Version: 2, Name: "0002_broken.sql", SQL: "CREATE TABLE second (id int); SELECT no_such_column FROM first;", Checksum: "c2"},
		{Version: 3, Name: "0003_never.sql", SQL: "CREATE TABLE third (id int);", Checksum: "c3"},
	}
	applied, err := apply(ctx, pool, "s", broken)
	require.ErrorContains(t, err, "0002_broken.sql")
	require.Equal(t, []string{"0001_ok.sql"}, applied)

	var tables []string
	rows, err := pool.Query(ctx, "SELECT tablename FROM pg_tables WHERE schemaname = 's' ORDER BY tablename")
	require.NoError(t, err)
	tables, err = pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(t, err)
	require.Equal(t, []string{"first", "keybroker_migrations"}, tables, "0002 must roll back whole and 0003 must not run")

	var versions []int
	rows, err = pool.Query(ctx, "SELECT version FROM s.keybroker_migrations ORDER BY version")
	require.NoError(t, err)
	versions, err = pgx.CollectRows(rows, pgx.RowTo[int])
	require.NoError(t, err)
	require.Equal(t, []int{1}, versions)
}

func TestApplySanitisesSchemaName(t *testing.T) {
	t.Parallel()
	pool, _ := migratorPool(t)
	ctx := t.Context()
	schema := `Odd "schema"; DROP SCHEMA public`
	_, err := Apply(ctx, pool, schema)
	require.NoError(t, err)

	var n int
	require.NoError(t, pool.QueryRow(ctx,
		"SELECT count(*) FROM pg_tables WHERE schemaname = $1 AND tablename IN ('encryption_vaults', 'encryption_vault_audit')", schema).Scan(&n))
	require.Equal(t, 2, n)
	require.NoError(t, pool.QueryRow(ctx, "SELECT count(*) FROM pg_namespace WHERE nspname = 'public'").Scan(&n))
	require.Equal(t, 1, n)
}

func TestApplyRefusesEmptySchema(t *testing.T) {
	t.Parallel()
	// No connection is made: the pool points nowhere.
	pool, err := pgxpool.New(context.Background(), "postgres://nobody@127.0.0.1:1/none")
	require.NoError(t, err)
	defer pool.Close()
	_, err = Apply(t.Context(), pool, "")
	require.ErrorContains(t, err, "schema is required")
}

func mustAll(t *testing.T) []Migration {
	all, err := All()
	require.NoError(t, err)
	return all
}
