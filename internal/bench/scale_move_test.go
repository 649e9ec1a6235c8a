package bench

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/internal/testkit/pgtest"
)

// TestBenchScaleMove is the online move at scale, part of `make
// bench-scale` (KEYBROKER_BENCH_SCALE_MOVE=1 runs it alone at the
// KEYBROKER_BENCH_SCALE_* size): KEYBROKER_BENCH_SCALE_ROWS audit rows
// filled by SQL into an unpartitioned table (an install from before
// partitioning), then a server starts, and its upkeep moves the table
// under a partitioned one while the users' vaults are made (POST /init,
// each with its audit row) and fetches run. It reports how long the move
// took and what the writes saw meanwhile, and checks that no row was lost.
func TestBenchScaleMove(t *testing.T) {
	if os.Getenv("KEYBROKER_BENCH_SCALE") != "1" && os.Getenv("KEYBROKER_BENCH_SCALE_MOVE") != "1" {
		t.Skip("minutes of filling: run it with make bench-scale")
	}
	s := loadScaleSettings(t)
	ctx := context.Background()
	b := newScaleBench(t, s)
	role, adminURL := pgtest.NewPlainDatabase(t)
	srv := &scaleServer{t: t, s: s, b: b, url: role.URL, admin: pgtest.NewPool(t, adminURL),
		env: b.serverEnv("DATABASE_URL="+role.URL, newKEKEnv(), "KEYBROKER_RATE_LIMIT=0")}
	srv.cli("migrate")
	fillUnpartitioned(t, srv.admin, s) // audit rows only: the vaults come from POST /init
	var filled int64
	require.NoError(t, srv.admin.QueryRow(ctx, `SELECT count(*) FROM keybroker.encryption_vault_audit`).Scan(&filled))

	// The move is seen from outside, by the table's kind, every 50 ms.
	start := time.Now()
	moved := make(chan time.Duration, 1)
	go func() {
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for range tick.C {
			var kind string
			if err := srv.admin.QueryRow(ctx, `SELECT relkind::text FROM pg_class WHERE oid = 'keybroker.encryption_vault_audit'::regclass`).Scan(&kind); err == nil && kind == "p" {
				moved <- time.Since(start)
				return
			}
		}
	}()
	p, err := b.start(srv.env)
	require.NoError(t, err)
	srv.p = p
	initStart := time.Now()
	b.initUsers(p)
	initTook := time.Since(initStart)
	var during []scaleStep
	var took time.Duration
	for took == 0 {
		during = append(during, srv.measure(nil))
		select {
		case took = <-moved:
		default:
		}
		require.Less(t, len(during), 1000, "the move did not end")
	}
	after := srv.measure(nil)
	var total int64
	require.NoError(t, srv.admin.QueryRow(ctx, `SELECT count(*) FROM keybroker.encryption_vault_audit`).Scan(&total))
	require.GreaterOrEqual(t, total, filled+int64(s.users), "every filled row and every init's row is there")

	var rep strings.Builder
	fmt.Fprintf(&rep, "Move of an unpartitioned table of %s audit rows, filled by SQL, by the upkeep of a server starting on it; load average after: %s.\n\n",
		formatInt(filled), LoadAverage())
	rep.WriteString("| measure | |\n|---|--:|\n")
	fmt.Fprintf(&rep, "| server start to the table partitioned (check validated, key index built concurrently, swap) | %s |\n", took.Round(time.Millisecond))
	fmt.Fprintf(&rep, "| %d `POST /init` meanwhile (each writes a vault and an audit row) | %s, all 200 |\n", s.users, initTook.Round(time.Millisecond))
	for i, st := range during {
		fmt.Fprintf(&rep, "| `GET /key` window %d, during or right after the move | %s |\n", i+1, st)
	}
	fmt.Fprintf(&rep, "| `GET /key` after the move | %s |\n", after)
	fmt.Fprintf(&rep, "| rows after | %s (none lost) |\n", formatInt(total))
	fmt.Println(rep.String())
	if s.out == "-" {
		return
	}
	doc, err := os.ReadFile(s.out)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(s.out, []byte(ReplaceSection(string(doc), "scale-move", rep.String())), 0o644))
}
