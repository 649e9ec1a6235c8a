package pgstore

import (
	"context"
	"encoding/base64"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/keybroker/keybroker/broker"
)

// Tamper evidence of the audit trail (docs/audit.md): the wraps of the
// audit key, every user's rows with their MACs, the checkpoints and the
// marks.
var _ broker.AuditSealStore = (*Store)(nil)

// auditAllRows lets the transaction read every user's audit rows (the
// policy encryption_vault_audit_all_rows_read of 0010_audit_seal.sql).
const auditAllRows = "SELECT set_config('app.audit_all_rows', 'on', true)"

// AuditKeyWraps lists every wrap of the audit key.
func (s *Store) AuditKeyWraps(ctx context.Context) ([]broker.AuditKeyWrap, error) {
	rows, err := s.pool.Query(ctx, `SELECT id, wrapped_by, wrapped FROM `+s.table("encryption_vault_audit_keys")+` ORDER BY created_at, wrapped_by`)
	if err != nil {
		return nil, interpretError(fmt.Errorf("audit key wraps: %w", err))
	}
	var out []broker.AuditKeyWrap
	for rows.Next() {
		var w broker.AuditKeyWrap
		var wrapped string
		if err := rows.Scan(&w.ID, &w.WrappedBy, &wrapped); err != nil {
			rows.Close()
			return nil, interpretError(fmt.Errorf("audit key wraps: %w", err))
		}
		if w.Wrapped, err = base64.StdEncoding.DecodeString(wrapped); err != nil {
			rows.Close()
			return nil, fmt.Errorf("pgstore: audit key wraps: %s/%s is not base64: %w", w.ID, w.WrappedBy, err)
		}
		out = append(out, w)
	}
	if err := rows.Err(); err != nil {
		return nil, interpretError(fmt.Errorf("audit key wraps: %w", err))
	}
	return out, nil
}

// AuditKeyWrapInsert stores w unless the key already has a wrap by that KEK.
func (s *Store) AuditKeyWrapInsert(ctx context.Context, w broker.AuditKeyWrap) error {
	_, err := s.pool.Exec(ctx, `INSERT INTO `+s.table("encryption_vault_audit_keys")+` (id, wrapped_by, wrapped)
VALUES ($1, $2, $3) ON CONFLICT (id, wrapped_by) DO NOTHING`, w.ID, w.WrappedBy, base64.StdEncoding.EncodeToString(w.Wrapped))
	if err != nil {
		return interpretError(fmt.Errorf("audit key wrap insert: %w", err))
	}
	return nil
}

// inAllRows runs fn in a read-only transaction that may read every
// user's audit rows.
func (s *Store) inAllRows(ctx context.Context, what string, fn func(pgx.Tx) error) error {
	err := pgx.BeginTxFunc(ctx, s.pool, pgx.TxOptions{AccessMode: pgx.ReadOnly}, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, auditAllRows); err != nil {
			return err
		}
		return fn(tx)
	})
	if err != nil {
		return interpretError(fmt.Errorf("%s: %w", what, err))
	}
	return nil
}

// AuditRows returns every user's rows r selects, with their MACs.
func (s *Store) AuditRows(ctx context.Context, r broker.AuditRange) ([]broker.AuditEntry, error) {
	q := `SELECT id, user_id, action, COALESCE(ip_address, ''), COALESCE(user_agent, ''), COALESCE(context, ''), status, created_at, mac
FROM ` + s.table("encryption_vault_audit") + ` WHERE created_at >= $1 AND created_at < $2`
	args := []any{r.From, r.To}
	if r.After != nil {
		q += ` AND (created_at, id) > ($3, $4)`
		args = append(args, r.After.CreatedAt, r.After.ID)
	}
	q += ` ORDER BY created_at, id`
	if r.Limit > 0 {
		q += fmt.Sprintf(` LIMIT %d`, r.Limit)
	}
	var out []broker.AuditEntry
	err := s.inAllRows(ctx, "audit rows", func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, q, args...)
		if err != nil {
			return err
		}
		out, err = pgx.CollectRows(rows, scanAuditRow)
		return err
	})
	return out, err
}

// scanAuditRow reads an audit row with its MAC.
func scanAuditRow(row pgx.CollectableRow) (broker.AuditEntry, error) {
	var e broker.AuditEntry
	var status int32
	err := row.Scan(&e.ID, &e.UserID, &e.Action, &e.IPAddress, &e.UserAgent, &e.Context, &status, &e.CreatedAt, &e.MAC)
	e.Status = int(status)
	return e, err
}

// AuditOldest returns the oldest row's created_at.
func (s *Store) AuditOldest(ctx context.Context) (time.Time, bool, error) {
	var oldest *time.Time
	err := s.inAllRows(ctx, "audit oldest", func(tx pgx.Tx) error {
		return tx.QueryRow(ctx, `SELECT min(created_at) FROM `+s.table("encryption_vault_audit")).Scan(&oldest)
	})
	if err != nil || oldest == nil {
		return time.Time{}, false, err
	}
	return *oldest, true, nil
}

const checkpointColumns = `n, window_start, window_end, row_count, entries, prev_mac, key_id, mac, created_at`

// AuditCheckpoints returns up to limit checkpoints after n = after in
// ascending order, or the newest one when after < 0.
func (s *Store) AuditCheckpoints(ctx context.Context, after int64, limit int) ([]broker.AuditCheckpoint, error) {
	q := `SELECT ` + checkpointColumns + ` FROM ` + s.table("encryption_vault_audit_checkpoints") + ` WHERE n > $1 ORDER BY n LIMIT $2`
	if after < 0 {
		q = `SELECT ` + checkpointColumns + ` FROM ` + s.table("encryption_vault_audit_checkpoints") + ` WHERE $1::bigint < 0 ORDER BY n DESC LIMIT $2`
	}
	rows, err := s.pool.Query(ctx, q, after, limit)
	if err != nil {
		return nil, interpretError(fmt.Errorf("audit checkpoints: %w", err))
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (broker.AuditCheckpoint, error) {
		var cp broker.AuditCheckpoint
		err := row.Scan(&cp.N, &cp.From, &cp.To, &cp.Rows, &cp.Entries, &cp.PrevMAC, &cp.KeyID, &cp.MAC, &cp.CreatedAt)
		return cp, err
	})
	if err != nil {
		return nil, interpretError(fmt.Errorf("audit checkpoints: %w", err))
	}
	return out, nil
}

// AuditCheckpointInsert stores cp unless checkpoint cp.N exists.
func (s *Store) AuditCheckpointInsert(ctx context.Context, cp broker.AuditCheckpoint) (bool, error) {
	tag, err := s.pool.Exec(ctx, `INSERT INTO `+s.table("encryption_vault_audit_checkpoints")+`
    (n, window_start, window_end, row_count, entries, prev_mac, key_id, mac)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (n) DO NOTHING`,
		cp.N, cp.From, cp.To, cp.Rows, nonNil(cp.Entries), cp.PrevMAC, cp.KeyID, cp.MAC)
	if err != nil {
		return false, interpretError(fmt.Errorf("audit checkpoint insert: %w", err))
	}
	return tag.RowsAffected() == 1, nil
}

func nonNil(b []byte) []byte {
	if b == nil {
		return []byte{}
	}
	return b
}

// AuditMarks lists every retention and erasure mark.
func (s *Store) AuditMarks(ctx context.Context) ([]broker.AuditMark, error) {
	rows, err := s.pool.Query(ctx, `SELECT id, kind, created_at, retained_before, entries, key_id, mac FROM `+
		s.table("encryption_vault_audit_marks")+` ORDER BY created_at, id`)
	if err != nil {
		return nil, interpretError(fmt.Errorf("audit marks: %w", err))
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (broker.AuditMark, error) {
		var m broker.AuditMark
		var before *time.Time
		err := row.Scan(&m.ID, &m.Kind, &m.CreatedAt, &before, &m.Entries, &m.KeyID, &m.MAC)
		if before != nil {
			m.Before = *before
		}
		return m, err
	})
	if err != nil {
		return nil, interpretError(fmt.Errorf("audit marks: %w", err))
	}
	return out, nil
}

// AuditMarkInsert stores m.
func (s *Store) AuditMarkInsert(ctx context.Context, m broker.AuditMark) error {
	return auditMarkInsert(ctx, s.pool, s.table("encryption_vault_audit_marks"), m)
}

// execer is a pool or a transaction.
type execer interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
}

func auditMarkInsert(ctx context.Context, db execer, table string, m broker.AuditMark) error {
	var before *time.Time
	if !m.Before.IsZero() {
		before = &m.Before
	}
	_, err := db.Exec(ctx, `INSERT INTO `+table+` (id, kind, created_at, retained_before, entries, key_id, mac)
VALUES ($1, $2, $3, $4, $5, $6, $7)`, m.ID, string(m.Kind), m.CreatedAt, before, m.Entries, m.KeyID, m.MAC)
	if err != nil {
		return interpretError(fmt.Errorf("audit mark insert: %w", err))
	}
	return nil
}
