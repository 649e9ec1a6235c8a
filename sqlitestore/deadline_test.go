package sqlitestore_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/broker"
)

// TestDeadlineEndsTheWaitForAnotherProcess: a request whose deadline
// passes while another process holds the write lock fails at its
// deadline, not at the (longer) busy timeout.
func TestDeadlineEndsTheWaitForAnotherProcess(t *testing.T) {
	t.Parallel()
	s := openStore(t, t.TempDir()) // default busy timeout: 5s
	holder, err := rawDB(t, s.Path()).Conn(t.Context())
	require.NoError(t, err)
	defer holder.Close()
	_, err = holder.ExecContext(t.Context(), `BEGIN IMMEDIATE`)
	require.NoError(t, err)
	defer func() { _, _ = holder.ExecContext(context.Background(), `ROLLBACK`) }()

	ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	err = s.InUserTx(ctx, "alice", func(tx broker.Tx) error {
		_, err := tx.VaultGet(ctx, true)
		return err
	})
	elapsed := time.Since(start)
	require.True(t, broker.IsUnavailable(err), "%v", err)
	require.Less(t, elapsed, 2*time.Second, "the wait must end with the request's deadline")
}
