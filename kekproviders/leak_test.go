package kekproviders_test

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package's tests when a goroutine they started
// outlives them: a remote KEK opened through Open (a Vault token renewer,
// a gRPC connection) must end on Close.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// local-kms's goleveldb drainer outlives DB.Close by up to a second
		// by design (see kekproviders/awskms).
		goleak.IgnoreTopFunction("github.com/syndtr/goleveldb/leveldb.(*DB).mpoolDrain"),
	)
}
