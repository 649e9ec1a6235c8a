package pgstore_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/broker/storetest"
	"github.com/keybroker/keybroker/internal/testkit/pgtest"
	"github.com/keybroker/keybroker/pgstore"
)

// TestAuditRetentionContract runs the audit retention contract on a store
// of the role that owns the schema (the upkeep creates and drops
// partitions), each subtest in a schema of its own whose name needs
// quoting.
func TestAuditRetentionContract(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	storetest.RunAuditRetention(t, func(t *testing.T, _ bool) storetest.Harness {
		schema := `kb "audit" ` + randomHex(6)
		e.migrate(t, schema)
		s, err := pgstore.New(t.Context(), pgstore.Config{Pool: e.migratorPool, Schema: schema})
		require.NoError(t, err)
		return storetest.Harness{Store: s, AuditRows: auditRows(e.admin, schema)}
	})
}

// TestStoreContractOnPartitions runs the whole store contract on a schema
// whose audit table the upkeep has partitioned: appends, pages, erasure
// and row-level security behave the same on the partitioned table.
func TestStoreContractOnPartitions(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	storetest.Run(t, func(t *testing.T, _ bool) storetest.Harness {
		schema := `kb "parts" ` + randomHex(6)
		e.migrate(t, schema)
		grantErase(t, e, schema)
		res, err := e.ownerStore(t, schema).AuditUpkeep(t.Context(), broker.AuditUpkeepParams{Now: time.Now(), Runner: "test"})
		require.NoError(t, err)
		require.True(t, res.Moved)
		return storetest.Harness{Store: e.store(t, schema), AuditRows: auditRows(e.admin, schema),
			ReopenFormat1: func(t *testing.T) { pgtest.ReopenFormat1(t, e.admin, schema) }}
	})
}

// TestAuditUpkeepOneReplicaAtATime: while a replica holds the upkeep's
// lock another's pass does nothing and says Busy; a pass leaves neither
// its lock nor its lock_timeout on the pooled connection, so the next
// pass of another replica runs.
func TestAuditUpkeepOneReplicaAtATime(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.migrate(t, "keybroker")
	ctx := t.Context()
	first := e.ownerStore(t, "keybroker")
	other, err := pgstore.New(ctx, pgstore.Config{Pool: pgtest.NewPool(t, e.migrator.URL), Schema: "keybroker"})
	require.NoError(t, err)

	holder := pgtest.NewPool(t, e.migrator.URL)
	conn, err := holder.Acquire(ctx)
	require.NoError(t, err)
	defer conn.Release()
	_, err = conn.Exec(ctx, `SELECT pg_advisory_lock($1)`, pgstore.AuditUpkeepLockKey("keybroker"))
	require.NoError(t, err)
	res, err := first.AuditUpkeep(ctx, broker.AuditUpkeepParams{Now: time.Now(), Runner: "a"})
	require.NoError(t, err)
	require.True(t, res.Busy, "another replica holds the lock")
	var kind string
	require.NoError(t, e.admin.QueryRow(ctx, `SELECT relkind::text FROM pg_class WHERE oid = 'keybroker.encryption_vault_audit'::regclass`).Scan(&kind))
	require.Equal(t, "r", kind, "a busy pass changes nothing")
	_, err = conn.Exec(ctx, `SELECT pg_advisory_unlock($1)`, pgstore.AuditUpkeepLockKey("keybroker"))
	require.NoError(t, err)

	res, err = first.AuditUpkeep(ctx, broker.AuditUpkeepParams{Now: time.Now(), Runner: "a"})
	require.NoError(t, err)
	require.True(t, res.Moved)
	var locks int
	require.NoError(t, e.admin.QueryRow(ctx, `SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND database = (SELECT oid FROM pg_database WHERE datname = current_database())`).Scan(&locks))
	require.Zero(t, locks, "the pass released its lock")
	for _, c := range e.migratorPool.AcquireAllIdle(ctx) {
		var timeout string
		require.NoError(t, c.QueryRow(ctx, `SHOW lock_timeout`).Scan(&timeout))
		c.Release()
		require.Equal(t, "0", timeout, "the pass reset its lock_timeout")
	}
	res, err = other.AuditUpkeep(ctx, broker.AuditUpkeepParams{Now: time.Now(), Runner: "b"})
	require.NoError(t, err)
	require.False(t, res.Busy)
}
