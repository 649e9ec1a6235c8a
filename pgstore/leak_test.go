package pgstore_test

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package's tests when a goroutine they started
// outlives them: pools and the re-wrap lease must end with their tests.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
