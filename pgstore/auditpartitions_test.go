package pgstore_test

import (
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
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

// TestAuditRetentionDropKeepsTheDefaultPartition: while a pass detaches
// and drops partitions past the retention, a row that only the default
// partition takes (a clock a year ahead) is never refused, and every
// expired partition goes while the others and the default stay. A pass
// that detached the default partition for the drops refused such rows for
// as long as its detaches took.
func TestAuditRetentionDropKeepsTheDefaultPartition(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.migrate(t, "keybroker")
	ctx := t.Context()
	store := e.ownerStore(t, "keybroker")
	now := time.Now().UTC()
	// Partitions from twelve days ago: the first pass runs as then, the
	// second as now.
	for _, at := range []time.Time{now.AddDate(0, 0, -12), now} {
		_, err := store.AuditUpkeep(ctx, broker.AuditUpkeepParams{Now: at, Runner: "test"})
		require.NoError(t, err)
	}
	insert := func(at time.Time) error {
		_, err := e.admin.Exec(ctx, `INSERT INTO keybroker.encryption_vault_audit (id, user_id, action, status, created_at)
VALUES (gen_random_uuid()::text, 'u', 'fetch', 200, $1)`, at)
		return err
	}
	for day := 1; day <= 12; day++ {
		require.NoError(t, insert(now.AddDate(0, 0, -day)))
	}
	partitions := func() (names []string) {
		rows, err := e.admin.Query(ctx, `SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
WHERE i.inhparent = 'keybroker.encryption_vault_audit'::regclass ORDER BY 1`)
		require.NoError(t, err)
		names, err = pgx.CollectRows(rows, pgx.RowTo[string])
		require.NoError(t, err)
		return names
	}
	before := partitions()

	done := make(chan error, 1)
	var res *broker.AuditUpkeepResult
	go func() {
		var err error
		res, err = store.AuditUpkeep(ctx, broker.AuditUpkeepParams{Now: now, Retention: 5 * 24 * time.Hour, Runner: "test"})
		done <- err
	}()
	ahead := now.AddDate(1, 0, 0)
	inserts := 0
	for running := true; running; inserts++ {
		select {
		case err := <-done:
			require.NoError(t, err)
			running = false
		default:
		}
		require.NoError(t, insert(ahead), "a row for the default partition during the drops")
	}
	require.Positive(t, inserts)
	require.Len(t, res.Dropped, 8, "the moved table and the seven days that ended five days ago or earlier: %v", res.Dropped)
	after := partitions()
	require.Len(t, after, len(before)-len(res.Dropped))
	require.Contains(t, after, "encryption_vault_audit_default")
	for _, name := range res.Dropped {
		require.NotContains(t, after, name)
	}
	var kept, future int
	require.NoError(t, e.admin.QueryRow(ctx, `SELECT count(*) FILTER (WHERE created_at < $1), count(*) FILTER (WHERE created_at > $1)
FROM keybroker.encryption_vault_audit`, now).Scan(&kept, &future))
	require.Equal(t, 5, kept, "the rows of the last five days stay")
	require.Equal(t, inserts, future, "every row for the default partition is there")
}
