package broker_test

import (
	"context"
	"log/slog"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/broker"
)

// BenchmarkRewrap measures the re-wrap job on KEYBROKER_BENCH_REWRAP_ROWS
// rows (default 100 000) under a local KEK, next to the time PostgreSQL
// takes for one plain UPDATE touching the same rows in the same database,
// and reports both rates and their ratio. Run it with `make bench-rewrap`;
// docs/rotation.md records the numbers.
func BenchmarkRewrap(b *testing.B) {
	if os.Getenv("KEYBROKER_BENCH_REWRAP") == "" {
		b.Skip("a minute of setup: run it with make bench-rewrap (KEYBROKER_BENCH_REWRAP=1)")
	}
	rows := 100_000
	var err error
	if s := os.Getenv("KEYBROKER_BENCH_REWRAP_ROWS"); s != "" {
		rows, err = strconv.Atoi(s)
		require.NoError(b, err)
	}
	e := newRewrapEnv(b)
	old, next := localKEK(b, "env-v1"), localKEK(b, "env-v2")
	e.seed(b, old, "user", rows, broker.FormatBound)
	ctx := context.Background()
	pgtest := func(sql string) {
		_, err := e.admin.Exec(ctx, sql)
		require.NoError(b, err)
	}
	pgtest(`VACUUM ANALYZE keybroker.encryption_vaults`)

	// The baseline: one statement rewriting the wrap columns of every row
	// (the index trigger fires for it too).
	start := time.Now()
	pgtest(`UPDATE keybroker.encryption_vaults SET wrapped_mk = wrapped_mk, wrap_iv = wrap_iv, key_check = key_check`)
	plain := time.Since(start)
	pgtest(`VACUUM ANALYZE keybroker.encryption_vaults`)

	batch := 0 // the default
	if s := os.Getenv("KEYBROKER_BENCH_REWRAP_BATCH"); s != "" {
		batch, err = strconv.Atoi(s)
		require.NoError(b, err)
	}
	job, err := broker.NewRewrapJob(broker.RewrapConfig{Store: e.store, Keyring: keyring(b, next, old),
		BatchSize: batch, Logger: slog.New(slog.DiscardHandler)})
	require.NoError(b, err)
	b.ResetTimer()
	start = time.Now()
	res, err := job.Run(ctx)
	elapsed := time.Since(start)
	b.StopTimer()
	require.NoError(b, err)
	require.EqualValues(b, rows, res.Done)

	b.ReportMetric(float64(rows)/elapsed.Seconds(), "rewrap-rows/s")
	b.ReportMetric(float64(rows)/plain.Seconds(), "update-rows/s")
	b.ReportMetric(elapsed.Seconds()/plain.Seconds(), "x-plain-update")
	b.Logf("%d rows: re-wrap job %v (%.0f rows/s), plain UPDATE %v (%.0f rows/s), ratio %.2f",
		rows, elapsed.Round(time.Millisecond), float64(rows)/elapsed.Seconds(),
		plain.Round(time.Millisecond), float64(rows)/plain.Seconds(), elapsed.Seconds()/plain.Seconds())
}
