package pgstore_test

import (
	"crypto/rand"
	"encoding/hex"
	"testing"

	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/broker/storetest"
	"github.com/keybroker/keybroker/internal/pgtest"
)

// TestStoreContract runs the store contract suite as the non-superuser
// runtime role: a superuser would bypass row-level security and the suite
// would prove nothing about it. Each subtest gets a schema of its own.
func TestStoreContract(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	storetest.Run(t, func(t *testing.T) storetest.Harness {
		schema := "kb_" + randomHex(6)
		e.migrate(t, schema)
		return storetest.Harness{Store: e.store(t, schema), AuditRows: auditRows(e.admin, schema),
			Format1Open: func(t *testing.T) broker.Store {
				schema := "kb_" + randomHex(6)
				e.migrate(t, schema)
				pgtest.ReopenFormat1(t, e.admin, schema)
				return e.store(t, schema)
			}}
	})
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// TestDataKeyContract runs the data-key contract as the runtime role, each
// subtest in a schema of its own.
func TestDataKeyContract(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	storetest.RunDataKeys(t, func(t *testing.T) broker.Store {
		schema := "kb_" + randomHex(6)
		e.migrate(t, schema)
		return e.store(t, schema)
	})
}
