package migrations

import (
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/internal/testkit/pgtest"
)

// beforeFormat1Closure is the migrations that precede the one that adds
// the format-1 closure (found by name: numbers are assigned at merge).
func beforeFormat1Closure(t *testing.T) []Migration {
	t.Helper()
	all := mustAll(t)
	for i, m := range all {
		if strings.HasSuffix(m.Name, "_format1_closure.sql") {
			return all[:i]
		}
	}
	t.Fatal("no format-1 closure migration")
	return nil
}

type format1Row struct {
	ClosedAt *time.Time
	ClosedBy *string
}

func format1State(t *testing.T, pool *pgxpool.Pool) format1Row {
	t.Helper()
	var r format1Row
	require.NoError(t, pool.QueryRow(t.Context(), `SELECT format1_closed_at, format1_closed_by FROM keybroker.encryption_vault_format1_state()`).
		Scan(&r.ClosedAt, &r.ClosedBy))
	return r
}

// TestFormat1ClosedOnAFreshInstall: no format-1 row ever existed, so none
// ever opens.
func TestFormat1ClosedOnAFreshInstall(t *testing.T) {
	t.Parallel()
	pool, _ := migratorPool(t)
	_, err := Apply(t.Context(), pool, "keybroker")
	require.NoError(t, err)
	st := format1State(t, pool)
	require.NotNil(t, st.ClosedAt)
	require.Equal(t, "keybroker migrate: no format-1 rows", *st.ClosedBy)
}

// TestFormat1OpenWhileAdoptedRowsNeedIt applies the migrations before the
// closure's to a database, writes rows as the original service would,
// then the rest: format 1 stays open for them until the closing check
// finds none left; zero-knowledge format-1 rows (no server wrap) and
// format-2 rows never hold it open.
func TestFormat1OpenWhileAdoptedRowsNeedIt(t *testing.T) {
	t.Parallel()
	pool, admin := migratorPool(t)
	ctx := t.Context()
	_, err := apply(ctx, pool, "keybroker", beforeFormat1Closure(t))
	require.NoError(t, err)
	pgtest.Exec(t, admin, `INSERT INTO keybroker.encryption_vaults (user_id, wrapped_mk, wrap_iv, format_version, kek_id)
VALUES ('legacy', 'd3JhcA==', 'aXY=', 1, 'env-v1'), ('bound', 'd3JhcA==', '', 2, 'env-v1')`)
	pgtest.Exec(t, admin, `INSERT INTO keybroker.encryption_vaults (user_id, format_version, kek_id, recovery_wrapped_mk, recovery_iv, zero_knowledge)
VALUES ('zk', 1, 'env-v1', 'cmVj', 'aXY=', true)`)
	applied, err := Apply(ctx, pool, "keybroker")
	require.NoError(t, err)
	require.NotEmpty(t, applied)
	require.True(t, strings.HasSuffix(applied[0], "_format1_closure.sql"), "applied %v", applied)
	require.Equal(t, format1Row{}, format1State(t, pool), "a format-1 row with a server wrap keeps format 1 open")

	closeAs := func(runner string) format1Row {
		t.Helper()
		var r format1Row
		require.NoError(t, pool.QueryRow(ctx, `SELECT format1_closed_at, format1_closed_by FROM keybroker.encryption_vault_format1_close($1)`, runner).
			Scan(&r.ClosedAt, &r.ClosedBy))
		return r
	}
	require.Equal(t, format1Row{}, closeAs("job-a"), "closing refused while the row needs format 1")

	pgtest.Exec(t, admin, `UPDATE keybroker.encryption_vaults SET format_version = 2, wrap_iv = '' WHERE user_id = 'legacy'`)
	closed := closeAs("job-a")
	require.NotNil(t, closed.ClosedAt)
	require.Equal(t, "job-a", *closed.ClosedBy)
	require.Equal(t, closed, closeAs("job-b"), "closed once; a later close changes nothing")

	// A format-1 row written afterwards does not reopen it.
	pgtest.Exec(t, admin, `INSERT INTO keybroker.encryption_vaults (user_id, wrapped_mk, wrap_iv, format_version, kek_id)
VALUES ('late', 'd3JhcA==', 'aXY=', 1, 'env-v1')`)
	require.Equal(t, closed, format1State(t, pool))
	require.Equal(t, closed, closeAs("job-c"))
}

// TestFormat1ClosureIsOneWay tries, as the owner (who holds every
// privilege on the table), every statement that could reopen format 1.
func TestFormat1ClosureIsOneWay(t *testing.T) {
	t.Parallel()
	pool, _ := migratorPool(t)
	ctx := t.Context()
	_, err := Apply(ctx, pool, "keybroker")
	require.NoError(t, err)
	before := format1State(t, pool)
	for _, sql := range []string{
		`UPDATE keybroker.encryption_vault_format1 SET closed_at = NULL, closed_by = NULL`,
		`UPDATE keybroker.encryption_vault_format1 SET closed_at = now(), closed_by = 'someone else'`,
		`DELETE FROM keybroker.encryption_vault_format1`,
		`TRUNCATE keybroker.encryption_vault_format1`,
		`INSERT INTO keybroker.encryption_vault_format1 (singleton) VALUES (true) ON CONFLICT (singleton) DO UPDATE SET closed_at = NULL, closed_by = NULL`,
	} {
		_, err := pool.Exec(ctx, sql)
		require.ErrorContains(t, err, "format 1 is closed for good", sql)
	}
	require.Equal(t, before, format1State(t, pool))
}

// TestFormat1TableGrantedToNoOne: a role that may use the schema and
// write vault rows cannot read or write the state, only call the two
// functions.
func TestFormat1TableGrantedToNoOne(t *testing.T) {
	t.Parallel()
	pool, admin := migratorPool(t)
	ctx := t.Context()
	_, err := Apply(ctx, pool, "keybroker")
	require.NoError(t, err)
	writer := pgtest.NewRole(t, admin.Config().ConnString())
	pgtest.Exec(t, pool, "GRANT USAGE ON SCHEMA keybroker TO "+pgx.Identifier{writer.Name}.Sanitize())
	pgtest.Exec(t, pool, "GRANT INSERT, UPDATE ON keybroker.encryption_vaults TO "+pgx.Identifier{writer.Name}.Sanitize())
	w := pgtest.NewPool(t, writer.URL)
	for _, sql := range []string{
		`SELECT * FROM keybroker.encryption_vault_format1`,
		`UPDATE keybroker.encryption_vault_format1 SET closed_at = NULL, closed_by = NULL`,
		`DELETE FROM keybroker.encryption_vault_format1`,
		`TRUNCATE keybroker.encryption_vault_format1`,
	} {
		_, err := w.Exec(ctx, sql)
		require.ErrorContains(t, err, "permission denied", sql)
	}
	require.NotNil(t, format1State(t, w).ClosedAt, "the state is readable through its function")
}
