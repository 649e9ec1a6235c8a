package vaultapi_test

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package's tests when a goroutine they started
// outlives them: readiness polls, the rate limiter and the servers of the tests must end with them.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
