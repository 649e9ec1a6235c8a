package bench

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/internal/testkit/pgtest"
	"github.com/keybroker/keybroker/pgstore"
)

// The fill of TestBenchScale and TestBenchScaleMove, by SQL as the
// superuser. A hundred million audit rows inserted the way fetches insert
// them — each row into three B-tree indexes, one of random UUIDs — take
// hours here: past a few million rows every insert dirties index pages
// that the next checkpoint writes whole to the WAL. Only today's partition
// is written that way, as the server's fetches write it, because it is the
// one their inserts share (its indexes are the ones that must stay in
// memory). Every earlier day, which fetches never touch, is filled like a
// restore: its partition detached, its indexes dropped, its rows
// inserted, its indexes built again by sorting, two days at a time, and
// attached back. Indexes built that way are denser than the ones inserts
// grow, so the database size per million fetches is read on today's
// partition.

// scaleFillWorkers is how many days are filled at once (2 cores).
const scaleFillWorkers = 2

// scaleFill is what fillScale made.
type scaleFill struct {
	took                 time.Duration
	todayRows, todaySize int64 // today's partition, filled as fetches fill it
}

// auditLayout gives a new database the day partitions an install that has
// run for s.days days has: its upkeep run once a day from then, the first
// of them moving the empty table (the first partition ends that day).
func auditLayout(t *testing.T, ownerURL string, s scaleSettings) {
	store, err := pgstore.New(t.Context(), pgstore.Config{Pool: pgtest.NewPool(t, ownerURL), Schema: "keybroker"})
	require.NoError(t, err)
	now := time.Now()
	for d := s.days - 1; d >= 0; d-- {
		_, err := store.AuditUpkeep(t.Context(), broker.AuditUpkeepParams{Now: now.AddDate(0, 0, -d), Runner: "bench-scale"})
		require.NoError(t, err)
	}
}

// fillScale adds s.vaults vaults (copies of a real row under new user
// ids: they fill the indexes; nobody fetches them) and s.rows audit rows
// as fetches write them (a random id, a user, its IP address and user
// agent), spread evenly over the last s.days days: today's share through
// the parent since midnight UTC, each earlier day's into its partition
// (see above). Then VACUUM ANALYZE, as autovacuum would have done by then.
func fillScale(t *testing.T, admin *pgxpool.Pool, s scaleSettings) scaleFill {
	start := time.Now()
	exec := func(sql string, args ...any) {
		t.Helper()
		_, err := admin.Exec(context.Background(), sql, args...)
		require.NoError(t, err, sql)
	}
	var cols string
	require.NoError(t, admin.QueryRow(t.Context(), `SELECT string_agg(quote_ident(column_name), ', ' ORDER BY ordinal_position)
FROM information_schema.columns WHERE table_schema = 'keybroker' AND table_name = 'encryption_vaults' AND column_name <> 'user_id'`).Scan(&cols))
	for from := int64(1); from <= s.vaults; from += scaleChunk {
		to := min(from+scaleChunk-1, s.vaults)
		exec(`INSERT INTO keybroker.encryption_vaults (user_id, `+cols+`)
SELECT 'fill-' || md5(g::text), `+cols+` FROM keybroker.encryption_vaults v, generate_series($1::bigint, $2::bigint) g
WHERE v.user_id = $3`, from, to, UserID(1))
	}
	exec(`VACUUM ANALYZE keybroker.encryption_vaults`)

	today := time.Now().UTC().Truncate(24 * time.Hour)
	perDay := s.rows / int64(s.days)
	var jobs []func(*pgxpool.Conn) error
	var mu sync.Mutex // the detaches and attaches, one at a time
	next := int64(1)
	for d := 1; d < s.days; d++ {
		day, first := today.AddDate(0, 0, -d), next
		next += perDay
		name := "keybroker." + day.Format("encryption_vault_audit_p20060102")
		jobs = append(jobs, func(c *pgxpool.Conn) error {
			return fillPartition(t, c, &mu, name, func(ctx context.Context, c *pgxpool.Conn) error {
				return insertAuditRows(t, c, name, first, perDay, day, 24*time.Hour, false)
			})
		})
	}
	runJobs(t, admin, jobs)
	t.Logf("%d earlier days filled in %s", s.days-1, time.Since(start).Round(time.Second))

	// Today's share, through the parent as fetches insert.
	sinceMidnight := max(time.Since(today).Truncate(time.Second), time.Second)
	conn, err := admin.Acquire(t.Context())
	require.NoError(t, err)
	require.NoError(t, insertAuditRows(t, conn, "keybroker.encryption_vault_audit", next, s.rows-(next-1), time.Now().Add(-sinceMidnight), sinceMidnight, true))
	conn.Release()
	todayName := "keybroker." + today.Format("encryption_vault_audit_p20060102")
	exec(`VACUUM ANALYZE ` + todayName)
	exec(`ANALYZE keybroker.encryption_vault_audit`)
	f := scaleFill{took: time.Since(start)}
	require.NoError(t, admin.QueryRow(t.Context(), `SELECT count(*), pg_total_relation_size('`+todayName+`') FROM `+todayName).Scan(&f.todayRows, &f.todaySize))
	return f
}

// scaleChunk is the rows of one INSERT.
const scaleChunk = 500_000

// insertAuditRows inserts n audit rows numbered from first into table,
// created at times spread over [from, from+span), in statements of
// scaleChunk rows. asFetches inserts them as fetches do: in the order of
// their times, with ids made as keybroker makes them (the milliseconds in
// base 32, then random characters: broker's newAuditID), which the primary
// key index takes at its right edge; otherwise the times are shuffled and
// the ids random UUIDs, for days whose indexes are built by sorting.
func insertAuditRows(t *testing.T, c *pgxpool.Conn, table string, first, n int64, from time.Time, span time.Duration, asFetches bool) error {
	ctx := context.Background()
	id, created := `gen_random_uuid()::text`, `$4::timestamptz + make_interval(secs => (g * 7919) % $5)`
	if asFetches {
		_, err := c.Exec(ctx, `CREATE OR REPLACE FUNCTION pg_temp.audit_id(at timestamptz) RETURNS text LANGUAGE sql AS $$
SELECT string_agg(substr('0123456789abcdefghijklmnopqrstuv', ((floor(extract(epoch FROM at) * 1000)::bigint >> (5 * (9 - i))) & 31)::int + 1, 1), '' ORDER BY i)
    || substr(md5(random()::text), 1, 11)
FROM generate_series(0, 9) i $$`)
		if err != nil {
			return err
		}
		id, created = `pg_temp.audit_id(at)`, `$4::timestamptz + make_interval(secs => (g - $6::bigint)::float8 * $5 / $7::bigint)`
	}
	secs := int64(span / time.Second)
	for lo := first; lo < first+n; lo += scaleChunk {
		hi := min(lo+scaleChunk-1, first+n-1)
		args := []any{lo, hi, scaleUsers, from, secs}
		if asFetches {
			args = append(args, first, n)
		}
		_, err := c.Exec(ctx, `INSERT INTO `+table+` (id, user_id, action, ip_address, user_agent, context, status, created_at)
SELECT `+id+`, 'fill-' || md5((g % $3)::text), 'fetch', '203.0.113.' || (g % 250),
    'Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36', NULL, 200, at
FROM generate_series($1::bigint, $2::bigint) g, LATERAL (SELECT `+created+` AS at) t
ORDER BY g`, args...)
		if err != nil {
			return fmt.Errorf("inserting audit rows %d–%d: %w", lo, hi, err)
		}
	}
	return nil
}

// scaleUsers is how many users the filled audit rows name: the filled
// vaults' (at the size), whatever s.vaults is.
const scaleUsers = 1_000_000

// fillPartition fills the partition name of the audit table like a
// restore: detached, its indexes dropped, filled by fill, its indexes
// built again, vacuumed and attached back with the same bound (ATTACH
// adopts the matching indexes and checks the bound in one scan).
func fillPartition(t *testing.T, c *pgxpool.Conn, mu *sync.Mutex, name string, fill func(context.Context, *pgxpool.Conn) error) error {
	ctx := context.Background()
	var bound string
	if err := c.QueryRow(ctx, `SELECT pg_get_expr(relpartbound, oid) FROM pg_class WHERE oid = $1::regclass`, name).Scan(&bound); err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	mu.Lock()
	_, err := c.Exec(ctx, `ALTER TABLE keybroker.encryption_vault_audit DETACH PARTITION `+name)
	mu.Unlock()
	if err != nil {
		return err
	}
	if err := withoutIndexes(ctx, c, name, func() error { return fill(ctx, c) }); err != nil {
		return err
	}
	if _, err := c.Exec(ctx, `VACUUM ANALYZE `+name); err != nil {
		return err
	}
	mu.Lock()
	defer mu.Unlock()
	_, err = c.Exec(ctx, `ALTER TABLE keybroker.encryption_vault_audit ATTACH PARTITION `+name+` `+bound)
	return err
}

// withoutIndexes drops table's indexes (the primary key and unique
// constraints with theirs), runs fill, and builds them again by the
// same names and definitions.
func withoutIndexes(ctx context.Context, c *pgxpool.Conn, table string, fill func() error) error {
	rows, err := c.Query(ctx, `SELECT 'ALTER TABLE ' || $1 || ' DROP CONSTRAINT ' || quote_ident(conname),
    'ALTER TABLE ' || $1 || ' ADD CONSTRAINT ' || quote_ident(conname) || ' ' || pg_get_constraintdef(oid)
FROM pg_constraint WHERE conrelid = $1::regclass AND contype IN ('p', 'u')
UNION ALL
SELECT 'DROP INDEX ' || indexrelid::regclass::text, pg_get_indexdef(indexrelid)
FROM pg_index WHERE indrelid = $1::regclass
    AND indexrelid NOT IN (SELECT conindid FROM pg_constraint WHERE conrelid = $1::regclass)`, table)
	if err != nil {
		return err
	}
	type index struct{ Drop, Create string }
	indexes, err := pgx.CollectRows(rows, pgx.RowToStructByPos[index])
	if err != nil {
		return err
	}
	for _, ix := range indexes {
		if _, err := c.Exec(ctx, ix.Drop); err != nil {
			return err
		}
	}
	if err := fill(); err != nil {
		return err
	}
	if _, err := c.Exec(ctx, `SET maintenance_work_mem = '512MB'`); err != nil {
		return err
	}
	for _, ix := range indexes {
		if _, err := c.Exec(ctx, ix.Create); err != nil {
			return err
		}
	}
	_, err = c.Exec(ctx, `RESET maintenance_work_mem`)
	return err
}

// runJobs runs jobs on scaleFillWorkers connections of pool and fails the
// test on the first error, after every worker stopped.
func runJobs(t *testing.T, pool *pgxpool.Pool, jobs []func(*pgxpool.Conn) error) {
	queue := make(chan func(*pgxpool.Conn) error, len(jobs))
	for _, j := range jobs {
		queue <- j
	}
	close(queue)
	errs := make(chan error, scaleFillWorkers)
	for range scaleFillWorkers {
		go func() {
			c, err := pool.Acquire(context.Background())
			if err != nil {
				errs <- err
				return
			}
			defer c.Release()
			for j := range queue {
				if err := j(c); err != nil {
					for range queue { // drain: the other worker stops too
					}
					errs <- err
					return
				}
			}
			errs <- nil
		}()
	}
	for range scaleFillWorkers {
		require.NoError(t, <-errs)
	}
}

// fillUnpartitioned fills the unpartitioned audit table of
// TestBenchScaleMove with s.rows rows spread over the last s.days days,
// like a restore (see above): its indexes dropped, the rows inserted on
// scaleFillWorkers connections, the indexes built again.
func fillUnpartitioned(t *testing.T, admin *pgxpool.Pool, s scaleSettings) {
	start := time.Now()
	const table = "keybroker.encryption_vault_audit"
	span := time.Duration(s.days) * 24 * time.Hour
	from := time.Now().Add(-span)
	var jobs []func(*pgxpool.Conn) error
	for lo := int64(1); lo <= s.rows; lo += scaleChunk {
		n := min(scaleChunk, s.rows-lo+1)
		jobs = append(jobs, func(c *pgxpool.Conn) error { return insertAuditRows(t, c, table, lo, n, from, span, false) })
	}
	c, err := admin.Acquire(t.Context())
	require.NoError(t, err)
	defer c.Release()
	require.NoError(t, withoutIndexes(t.Context(), c, table, func() error {
		runJobs(t, admin, jobs)
		return nil
	}))
	_, err = c.Exec(t.Context(), `VACUUM ANALYZE `+table)
	require.NoError(t, err)
	t.Logf("%d audit rows filled in %s", s.rows, time.Since(start).Round(time.Second))
}
