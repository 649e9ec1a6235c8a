package bench

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/internal/testkit/pgtest"
)

// PostgreSQL's CPU grows by what a query spent in a backend: the table's
// PostgreSQL column reads the server's processes, not the harness's.
func TestPostgresCPUCountsABackendsWork(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, pgtest.AdminURL())
	require.NoError(t, err)
	defer conn.Close(ctx)
	before := PostgresCPU()
	require.Positive(t, before, "no process named postgres on this machine: the test PostgreSQL is local")
	var n int64
	require.NoError(t, conn.QueryRow(ctx, "SELECT count(*) FROM generate_series(1, 5000000)").Scan(&n))
	require.EqualValues(t, 5000000, n)
	require.GreaterOrEqual(t, PostgresCPU()-before, 100*time.Millisecond, "the backend's work is not counted")
}
