package sqlitestore

import (
	"context"
	"database/sql"
	"fmt"
	"time"

	"github.com/keybroker/keybroker/broker"
)

// AuditRetentionBatch is how many audit rows one retention transaction
// deletes: each holds the write lock for a few milliseconds, so fetches
// wait no longer than that behind it.
const AuditRetentionBatch = 1000

var _ broker.AuditKeeper = (*Store)(nil)

// AuditUpkeep deletes the audit rows created before p.Now-p.Retention,
// oldest first, AuditRetentionBatch rows per transaction, through the
// created_at index; without a retention it deletes nothing. Either way it
// records the run.
func (s *Store) AuditUpkeep(ctx context.Context, p broker.AuditUpkeepParams) (*broker.AuditUpkeepResult, error) {
	res := &broker.AuditUpkeepResult{}
	var runErr error
	if p.Retention > 0 {
		cutoff := formatTime(p.Now.Add(-p.Retention))
		for {
			var n int64
			runErr = s.inWriteTx(ctx, func(tx *sql.Tx) error {
				r, err := tx.ExecContext(ctx, `DELETE FROM encryption_vault_audit WHERE rowid IN (
    SELECT rowid FROM encryption_vault_audit WHERE created_at < ?1 ORDER BY created_at LIMIT ?2)`, cutoff, AuditRetentionBatch)
				if err != nil {
					return interpretError(ctx, fmt.Errorf("audit retention: %w", err))
				}
				n, err = r.RowsAffected()
				return err
			})
			res.Deleted += n
			if runErr != nil || n < AuditRetentionBatch {
				break
			}
		}
	}
	var msg *string
	if runErr != nil {
		m := runErr.Error()
		msg = &m
	}
	err := s.inWriteTx(context.WithoutCancel(ctx), func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `UPDATE encryption_vault_audit_upkeep SET last_run_at = ?1, last_runner = ?2, last_error = ?3,
    dropped_rows = dropped_rows + ?4`, formatTime(time.Now()), p.Runner, msg, res.Deleted)
		return err
	})
	if runErr != nil {
		return res, runErr
	}
	if err != nil {
		return res, interpretError(ctx, fmt.Errorf("audit retention: recording the run: %w", err))
	}
	return res, nil
}

// AuditStatus counts the rows exactly (an embedded store is small) and
// reads the oldest and newest from the created_at index.
func (s *Store) AuditStatus(ctx context.Context) (*broker.AuditStatus, error) {
	st := &broker.AuditStatus{}
	var oldest, newest, lastRun, runner, lastErr sql.NullString
	err := s.db.QueryRowContext(ctx, `SELECT (SELECT count(*) FROM encryption_vault_audit),
    (SELECT min(created_at) FROM encryption_vault_audit), (SELECT max(created_at) FROM encryption_vault_audit),
    last_run_at, last_runner, last_error, dropped_rows FROM encryption_vault_audit_upkeep`).Scan(
		&st.Rows, &oldest, &newest, &lastRun, &runner, &lastErr, &st.Deleted)
	if err != nil {
		return nil, interpretError(ctx, fmt.Errorf("audit status: %w", err))
	}
	for _, f := range []struct {
		col string
		in  sql.NullString
		out **time.Time
	}{{"oldest", oldest, &st.Oldest}, {"newest", newest, &st.Newest}, {"last_run_at", lastRun, &st.LastRun}} {
		if *f.out, err = parseNullTime(f.col, f.in); err != nil {
			return nil, err
		}
	}
	st.LastRunner, st.LastError = runner.String, lastErr.String
	return st, nil
}
