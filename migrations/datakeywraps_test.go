package migrations

import (
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/internal/testkit/pgtest"
)

// TestDataKeyWrapsGrantedLikeTheDataKeys: a split-role install whose
// runtime role was granted the data-key table for the previous release
// can read and write the data keys' other wraps once the migration that
// adds them has run, with no new grant by the operator — else every
// replica of the new release would fail to list its data keys.
func TestDataKeyWrapsGrantedLikeTheDataKeys(t *testing.T) {
	t.Parallel()
	pool, admin := migratorPool(t)
	ctx := t.Context()
	all := mustAll(t)
	before := -1
	for i, m := range all {
		if strings.HasSuffix(m.Name, "_data_key_wraps.sql") {
			before = i
		}
	}
	require.GreaterOrEqual(t, before, 0, "no data-key wraps migration")
	_, err := apply(ctx, pool, "keybroker", all[:before])
	require.NoError(t, err)

	dbURL := admin.Config().ConnString()
	runtime := pgtest.NewRole(t, dbURL)
	rt := pgx.Identifier{runtime.Name}.Sanitize()
	pgtest.Exec(t, pool, "GRANT USAGE ON SCHEMA keybroker TO "+rt)
	pgtest.Exec(t, pool, "GRANT SELECT, INSERT, UPDATE, DELETE ON keybroker.kek_data_keys TO "+rt)
	_, err = apply(ctx, pool, "keybroker", all)
	require.NoError(t, err)

	rtPool := pgtest.NewPool(t, runtime.URL)
	_, err = rtPool.Exec(ctx, `INSERT INTO keybroker.kek_data_keys (id, wrapped_by, wrapped) VALUES ('dk-1', 'aws-eu', 'AA==')`)
	require.NoError(t, err)
	_, err = rtPool.Exec(ctx, `INSERT INTO keybroker.kek_data_key_wraps (data_key_id, kek_id, wrapped) VALUES ('dk-1', 'aws-us', 'AQ==')`)
	require.NoError(t, err, "the runtime role inserts a wrap")
	var n int
	require.NoError(t, rtPool.QueryRow(ctx, `SELECT count(*) FROM keybroker.kek_data_key_wraps`).Scan(&n))
	require.Equal(t, 1, n)
	// Deleting the data key (as the previous release does) takes its wraps.
	_, err = rtPool.Exec(ctx, `DELETE FROM keybroker.kek_data_keys WHERE id = 'dk-1'`)
	require.NoError(t, err)
	require.NoError(t, rtPool.QueryRow(ctx, `SELECT count(*) FROM keybroker.kek_data_key_wraps`).Scan(&n))
	require.Zero(t, n)
	// A role with no grant on the data keys gets none on their wraps.
	other := pgtest.NewRole(t, dbURL)
	otherPool := pgtest.NewPool(t, other.URL)
	pgtest.Exec(t, pool, "GRANT USAGE ON SCHEMA keybroker TO "+pgx.Identifier{other.Name}.Sanitize())
	_, err = otherPool.Exec(ctx, `SELECT 1 FROM keybroker.kek_data_key_wraps`)
	require.ErrorContains(t, err, "permission denied")
}
