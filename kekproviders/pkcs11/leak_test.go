package pkcs11_test

import (
	"testing"

	"go.uber.org/goleak"

	"github.com/keybroker/keybroker/kekproviders/pkcs11/softhsmtest"
)

// TestMain gives the tests a SoftHSM2 token store of their own and fails
// them when a goroutine they started outlives them: a call left running
// in a token must end, and Close must wait for it.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(softhsmtest.Wrap(m))
}
