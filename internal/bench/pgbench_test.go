package bench

import (
	"context"
	"os/exec"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/internal/testkit/pgtest"
)

// TestPgbenchPacedKeepsToItsRate: with a rate, pgbench runs about that
// many transactions a second, not as many as it can, and every one of
// them is read back from its log.
func TestPgbenchPacedKeepsToItsRate(t *testing.T) {
	t.Parallel()
	if _, err := exec.LookPath("pgbench"); err != nil {
		t.Skip("pgbench is not installed (it ships with the PostgreSQL client)")
	}
	dbURL := pgtest.NewDatabase(t)
	const rate = 100
	res, err := Pgbench(context.Background(), dbURL, "SELECT 1;\n", 2, rate, 2*time.Second, t.TempDir())
	require.NoError(t, err)
	require.Zero(t, res.Errors)
	// Poisson arrivals at 100/s for 2 s: 200 on average, and an unpaced
	// SELECT 1 runs thousands a second.
	require.InDelta(t, 2*rate, res.OK, 80)
	require.Len(t, res.Latencies, res.OK)
	require.Positive(t, res.Latencies[0])
}
