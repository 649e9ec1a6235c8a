package pgstore

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/keybroker/keybroker/broker"
)

// The re-wrap job's store side. Row-level security is forced and the
// runtime role has no BYPASSRLS, so a request's statement sees one user's
// vault only: candidates are listed from encryption_vault_kek_index, which
// a trigger keeps in step with encryption_vaults and which holds no key
// material (migration 0004). Rows are read and written in batches, each
// transaction scoped to exactly the users of its batch
// (app.current_user_ids, migration 0004), one statement per batch. One
// runner across replicas is a session-level advisory lock held on a
// connection of its own.

var _ broker.RewrapLocker = (*Store)(nil) // optional in the contract

func (s *Store) table(name string) string { return pgx.Identifier{s.schema, name}.Sanitize() }

// RewrapCandidates lists user ids of rows with a server wrap that the job
// must move (or, with q.OnActiveKEK, that are on the active KEK already;
// with q.LegacyOnly, that are in format 1), in user-id order after q.After.
func (s *Store) RewrapCandidates(ctx context.Context, q broker.RewrapQuery) ([]string, error) {
	// Every condition names $1, so that each statement has the same
	// parameters; format 1's is the partial index of the format1_closure migration.
	cond := `(kek_id <> $1 OR format_version = 1)`
	switch {
	case q.OnActiveKEK:
		cond = `kek_id = $1 AND format_version = 2`
	case q.LegacyOnly:
		cond = `format_version = 1 AND $1::text IS NOT NULL`
	}
	rows, err := s.pool.Query(ctx, `SELECT user_id FROM `+s.table("encryption_vault_kek_index")+`
WHERE wrapped AND NOT zero_knowledge AND `+cond+` AND user_id > $2
ORDER BY user_id LIMIT $3`, q.ActiveKEKID, q.After, q.Limit)
	if err != nil {
		return nil, interpretError(fmt.Errorf("rewrap candidates: %w", err))
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, interpretError(fmt.Errorf("rewrap candidates: %w", err))
	}
	return ids, nil
}

// KEKCounts counts rows per KEK id, format and mode.
func (s *Store) KEKCounts(ctx context.Context) ([]broker.KEKCount, error) {
	rows, err := s.pool.Query(ctx, `SELECT kek_id, format_version, wrapped, zero_knowledge, count(*)
FROM `+s.table("encryption_vault_kek_index")+` GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4`)
	if err != nil {
		return nil, interpretError(fmt.Errorf("kek counts: %w", err))
	}
	counts, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (broker.KEKCount, error) {
		var c broker.KEKCount
		err := row.Scan(&c.KEKID, &c.FormatVersion, &c.Wrapped, &c.ZeroKnowledge, &c.Rows)
		return c, err
	})
	if err != nil {
		return nil, interpretError(fmt.Errorf("kek counts: %w", err))
	}
	return counts, nil
}

// setBatchScope scopes a transaction to a list of users
// (app.current_user_ids, migration 0004): the rows of exactly those users,
// for the rest of the transaction.
const setBatchScope = `SELECT set_config('app.current_user_ids', $1::text[]::text, true)`

func checkBatch(userIDs []string) error {
	seen := make(map[string]bool, len(userIDs))
	for _, id := range userIDs {
		if id == "" || seen[id] {
			return fmt.Errorf("pgstore: %w: a batch needs distinct, non-empty user ids", broker.ErrInvalidArgument)
		}
		seen[id] = true
	}
	return nil
}

// RewrapRead reads the vaults of userIDs in one round trip: the batch
// scope and the select are pipelined, and PostgreSQL runs a pipeline as
// one implicit transaction, so the transaction-local scope covers the
// select. Users without a vault are left out.
func (s *Store) RewrapRead(ctx context.Context, userIDs []string) ([]*broker.Vault, error) {
	if err := checkBatch(userIDs); err != nil {
		return nil, err
	}
	b := &pgx.Batch{}
	b.Queue(setBatchScope, userIDs)
	var out []*broker.Vault
	b.Queue(`SELECT `+vaultColumns+` FROM `+s.table("encryption_vaults")+` WHERE user_id = ANY($1)`, userIDs).
		Query(func(rows pgx.Rows) error {
			for rows.Next() {
				v, err := scanVault(rows)
				if err != nil {
					return err
				}
				out = append(out, v)
			}
			return rows.Err()
		})
	if err := s.pool.SendBatch(ctx, b).Close(); err != nil {
		return nil, interpretError(fmt.Errorf("rewrap read: %w", err))
	}
	return out, nil
}

// RewrapApply writes, in one transaction scoped to the batch's users, each
// swap whose row still has the wrap of swap.Old, with its audit row, in
// one statement. The compare is part of the UPDATE's WHERE clause, so a
// user's concurrent change — committed before, or waited for on the row
// lock the UPDATE takes and then re-checked — makes the swap miss rather
// than clobber it; only wrap columns (and a missing key check value) are
// written.
func (s *Store) RewrapApply(ctx context.Context, swaps []broker.RewrapSwap) ([]bool, error) {
	n := len(swaps)
	users := make([]string, n)
	oldWrapped, oldIV, oldKEK := make([]*string, n), make([]*string, n), make([]string, n)
	newWrapped, newIV, newKEK, newCheck := make([]*string, n), make([]*string, n), make([]string, n), make([]*string, n)
	oldFormat, newFormat, status := make([]int32, n), make([]int32, n), make([]int32, n)
	auditID, action, note, at := make([]string, n), make([]string, n), make([]string, n), make([]time.Time, n)
	macs := make([][]byte, n)
	index := make(map[string]int, n)
	for i := range swaps {
		sw := &swaps[i]
		if sw.Old.UserID != sw.New.UserID || sw.Audit.UserID != sw.Old.UserID {
			return nil, fmt.Errorf("pgstore: %w: swap %d mixes users", broker.ErrInvalidArgument, i)
		}
		users[i] = sw.Old.UserID
		index[users[i]] = i
		oldWrapped[i], oldIV[i], oldFormat[i], oldKEK[i] = sw.Old.WrappedMK, sw.Old.WrapIV, int32(sw.Old.FormatVersion), sw.Old.KEKID
		newWrapped[i], newIV[i], newFormat[i], newKEK[i] = sw.New.WrappedMK, sw.New.WrapIV, int32(sw.New.FormatVersion), sw.New.KEKID
		newCheck[i] = sw.New.KeyCheck
		auditID[i], action[i], note[i], status[i], at[i] = sw.Audit.ID, string(sw.Audit.Action), sw.Audit.Context, int32(sw.Audit.Status), sw.Audit.CreatedAt
		macs[i] = sw.Audit.MAC
	}
	if err := checkBatch(users); err != nil {
		return nil, err
	}
	applied := make([]bool, n)
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		b := &pgx.Batch{}
		b.Queue(setBatchScope, users)
		b.Queue(s.rewrapApplySQL(), users, oldWrapped, oldIV, oldFormat, oldKEK,
			newWrapped, newIV, newFormat, newKEK, newCheck, auditID, action, note, status, at, macs).
			Query(func(rows pgx.Rows) error {
				for rows.Next() {
					var user string
					if err := rows.Scan(&user); err != nil {
						return err
					}
					applied[index[user]] = true
				}
				return rows.Err()
			})
		return tx.SendBatch(ctx, b).Close()
	})
	if err != nil {
		return nil, interpretError(fmt.Errorf("rewrap apply: %w", err))
	}
	return applied, nil
}

// rewrapApplySQL swaps the wrap columns of the rows whose wrap is still
// the old one, inserts an audit row for each row it swapped and returns
// their user ids.
func (s *Store) rewrapApplySQL() string {
	return `WITH swap AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::int[], $5::text[],
                         $6::text[], $7::text[], $8::int[], $9::text[], $10::text[],
                         $11::text[], $12::text[], $13::text[], $14::int[], $15::timestamptz[], $16::bytea[])
        AS t(user_id, old_wrapped, old_iv, old_format, old_kek, new_wrapped, new_iv, new_format, new_kek, new_check,
             audit_id, action, note, status, at, mac)
), moved AS (
    UPDATE ` + s.table("encryption_vaults") + ` v SET
        wrapped_mk = swap.new_wrapped, wrap_iv = swap.new_iv, format_version = swap.new_format,
        kek_id = swap.new_kek, key_check = coalesce(v.key_check, swap.new_check)
    FROM swap
    -- user_id = ANY($1) lets the planner find the rows through the
    -- primary key rather than scan the table for the join.
    WHERE v.user_id = ANY($1::text[]) AND v.user_id = swap.user_id AND NOT v.zero_knowledge AND v.wrapped_mk = swap.old_wrapped
      AND v.wrap_iv IS NOT DISTINCT FROM swap.old_iv AND v.format_version = swap.old_format AND v.kek_id = swap.old_kek
    RETURNING v.user_id
)
INSERT INTO ` + s.table("encryption_vault_audit") + ` (id, user_id, action, context, status, created_at, mac)
SELECT swap.audit_id, swap.user_id, swap.action, nullif(swap.note, ''), swap.status, swap.at, swap.mac
FROM swap JOIN moved USING (user_id)
RETURNING user_id`
}

// rewrapLockKey is the advisory lock of the job on schema: derived from the
// schema so that installs sharing a database do not wait for each other.
func rewrapLockKey(schema string) int64 {
	h := fnv.New64a()
	h.Write([]byte("keybroker/rewrap\x00" + schema))
	return int64(binary.BigEndian.Uint64(h.Sum(nil)))
}

// RewrapLock takes the job's session-level advisory lock on a connection
// of its own (outside the pool, so it cannot be handed to a request and
// the pool keeps its size). The lock lives as long as that connection:
// when the process dies or the connection is cut, PostgreSQL releases it
// and another replica's next attempt takes over. It returns
// broker.ErrRewrapBusy when another session holds the lock.
func (s *Store) RewrapLock(ctx context.Context, runner string) (broker.RewrapLease, error) {
	conn, err := pgx.ConnectConfig(ctx, s.pool.Config().ConnConfig.Copy())
	if err != nil {
		return nil, interpretError(fmt.Errorf("rewrap lock: connect: %w", err))
	}
	key := rewrapLockKey(s.schema)
	var got bool
	if err := conn.QueryRow(ctx, `SELECT pg_try_advisory_lock($1)`, key).Scan(&got); err != nil {
		_ = conn.Close(context.WithoutCancel(ctx))
		return nil, interpretError(fmt.Errorf("rewrap lock: %w", err))
	}
	if !got {
		_ = conn.Close(context.WithoutCancel(ctx))
		return nil, broker.ErrRewrapBusy
	}
	l := &rewrapLease{conn: conn, store: s, key: key, runner: runner}
	return l, nil
}

// rewrapLease is a held job lock and the connection that holds it.
type rewrapLease struct {
	mu     sync.Mutex
	conn   *pgx.Conn
	store  *Store
	key    int64
	runner string
	closed bool
}

// leaseTimeout bounds each statement on the lock's connection.
const leaseTimeout = 10 * time.Second

// leaseContext detaches a statement on the lock's connection from the
// run's cancellation: pgx closes a connection whose query is cancelled,
// and the server then drops the lock only when it notices — a cancelled
// run would leave the lock held for a moment after Run returned. Bounded
// by leaseTimeout instead.
func leaseContext(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), leaseTimeout)
}

// Held checks that the lock's connection is alive, which is what keeps
// the session lock.
func (l *rewrapLease) Held(ctx context.Context) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return errors.New("pgstore: rewrap lock released")
	}
	ctx, cancel := leaseContext(ctx)
	defer cancel()
	if _, err := l.conn.Exec(ctx, `SELECT 1`); err != nil {
		return interpretError(fmt.Errorf("rewrap lock: %w", err))
	}
	return nil
}

// Report writes p to the job's state row.
func (l *rewrapLease) Report(ctx context.Context, p broker.RewrapProgress) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	ctx, cancel := leaseContext(ctx)
	defer cancel()
	return l.report(ctx, p)
}

func (l *rewrapLease) report(ctx context.Context, p broker.RewrapProgress) error {
	var finished *time.Time
	if p.Finished {
		finished = &p.UpdatedAt
	}
	_, err := l.conn.Exec(ctx, `INSERT INTO `+l.store.table("encryption_vault_rewrap_state")+` AS s
    (singleton, runner, active_kek_id, started_at, updated_at, finished_at,
     rows_total, rows_done, rows_skipped, rows_failed, rows_per_second, last_error)
VALUES (true, $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, NULLIF($11, ''))
ON CONFLICT (singleton) DO UPDATE SET
    runner = EXCLUDED.runner, active_kek_id = EXCLUDED.active_kek_id, started_at = EXCLUDED.started_at,
    updated_at = EXCLUDED.updated_at, finished_at = EXCLUDED.finished_at, rows_total = EXCLUDED.rows_total,
    rows_done = EXCLUDED.rows_done, rows_skipped = EXCLUDED.rows_skipped, rows_failed = EXCLUDED.rows_failed,
    rows_per_second = EXCLUDED.rows_per_second, last_error = EXCLUDED.last_error`,
		l.runner, p.ActiveKEKID, p.StartedAt, p.UpdatedAt, finished,
		p.Total, p.Done, p.Skipped, p.Failed, p.RowsPerSecond, p.Error)
	if err != nil {
		return interpretError(fmt.Errorf("rewrap state: %w", err))
	}
	return nil
}

// Release records p, unlocks and closes the lock's connection. Closing
// alone would release the lock; unlocking first makes it explicit.
func (l *rewrapLease) Release(ctx context.Context, p broker.RewrapProgress) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil
	}
	l.closed = true
	ctx, cancel := leaseContext(ctx)
	defer cancel()
	reportErr := l.report(ctx, p)
	_, unlockErr := l.conn.Exec(ctx, `SELECT pg_advisory_unlock($1)`, l.key)
	closeErr := l.conn.Close(ctx)
	return errors.Join(reportErr, interpretError(unlockErr), interpretError(closeErr))
}

// RewrapState reads the job's state row and whether any session holds the
// job's lock now (pg_locks is readable by every role). A bigint advisory
// key shows in pg_locks as classid (high 32 bits) and objid (low 32
// bits) with objsubid 1.
func (s *Store) RewrapState(ctx context.Context) (*broker.RewrapState, error) {
	key := uint64(rewrapLockKey(s.schema))
	st := &broker.RewrapState{}
	err := s.pool.QueryRow(ctx, `SELECT EXISTS (
    SELECT 1 FROM pg_locks
    WHERE locktype = 'advisory' AND granted AND objsubid = 1
      AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
      AND classid = $1::bigint::oid AND objid = $2::bigint::oid)`,
		int64(key>>32), int64(key&0xffffffff)).Scan(&st.Running)
	if err != nil {
		return nil, interpretError(fmt.Errorf("rewrap state: %w", err))
	}
	var finished *time.Time
	var lastError *string
	err = s.pool.QueryRow(ctx, `SELECT runner, active_kek_id, started_at, updated_at, finished_at,
    rows_total, rows_done, rows_skipped, rows_failed, rows_per_second, last_error
FROM `+s.table("encryption_vault_rewrap_state")).Scan(
		&st.Runner, &st.ActiveKEKID, &st.StartedAt, &st.UpdatedAt, &finished,
		&st.Total, &st.Done, &st.Skipped, &st.Failed, &st.RowsPerSecond, &lastError)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return st, nil
	case err != nil:
		return nil, interpretError(fmt.Errorf("rewrap state: %w", err))
	}
	st.Finished = finished != nil
	if lastError != nil {
		st.Error = *lastError
	}
	return st, nil
}
