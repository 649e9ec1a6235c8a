package pgstore

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/keybroker/keybroker/broker"
)

// The audit table's upkeep on PostgreSQL. encryption_vault_audit is
// partitioned by range of created_at, one partition per UTC day
// (encryption_vault_audit_pYYYYMMDD); the table keybroker or mana-auth
// created before is moved over whole as the first partition (rows before a
// cutover), nothing copied (auditmove.go). Each pass, under an advisory
// lock so that one replica works at a time:
//
//   - finishes a detach a crashed pass left pending;
//   - creates the partitions of the next AuditPartitionsAhead days: an
//     empty table attached with ATTACH PARTITION, which takes a SHARE
//     UPDATE EXCLUSIVE lock on the parent, one that inserts never wait for;
//   - with a retention, detaches (plainly, in one transaction whose lock
//     is waited for AuditDetachLockTimeout at most) and drops each
//     partition whose rows all passed it: no DELETE, so no dead rows and
//     no vacuum.
//
// Every DDL statement runs with lock_timeout AuditLockTimeout: one that
// cannot get its lock at once (a long report holding the table) gives up
// rather than queue, because a queued lock request blocks the fetches
// that come after it. The next pass tries again.

// AuditPartitionsAhead is how many days of partitions the upkeep keeps
// ahead of now. The previous release does not create partitions: it can
// serve alone this long after the last run of this one.
const AuditPartitionsAhead = 14

// AuditLockTimeout bounds every lock wait of the upkeep's DDL.
const AuditLockTimeout = 2 * time.Second

const (
	auditTable     = "encryption_vault_audit"
	auditUpkeep    = "encryption_vault_audit_upkeep"
	auditDefault   = "encryption_vault_audit_default"
	partitionDay   = 24 * time.Hour
	partitionNames = "encryption_vault_audit_p20060102"
)

var _ broker.AuditKeeper = (*Store)(nil)

// isAuditPartition reports whether name is one of the audit table's
// partitions: a day's or the moved table.
func isAuditPartition(name string) bool {
	return name == auditDefault || strings.HasPrefix(name, "encryption_vault_audit_p2") || strings.HasPrefix(name, "encryption_vault_audit_before_")
}

// auditUpkeepLockKey is the advisory lock of the upkeep on schema.
func auditUpkeepLockKey(schema string) int64 {
	h := fnv.New64a()
	h.Write([]byte("keybroker/audit-upkeep\x00" + schema))
	return int64(binary.BigEndian.Uint64(h.Sum(nil)))
}

// AuditUpkeep runs one pass of the upkeep (see above), and records it. It
// needs the role that owns the audit table (the one that migrates): a
// runtime role with DML grants only gets a permission error, recorded.
func (s *Store) AuditUpkeep(ctx context.Context, p broker.AuditUpkeepParams) (*broker.AuditUpkeepResult, error) {
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return nil, interpretError(fmt.Errorf("audit upkeep: %w", err))
	}
	defer conn.Release()
	key := auditUpkeepLockKey(s.schema)
	var got bool
	if err := conn.QueryRow(ctx, `SELECT pg_try_advisory_lock($1)`, key).Scan(&got); err != nil {
		return nil, interpretError(fmt.Errorf("audit upkeep: lock: %w", err))
	}
	if !got {
		return &broker.AuditUpkeepResult{Busy: true}, nil
	}
	u := &upkeep{conn: conn.Conn(), schema: s.schema, p: p, res: &broker.AuditUpkeepResult{}}
	defer func() {
		// The session's lock and settings must not outlive the pass on a
		// pooled connection: one that cannot reset them is closed.
		ctx := context.WithoutCancel(ctx)
		_, err := conn.Exec(ctx, `SELECT pg_advisory_unlock($1)`, key)
		if err == nil {
			_, err = conn.Exec(ctx, `RESET lock_timeout`)
		}
		if err != nil {
			_ = conn.Conn().Close(ctx)
		}
	}()
	if _, err := conn.Exec(ctx, fmt.Sprintf(`SET lock_timeout = %d`, AuditLockTimeout.Milliseconds())); err != nil {
		return nil, interpretError(fmt.Errorf("audit upkeep: %w", err))
	}
	runErr := u.run(ctx)
	if err := u.record(ctx, runErr); err != nil && runErr == nil {
		runErr = err
	}
	if runErr != nil {
		return u.res, interpretError(fmt.Errorf("audit upkeep: %w", runErr))
	}
	return u.res, nil
}

// upkeep is one pass on one connection that holds the lock.
type upkeep struct {
	conn   *pgx.Conn
	schema string
	p      broker.AuditUpkeepParams
	res    *broker.AuditUpkeepResult
}

func (u *upkeep) ident(name string) string { return pgx.Identifier{u.schema, name}.Sanitize() }

func (u *upkeep) run(ctx context.Context) error {
	kind, err := relKind(ctx, u.conn, u.schema, auditTable)
	if err != nil {
		return err
	}
	if kind != 'p' {
		if err := u.move(ctx); err != nil {
			return fmt.Errorf("moving the table to partitions: %w", err)
		}
		u.res.Moved = true
	}
	if err := u.ensureDefault(ctx); err != nil {
		return err
	}
	parts, err := listPartitions(ctx, u.conn, u.schema)
	if err != nil {
		return err
	}
	if err := u.finishDetaches(ctx, parts); err != nil {
		return err
	}
	if err := u.createAhead(ctx, u.conn, parts); err != nil {
		return err
	}
	return u.dropExpired(ctx, parts)
}

// record writes the pass into the upkeep table.
func (u *upkeep) record(ctx context.Context, runErr error) error {
	var msg *string
	if runErr != nil {
		m := runErr.Error()
		msg = &m
	}
	_, err := u.conn.Exec(context.WithoutCancel(ctx), `UPDATE `+u.ident(auditUpkeep)+` SET last_run_at = now(), last_runner = $1,
    last_error = $2, dropped_partitions = dropped_partitions + $3, dropped_rows = dropped_rows + $4`,
		u.p.Runner, msg, len(u.res.Dropped), u.res.Deleted)
	if err != nil {
		return fmt.Errorf("recording the run: %w", err)
	}
	return nil
}

// relKind returns pg_class.relkind of schema.name, 0 when it is missing.
func relKind(ctx context.Context, q querier, schema, name string) (byte, error) {
	var kind string
	err := q.QueryRow(ctx, `SELECT c.relkind::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = $1 AND c.relname = $2`, schema, name).Scan(&kind)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("reading the kind of %s: %w", name, err)
	}
	return kind[0], nil
}

// dbtx is a connection or a transaction (whose Begin is a savepoint).
type dbtx interface {
	querier
	Begin(ctx context.Context) (pgx.Tx, error)
}

// querier is what the upkeep and the status read with.
type querier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

var _ querier = (*pgxpool.Pool)(nil)

// partition is one partition of the audit table, from its bound.
type partition struct {
	name          string
	from, to      *time.Time // nil: MINVALUE (from) or MAXVALUE (to)
	rows          int64      // pg_class.reltuples; -1 when never analysed
	bytes         int64
	detachPending bool
	isDefault     bool // the DEFAULT partition (from and to nil)
}

// listPartitions reads the audit table's partitions in bound order, the
// default partition last. The
// bounds are read back as timestamptz in SQL, whatever the session's
// TimeZone and DateStyle made pg_get_expr print.
func listPartitions(ctx context.Context, q querier, schema string) ([]partition, error) {
	rows, err := q.Query(ctx, `SELECT c.relname,
    (regexp_match(pg_get_expr(c.relpartbound, c.oid), 'FROM \(''([^'']+)''\)'))[1]::timestamptz,
    (regexp_match(pg_get_expr(c.relpartbound, c.oid), 'TO \(''([^'']+)''\)'))[1]::timestamptz,
    c.reltuples::bigint, pg_total_relation_size(c.oid), i.inhdetachpending,
    pg_get_expr(c.relpartbound, c.oid) = 'DEFAULT'
FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
WHERE i.inhparent = (SELECT p.oid FROM pg_class p JOIN pg_namespace n ON n.oid = p.relnamespace
                     WHERE n.nspname = $1 AND p.relname = $2)
ORDER BY 7, 2 NULLS FIRST`, schema, auditTable)
	if err != nil {
		return nil, fmt.Errorf("listing the partitions: %w", err)
	}
	parts, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (partition, error) {
		var p partition
		err := row.Scan(&p.name, &p.from, &p.to, &p.rows, &p.bytes, &p.detachPending, &p.isDefault)
		return p, err
	})
	if err != nil {
		return nil, fmt.Errorf("listing the partitions: %w", err)
	}
	return parts, nil
}

// finishDetaches completes and drops the partitions a crashed pass left
// detaching (DETACH … CONCURRENTLY interrupted between its transactions).
func (u *upkeep) finishDetaches(ctx context.Context, parts []partition) error {
	for _, p := range parts {
		if !p.detachPending {
			continue
		}
		if _, err := u.conn.Exec(ctx, `ALTER TABLE `+u.ident(auditTable)+` DETACH PARTITION `+u.ident(p.name)+` FINALIZE`); err != nil {
			return fmt.Errorf("finishing the detach of %s: %w", p.name, err)
		}
		if p.isDefault {
			continue // attached again by ensureDefault
		}
		if err := u.drop(ctx, p); err != nil {
			return err
		}
	}
	return nil
}

// createAhead creates the daily partitions from the end of the last one
// up to AuditPartitionsAhead days after now. After a long pause (no
// partition reaches yesterday) it starts at today rather than fill the
// past.
func (u *upkeep) createAhead(ctx context.Context, db dbtx, parts []partition) error {
	today := u.p.Now.UTC().Truncate(partitionDay)
	end := today.AddDate(0, 0, AuditPartitionsAhead)
	start := today
	for _, p := range parts {
		if !p.isDefault && p.to != nil && !p.to.Before(today.AddDate(0, 0, -1)) && p.to.After(start) {
			start = p.to.UTC()
		}
	}
	cols, err := u.columns(ctx, db)
	if err != nil {
		return err
	}
	hasDefault := slices.ContainsFunc(parts, func(p partition) bool { return p.isDefault && !p.detachPending })
	for day := start; day.Before(end); day = day.Add(partitionDay) {
		name := day.Format(partitionNames)
		from, to := `'`+day.Format(time.RFC3339)+`'`, `'`+day.Add(partitionDay).Format(time.RFC3339)+`'`
		err := pgx.BeginFunc(ctx, db, func(tx pgx.Tx) error {
			// LIKE copies the columns, defaults, NOT NULL and CHECK
			// constraints; ATTACH adds the parent's indexes and foreign
			// keys, on an empty table in no time.
			stmts := []string{`CREATE TABLE ` + u.ident(name) + ` (LIKE ` + u.ident(auditTable) + ` INCLUDING DEFAULTS INCLUDING CONSTRAINTS)`}
			if hasDefault {
				// Rows the default partition caught for this day (a
				// clock far ahead) move into it first: ATTACH checks
				// that the default holds none. Copied by the parent's
				// column list, so columns added later come along.
				where := ` WHERE created_at >= ` + from + ` AND created_at < ` + to
				stmts = append(stmts,
					`INSERT INTO `+u.ident(name)+` (`+cols+`) SELECT `+cols+` FROM ONLY `+u.ident(auditDefault)+where,
					`DELETE FROM ONLY `+u.ident(auditDefault)+where)
			}
			stmts = append(stmts, `ALTER TABLE `+u.ident(auditTable)+` ATTACH PARTITION `+u.ident(name)+` FOR VALUES FROM (`+from+`) TO (`+to+`)`)
			for _, stmt := range stmts {
				if _, err := tx.Exec(ctx, stmt); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("creating partition %s: %w", name, err)
		}
		u.res.Created = append(u.res.Created, name)
	}
	return nil
}

// columns is the parent's column list, quoted, in order.
func (u *upkeep) columns(ctx context.Context, db dbtx) (string, error) {
	var cols string
	err := db.QueryRow(ctx, `SELECT string_agg(quote_ident(attname), ', ' ORDER BY attnum) FROM pg_attribute
WHERE attrelid = $1::regclass AND attnum > 0 AND NOT attisdropped`, u.ident(auditTable)).Scan(&cols)
	if err != nil {
		return "", fmt.Errorf("reading the columns: %w", err)
	}
	return cols, nil
}

// ensureDefault creates the default partition when it is missing and
// attaches it when it is detached: the partition of every row no day
// partition takes (a clock far ahead, or behind the oldest partition),
// so that no write ever fails for want of a partition. Attaching it scans
// it under its own lock and a SHARE UPDATE EXCLUSIVE one on the parent.
func (u *upkeep) ensureDefault(ctx context.Context) error {
	kind, err := relKind(ctx, u.conn, u.schema, auditDefault)
	if err != nil {
		return err
	}
	if kind == 0 {
		if _, err := u.conn.Exec(ctx, `CREATE TABLE `+u.ident(auditDefault)+` (LIKE `+u.ident(auditTable)+` INCLUDING DEFAULTS INCLUDING CONSTRAINTS)`); err != nil {
			return fmt.Errorf("creating the default partition: %w", err)
		}
	}
	var attached bool
	err = u.conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_inherits WHERE inhrelid = $1::regclass)`, u.ident(auditDefault)).Scan(&attached)
	if err != nil {
		return fmt.Errorf("reading the default partition: %w", err)
	}
	if attached {
		return nil
	}
	if _, err := u.conn.Exec(ctx, `ALTER TABLE `+u.ident(auditTable)+` ATTACH PARTITION `+u.ident(auditDefault)+` DEFAULT`); err != nil {
		return fmt.Errorf("attaching the default partition: %w", err)
	}
	return nil
}

// dropExpired detaches and drops each partition that ends at or before
// now minus the retention. Without a retention it keeps everything.
//
// The expired partitions are detached plainly, all in one transaction:
// an ACCESS EXCLUSIVE lock on the parent for the moment the catalog
// changes take, waited for AuditDetachLockTimeout at most (the time
// fetches may queue behind it) and tried again a few times. DETACH …
// CONCURRENTLY would spare that moment but waits, twice, for every
// transaction older than itself, and PostgreSQL refuses it while a default
// partition is attached, which then had to be detached plainly anyway
// (the lock the plain detach takes) and attached again. Each detached
// partition is then dropped in a transaction of its own: the unlinking of
// its files happens at commit, under no lock but the partition's own.
func (u *upkeep) dropExpired(ctx context.Context, parts []partition) error {
	if u.p.Retention <= 0 {
		return nil
	}
	cutoff := u.p.Now.Add(-u.p.Retention)
	var expired []partition
	for _, p := range parts {
		if !p.detachPending && !p.isDefault && p.to != nil && !p.to.After(cutoff) {
			expired = append(expired, p)
		}
	}
	// The default partition's own expired rows (rare: a clock behind).
	if _, err := u.conn.Exec(ctx, `DELETE FROM ONLY `+u.ident(auditDefault)+` WHERE created_at < $1`, cutoff); err != nil {
		return fmt.Errorf("deleting expired rows of the default partition: %w", err)
	}
	if len(expired) == 0 {
		return nil
	}
	if err := u.detach(ctx, expired); err != nil {
		return err
	}
	for _, p := range expired {
		if err := u.drop(ctx, p); err != nil {
			return err
		}
	}
	return nil
}

// AuditDetachLockTimeout bounds the wait for the lock of the detach of
// expired partitions, the one statement of the upkeep whose lock fetches
// wait for.
const AuditDetachLockTimeout = 200 * time.Millisecond

// detach detaches parts plainly in one transaction (see dropExpired).
func (u *upkeep) detach(ctx context.Context, parts []partition) error {
	var err error
	for attempt := range 5 {
		if attempt > 0 && !sleepCtx(ctx, time.Duration(attempt)*time.Second) {
			return ctx.Err()
		}
		err = pgx.BeginFunc(ctx, u.conn, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, fmt.Sprintf(`SET LOCAL lock_timeout = %d`, AuditDetachLockTimeout.Milliseconds())); err != nil {
				return err
			}
			for _, p := range parts {
				if _, err := tx.Exec(ctx, `ALTER TABLE `+u.ident(auditTable)+` DETACH PARTITION `+u.ident(p.name)); err != nil {
					return fmt.Errorf("%s: %w", p.name, err)
				}
			}
			return nil
		})
		if err == nil {
			return nil
		}
	}
	return fmt.Errorf("detaching the expired partitions: %w", err)
}

// sleepCtx pauses for d, reporting false when ctx ended first.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// drop drops a detached partition, which nothing reads any more.
func (u *upkeep) drop(ctx context.Context, p partition) error {
	if _, err := u.conn.Exec(ctx, `DROP TABLE `+u.ident(p.name)); err != nil {
		return fmt.Errorf("dropping partition %s: %w", p.name, err)
	}
	u.res.Dropped = append(u.res.Dropped, p.name)
	u.res.Deleted += max(p.rows, 0)
	return nil
}
