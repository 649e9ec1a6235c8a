package pgstore_test

import (
	"encoding/base64"
	"fmt"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/broker"
)

// The previous release's data-key statements, verbatim: it knows one wrap
// per data key, kek_data_keys.wrapped.
const (
	previousDataKeyList   = `SELECT id, wrapped_by, wrapped, created_at FROM %s ORDER BY created_at, id`
	previousDataKeyInsert = `INSERT INTO %[1]s (id, wrapped_by, wrapped, created_at, updated_at)
SELECT $1, $2, $3, t, t FROM (
    SELECT greatest(coalesce($4, clock_timestamp()), (SELECT max(created_at) + interval '1 microsecond' FROM %[1]s)) AS t
) AS now`
	previousDataKeyRewrap = `UPDATE %s SET wrapped_by = $3, wrapped = $4, updated_at = now() WHERE id = $1 AND wrapped_by = $2`
	previousDataKeyDelete = `DELETE FROM %s WHERE id = $1`
)

// TestPreviousReleaseDataKeysOnMigratedSchema is a rolling upgrade with
// several KEKs per data key: the schema has the data keys' other wraps,
// and a replica of the previous release (one KEK) lists, mints, moves and
// deletes data keys beside a replica of this one, as the runtime role.
// The previous release sees each data key's first wrap, untouched; what
// it does leaves the other wraps consistent: a move keeps them, a delete
// takes them, and a data key it mints gets its other wraps afterwards.
func TestPreviousReleaseDataKeysOnMigratedSchema(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	const schema = "keybroker"
	e.migrate(t, schema)
	store := e.store(t, schema)
	ctx := t.Context()
	table := pgx.Identifier{schema, "kek_data_keys"}.Sanitize()
	sql := func(format string) string { return fmt.Sprintf(format, table) }
	b64 := base64.StdEncoding.EncodeToString

	// This release mints dk-1 under two KEKs.
	inserted, err := store.DataKeyInsert(ctx, broker.DataKey{ID: "dk-1", WrappedBy: "aws-eu", Wrapped: []byte("eu-1"),
		Wraps: []broker.DataKeyWrap{{KEKID: "aws-us", Wrapped: []byte("us-1")}}}, "")
	require.NoError(t, err)
	require.True(t, inserted)

	// The previous release lists it: one wrap, the first.
	var id, by, wrapped string
	var created any
	require.NoError(t, e.runtimePool.QueryRow(ctx, sql(previousDataKeyList)).Scan(&id, &by, &wrapped, &created))
	require.Equal(t, []string{"dk-1", "aws-eu", b64([]byte("eu-1"))}, []string{id, by, wrapped})

	// It moves the first wrap to its own new KEK: the other wrap stays.
	tag, err := e.runtimePool.Exec(ctx, sql(previousDataKeyRewrap), "dk-1", "aws-eu", "aws-eu-2", b64([]byte("eu2-1")))
	require.NoError(t, err)
	require.EqualValues(t, 1, tag.RowsAffected())
	list, err := store.DataKeyList(ctx)
	require.NoError(t, err)
	require.Len(t, list, 1)
	require.Equal(t, []broker.DataKeyWrap{{KEKID: "aws-eu-2", Wrapped: []byte("eu2-1")}, {KEKID: "aws-us", Wrapped: []byte("us-1")}}, list[0].AllWraps())

	// It mints dk-2 with one wrap; this release adds the other.
	_, err = e.runtimePool.Exec(ctx, sql(previousDataKeyInsert), "dk-2", "aws-eu-2", b64([]byte("eu2-2")), nil)
	require.NoError(t, err)
	list, err = store.DataKeyList(ctx)
	require.NoError(t, err)
	require.Len(t, list, 2)
	require.Empty(t, list[1].Wraps)
	added, err := store.DataKeyAddWrap(ctx, "dk-2", "aws-us", []byte("us-2"))
	require.NoError(t, err)
	require.True(t, added)
	added, err = store.DataKeyAddWrap(ctx, "dk-2", "aws-us", []byte("other"))
	require.NoError(t, err)
	require.False(t, added, "a KEK wraps a data key once")
	added, err = store.DataKeyAddWrap(ctx, "dk-2", "aws-eu-2", []byte("other"))
	require.NoError(t, err)
	require.False(t, added, "the first wrap's KEK is not added again")

	// It deletes dk-1: its other wrap goes with it.
	_, err = e.runtimePool.Exec(ctx, sql(previousDataKeyDelete), "dk-1")
	require.NoError(t, err)
	list, err = store.DataKeyList(ctx)
	require.NoError(t, err)
	require.Len(t, list, 1)
	require.Equal(t, "dk-2", list[0].ID)
	require.Equal(t, []broker.DataKeyWrap{{KEKID: "aws-us", Wrapped: []byte("us-2")}}, list[0].Wraps)
	var orphans int
	require.NoError(t, e.admin.QueryRow(ctx, `SELECT count(*) FROM keybroker.kek_data_key_wraps WHERE data_key_id = 'dk-1'`).Scan(&orphans))
	require.Zero(t, orphans)
	added, err = store.DataKeyAddWrap(ctx, "dk-1", "aws-us", []byte("late"))
	require.NoError(t, err)
	require.False(t, added, "no wrap is added to a deleted data key")
}
