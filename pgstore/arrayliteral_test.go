package pgstore

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/internal/testkit/pgtest"
)

// TestArrayLiteralsReachPostgreSQLIntact: the text[] and int4[] literals
// VaultFetch sends for its per-batch parameters arrive as the same
// elements, whatever the text: quotes, backslashes, commas, braces,
// spaces, the word NULL and the empty string.
func TestArrayLiteralsReachPostgreSQLIntact(t *testing.T) {
	ctx := context.Background()
	conn := pgtest.NewPool(t, pgtest.AdminURL())
	texts := []string{"fetch", "", "NULL", `a"b`, `c\d`, "e,f", "{g}", " h ", "kek:v1/é"}
	var got []string
	require.NoError(t, conn.QueryRow(ctx, "SELECT $1::text[]", textArray(texts)).Scan(&got))
	require.Equal(t, texts, got)
	require.NoError(t, conn.QueryRow(ctx, "SELECT $1::text[]", textArray(nil)).Scan(&got))
	require.Empty(t, got)
	var ints []int32
	require.NoError(t, conn.QueryRow(ctx, "SELECT $1::int4[]", int4Array([]int32{404, 200, -1})).Scan(&ints))
	require.Equal(t, []int32{404, 200, -1}, ints)
}
