package pgstore_test

import (
	"testing"

	"github.com/keybroker/keybroker/broker/storetest"
	"github.com/keybroker/keybroker/pgstore"
	"github.com/stretchr/testify/require"
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
