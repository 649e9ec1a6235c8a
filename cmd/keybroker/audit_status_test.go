package main

import (
	"bytes"
	"io"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/internal/testkit/pgtest"
)

// TestAuditUpkeepAndStatusCommands: on a migrated PostgreSQL schema with
// audit rows, `audit status` shows an unpartitioned table, `audit upkeep`
// moves it under partitions (and a second run has nothing to move), and
// `audit status` then lists the partitions with the oldest row and the
// run. A retention shorter than a day is refused before anything opens.
func TestAuditUpkeepAndStatusCommands(t *testing.T) {
	t.Parallel()
	role, adminURL := pgtest.NewPlainDatabase(t)
	env := map[string]string{"DATABASE_URL": role.URL}
	require.NoError(t, run(t.Context(), []string{"migrate"}, envFunc(env), io.Discard, io.Discard, nil))
	admin := pgtest.NewPool(t, adminURL)
	pgtest.Exec(t, admin, `INSERT INTO keybroker.encryption_vault_audit (id, user_id, action, status, created_at)
SELECT 'a-' || g, 'u', 'fetch', 200, '2026-01-01T00:00:00Z'::timestamptz + g * interval '1 hour' FROM generate_series(1, 30) g`)

	cmd := func(args ...string) string {
		t.Helper()
		var out, errOut bytes.Buffer
		require.NoError(t, run(t.Context(), args, envFunc(env), &out, &errOut, nil), errOut.String())
		return out.String()
	}
	before := cmd("audit", "status")
	require.Contains(t, before, "partitions: none yet (the next upkeep run moves the table: keybroker audit upkeep)")
	require.Contains(t, before, "last upkeep: never")

	up := cmd("audit", "upkeep")
	require.Contains(t, up, "moved the audit table under a partitioned one")
	require.Regexp(t, `partitions created: 1[0-9] `, up)
	require.Contains(t, cmd("audit", "upkeep"), "partitions created: 0")

	pgtest.Exec(t, admin, `ANALYZE keybroker.encryption_vault_audit`)
	after := cmd("audit", "status")
	require.Contains(t, after, "audit rows: about 30 (estimate)")
	require.Contains(t, after, "oldest row: 2026-01-01T01:00:00Z")
	require.Contains(t, after, "newest row: 2026-01-02T06:00:00Z")
	require.Regexp(t, `encryption_vault_audit_before_\d{8}\s+\(all older\)\s+\d{4}-\d\d-\d\d\s+30\s`, after)
	require.Regexp(t, `last upkeep: .* by keybroker audit upkeep on `, after)

	var errOut bytes.Buffer
	err := run(t.Context(), []string{"audit", "upkeep", "--audit-retention", "12h"}, envFunc(env), io.Discard, &errOut, nil)
	require.ErrorContains(t, err, "at least 1d")
}
