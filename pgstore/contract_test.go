package pgstore_test

import (
	"crypto/rand"
	"encoding/hex"
	"testing"

	"github.com/keybroker/keybroker/broker/storetest"
	"github.com/keybroker/keybroker/internal/testkit/pgtest"
)

// TestStoreContract runs the store contract suite as the non-superuser
// runtime role: a superuser would bypass row-level security and the suite
// would prove nothing about it. Each subtest gets a schema of its own.
func TestStoreContract(t *testing.T) {
	t.Parallel()
	storetest.Run(t, newEnv(t).harness)
}

// TestDataKeyContract runs the data-key part of the contract as the
// runtime role, each subtest in a schema of its own.
func TestDataKeyContract(t *testing.T) {
	t.Parallel()
	storetest.RunDataKeys(t, newEnv(t).harness)
}

// harness migrates a new schema, whose name needs quoting, grants the
// runtime role what keybroker's runtime needs (the erasure's DELETE on
// the audit table included), and opens the store on it as that role.
func (e *env) harness(t *testing.T, _ bool) storetest.Harness {
	schema := `kb "contract" ` + randomHex(6)
	e.migrate(t, schema)
	grantErase(t, e, schema)
	return storetest.Harness{Store: e.store(t, schema), AuditRows: auditRows(e.admin, schema),
		ReopenFormat1: func(t *testing.T) { pgtest.ReopenFormat1(t, e.admin, schema) }}
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
