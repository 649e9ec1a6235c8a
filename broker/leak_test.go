package broker_test

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package's tests when a goroutine they started
// outlives them: the audit group commit, the data-key refresh and the re-wrap job must all end with their callers.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
