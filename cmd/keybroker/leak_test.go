package main

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package's tests when a goroutine they started
// outlives them: serve's keyring refresh, readiness poller, TLS reloader and systemd watchdog must end when it returns.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
