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
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/keybroker/keybroker/broker"
)

// The re-wrap job's store side. Row-level security is forced and the
// runtime role has no BYPASSRLS, so no statement sees more than one user's
// vault: candidates are listed from encryption_vault_kek_index, which a
// trigger keeps in step with encryption_vaults and which holds no key
// material (migration 0004). Rows are read and written in batches: one
// transaction per batch, each statement scoped to its row's user with
// set_config, pipelined in one round trip. One runner across replicas is a
// session-level advisory lock held on a connection of its own.

var (
	_ broker.RewrapStore      = (*Store)(nil)
	_ broker.RewrapBatchStore = (*Store)(nil)
	_ broker.RewrapLocker     = (*Store)(nil)
)

func (s *Store) table(name string) string { return pgx.Identifier{s.schema, name}.Sanitize() }

// RewrapCandidates lists user ids of rows with a server wrap that the job
// must move (or, with q.OnActiveKEK, that are on the active KEK already),
// in user-id order after q.After.
func (s *Store) RewrapCandidates(ctx context.Context, q broker.RewrapQuery) ([]string, error) {
	cond := `(kek_id <> $1 OR format_version = 1)`
	if q.OnActiveKEK {
		cond = `kek_id = $1 AND format_version = 2`
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

// RewrapRead reads the vaults of userIDs, each in its own user's scope, in
// one round trip: a pipelined batch runs as one implicit transaction, so
// each transaction-local scope covers the select after it. Users without
// a vault are left out.
func (s *Store) RewrapRead(ctx context.Context, userIDs []string) ([]*broker.Vault, error) {
	var out []*broker.Vault
	b := &pgx.Batch{}
	for _, id := range userIDs {
		if id == "" {
			return nil, fmt.Errorf("pgstore: %w: empty user id", broker.ErrInvalidArgument)
		}
		b.Queue(setScope, id)
		b.Queue(s.sql.vaultGet, id).QueryRow(func(row pgx.Row) error {
			v, err := scanVault(row)
			if errors.Is(err, pgx.ErrNoRows) {
				return nil
			}
			if err == nil {
				out = append(out, v)
			}
			return err
		})
	}
	if err := s.pool.SendBatch(ctx, b).Close(); err != nil {
		return nil, interpretError(fmt.Errorf("rewrap read: %w", err))
	}
	return out, nil
}

// RewrapApply writes each swap whose row still has the wrap of swap.Old,
// with its audit row, in one transaction; every statement runs in its
// row's user scope. The compare is part of the UPDATE's WHERE clause, so a
// user's concurrent change — committed before, or waited for by the row
// lock the UPDATE takes — makes the swap miss rather than clobber it.
func (s *Store) RewrapApply(ctx context.Context, swaps []broker.RewrapSwap) ([]bool, error) {
	applied := make([]bool, len(swaps))
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		b := &pgx.Batch{}
		for i := range swaps {
			sw := &swaps[i]
			if sw.Old.UserID == "" || sw.Old.UserID != sw.New.UserID || sw.Audit.UserID != sw.Old.UserID {
				return fmt.Errorf("swap %d: %w: one non-empty user id per swap", i, broker.ErrInvalidArgument)
			}
			b.Queue(setScope, sw.Old.UserID)
			b.Queue(s.rewrapSwapSQL(),
				sw.Old.UserID, sw.Old.WrappedMK, sw.Old.WrapIV, sw.Old.FormatVersion, sw.Old.KEKID,
				sw.New.WrappedMK, sw.New.WrapIV, sw.New.FormatVersion, sw.New.KEKID, sw.New.KeyCheck,
				sw.Audit.ID, string(sw.Audit.Action), sw.Audit.Context, sw.Audit.Status, sw.Audit.CreatedAt,
			).Exec(func(tag pgconn.CommandTag) error {
				applied[i] = tag.RowsAffected() == 1
				return nil
			})
		}
		return tx.SendBatch(ctx, b).Close()
	})
	if err != nil {
		return nil, interpretError(fmt.Errorf("rewrap apply: %w", err))
	}
	return applied, nil
}

// rewrapSwapSQL updates the wrap columns only when they are unchanged and
// inserts the audit row only when the update happened.
func (s *Store) rewrapSwapSQL() string {
	return `WITH moved AS (
    UPDATE ` + s.table("encryption_vaults") + ` SET
        wrapped_mk = $6, wrap_iv = $7, format_version = $8, kek_id = $9, key_check = coalesce(key_check, $10)
    WHERE user_id = $1 AND NOT zero_knowledge AND wrapped_mk = $2 AND wrap_iv IS NOT DISTINCT FROM $3
      AND format_version = $4 AND kek_id = $5
    RETURNING user_id)
INSERT INTO ` + s.table("encryption_vault_audit") + ` (id, user_id, action, context, status, created_at)
SELECT $11, user_id, $12, NULLIF($13, ''), $14, $15 FROM moved`
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

// Held checks that the lock's connection is alive, which is what keeps
// the session lock.
func (l *rewrapLease) Held(ctx context.Context) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return errors.New("pgstore: rewrap lock released")
	}
	if _, err := l.conn.Exec(ctx, `SELECT 1`); err != nil {
		return interpretError(fmt.Errorf("rewrap lock: %w", err))
	}
	return nil
}

// Report writes p to the job's state row.
func (l *rewrapLease) Report(ctx context.Context, p broker.RewrapProgress) error {
	l.mu.Lock()
	defer l.mu.Unlock()
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
