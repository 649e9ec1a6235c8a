package jwtauth_test

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package's tests when a goroutine they started
// outlives them: the JWKS cache's refresh loop must end on Close.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
