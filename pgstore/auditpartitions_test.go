package pgstore_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/broker/storetest"
	"github.com/keybroker/keybroker/internal/pgtest"
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
