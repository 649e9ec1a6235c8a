package broker_test

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package's tests when a goroutine they started
// outlives them: the audit group commit, the data-key refresh and the re-wrap job must all end with their callers.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// local-kms keeps its keys in goleveldb, whose memory-pool drainer
		// outlives DB.Close by up to a second by design (it waits for a
		// last pooled buffer, outside the close WaitGroup), longer than
		// goleak's retries. Only that function is ignored.
		goleak.IgnoreTopFunction("github.com/syndtr/goleveldb/leveldb.(*DB).mpoolDrain"),
	)
}
