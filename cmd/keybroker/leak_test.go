package main

import (
	"os"
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package's tests when a goroutine they started
// outlives them: serve's keyring refresh, readiness poller, TLS reloader and systemd watchdog must end when it returns.
// It also removes the binary the process tests built.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// local-kms keeps its keys in goleveldb, whose memory-pool drainer
		// outlives DB.Close by up to a second by design (it waits for a
		// last pooled buffer, outside the close WaitGroup), longer than
		// goleak's retries. Only that function is ignored.
		goleak.IgnoreTopFunction("github.com/syndtr/goleveldb/leveldb.(*DB).mpoolDrain"),
		goleak.Cleanup(func(code int) {
			if binaryDir != "" {
				os.RemoveAll(binaryDir)
			}
			os.Exit(code)
		}),
	)
}
