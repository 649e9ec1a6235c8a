package sqlitestore_test

import (
	"testing"

	"github.com/keybroker/keybroker/broker/admintest"
)

// TestAdminContract runs the admin contract on one SQLite store.
func TestAdminContract(t *testing.T) {
	t.Parallel()
	admintest.Run(t, openStore(t, t.TempDir()))
}
