package sqlitestore

import (
	"context"
	"database/sql"
	"encoding/base64"
	"fmt"
	"time"

	"github.com/keybroker/keybroker/broker"
)

// Tamper evidence of the audit trail (docs/audit.md): the wraps of the
// audit key, every user's rows with their MACs, the checkpoints and the
// marks. Timestamps are fixed-width UTC text, so text order is time
// order.
var _ broker.AuditSealStore = (*Store)(nil)

// query runs a read on the store's connections.
func (s *Store) query(ctx context.Context, what, q string, args ...any) (*sql.Rows, error) {
	if s.closed.Load() {
		return nil, unavailable(ErrClosed)
	}
	rows, err := s.db.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, interpretError(ctx, fmt.Errorf("%s: %w", what, err))
	}
	return rows, nil
}

// AuditKeyWraps lists every wrap of the audit key.
func (s *Store) AuditKeyWraps(ctx context.Context) ([]broker.AuditKeyWrap, error) {
	rows, err := s.query(ctx, "audit key wraps", `SELECT id, wrapped_by, wrapped FROM encryption_vault_audit_keys ORDER BY created_at, wrapped_by`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []broker.AuditKeyWrap
	for rows.Next() {
		var w broker.AuditKeyWrap
		var wrapped string
		if err := rows.Scan(&w.ID, &w.WrappedBy, &wrapped); err != nil {
			return nil, interpretError(ctx, fmt.Errorf("audit key wraps: %w", err))
		}
		if w.Wrapped, err = base64.StdEncoding.DecodeString(wrapped); err != nil {
			return nil, fmt.Errorf("sqlitestore: audit key wraps: %s/%s is not base64: %w", w.ID, w.WrappedBy, err)
		}
		out = append(out, w)
	}
	if err := rows.Err(); err != nil {
		return nil, interpretError(ctx, fmt.Errorf("audit key wraps: %w", err))
	}
	return out, nil
}

// AuditKeyWrapInsert stores w unless the key already has a wrap by that KEK.
func (s *Store) AuditKeyWrapInsert(ctx context.Context, w broker.AuditKeyWrap) error {
	return s.inWriteTx(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `INSERT INTO encryption_vault_audit_keys (id, wrapped_by, wrapped) VALUES (?1, ?2, ?3)
ON CONFLICT (id, wrapped_by) DO NOTHING`, w.ID, w.WrappedBy, base64.StdEncoding.EncodeToString(w.Wrapped))
		if err != nil {
			return interpretError(ctx, fmt.Errorf("audit key wrap insert: %w", err))
		}
		return nil
	})
}

// AuditRows returns every user's rows r selects, with their MACs.
func (s *Store) AuditRows(ctx context.Context, r broker.AuditRange) ([]broker.AuditEntry, error) {
	q := `SELECT ` + sqlAuditColumns + `, mac FROM encryption_vault_audit WHERE created_at >= ?1 AND created_at < ?2`
	args := []any{formatTime(r.From), formatTime(r.To)}
	if r.After != nil {
		q += ` AND (created_at > ?3 OR (created_at = ?3 AND id > ?4))`
		args = append(args, formatTime(r.After.CreatedAt), r.After.ID)
	}
	q += ` ORDER BY created_at, id`
	if r.Limit > 0 {
		q += fmt.Sprintf(` LIMIT %d`, r.Limit)
	}
	rows, err := s.query(ctx, "audit rows", q, args...)
	if err != nil {
		return nil, err
	}
	return scanAuditRowsMAC(ctx, rows, "audit rows", true)
}

// AuditOldest returns the oldest row's created_at.
func (s *Store) AuditOldest(ctx context.Context) (time.Time, bool, error) {
	rows, err := s.query(ctx, "audit oldest", `SELECT min(created_at) FROM encryption_vault_audit`)
	if err != nil {
		return time.Time{}, false, err
	}
	defer rows.Close()
	var oldest sql.NullString
	if rows.Next() {
		if err := rows.Scan(&oldest); err != nil {
			return time.Time{}, false, interpretError(ctx, fmt.Errorf("audit oldest: %w", err))
		}
	}
	if err := rows.Err(); err != nil || !oldest.Valid {
		return time.Time{}, false, interpretError(ctx, err)
	}
	t, err := parseTime("created_at", oldest.String)
	return t, err == nil, err
}

// AuditCheckpoints returns up to limit checkpoints after n = after in
// ascending order, or the newest one when after < 0.
func (s *Store) AuditCheckpoints(ctx context.Context, after int64, limit int) ([]broker.AuditCheckpoint, error) {
	const cols = `SELECT n, window_start, window_end, row_count, entries, prev_mac, key_id, mac, created_at FROM encryption_vault_audit_checkpoints`
	q := cols + ` WHERE n > ?1 ORDER BY n LIMIT ?2`
	if after < 0 {
		q = cols + ` WHERE ?1 < 0 ORDER BY n DESC LIMIT ?2`
	}
	rows, err := s.query(ctx, "audit checkpoints", q, after, limit)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []broker.AuditCheckpoint
	for rows.Next() {
		var cp broker.AuditCheckpoint
		var from, to, created string
		if err := rows.Scan(&cp.N, &from, &to, &cp.Rows, &cp.Entries, &cp.PrevMAC, &cp.KeyID, &cp.MAC, &created); err != nil {
			return nil, interpretError(ctx, fmt.Errorf("audit checkpoints: %w", err))
		}
		for _, t := range []struct {
			dst  *time.Time
			col  string
			text string
		}{{&cp.From, "window_start", from}, {&cp.To, "window_end", to}, {&cp.CreatedAt, "created_at", created}} {
			if *t.dst, err = parseTime(t.col, t.text); err != nil {
				return nil, fmt.Errorf("sqlitestore: audit checkpoints: %w", err)
			}
		}
		out = append(out, cp)
	}
	if err := rows.Err(); err != nil {
		return nil, interpretError(ctx, fmt.Errorf("audit checkpoints: %w", err))
	}
	return out, nil
}

// AuditCheckpointInsert stores cp unless checkpoint cp.N exists.
func (s *Store) AuditCheckpointInsert(ctx context.Context, cp broker.AuditCheckpoint) (bool, error) {
	var inserted bool
	err := s.inWriteTx(ctx, func(tx *sql.Tx) error {
		entries := cp.Entries
		if entries == nil {
			entries = []byte{}
		}
		r, err := tx.ExecContext(ctx, `INSERT INTO encryption_vault_audit_checkpoints
    (n, window_start, window_end, row_count, entries, prev_mac, key_id, mac)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT (n) DO NOTHING`,
			cp.N, formatTime(cp.From), formatTime(cp.To), cp.Rows, entries, cp.PrevMAC, cp.KeyID, cp.MAC)
		if err != nil {
			return interpretError(ctx, fmt.Errorf("audit checkpoint insert: %w", err))
		}
		n, err := r.RowsAffected()
		inserted = n == 1
		return err
	})
	return inserted, err
}

// AuditMarks lists every retention and erasure mark.
func (s *Store) AuditMarks(ctx context.Context) ([]broker.AuditMark, error) {
	rows, err := s.query(ctx, "audit marks", `SELECT id, kind, created_at, retained_before, entries, key_id, mac
FROM encryption_vault_audit_marks ORDER BY created_at, id`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []broker.AuditMark
	for rows.Next() {
		var m broker.AuditMark
		var kind, created string
		var before sql.NullString
		if err := rows.Scan(&m.ID, &kind, &created, &before, &m.Entries, &m.KeyID, &m.MAC); err != nil {
			return nil, interpretError(ctx, fmt.Errorf("audit marks: %w", err))
		}
		m.Kind = broker.AuditMarkKind(kind)
		if m.CreatedAt, err = parseTime("created_at", created); err != nil {
			return nil, fmt.Errorf("sqlitestore: audit marks: %w", err)
		}
		if before.Valid {
			if m.Before, err = parseTime("retained_before", before.String); err != nil {
				return nil, fmt.Errorf("sqlitestore: audit marks: %w", err)
			}
		}
		out = append(out, m)
	}
	if err := rows.Err(); err != nil {
		return nil, interpretError(ctx, fmt.Errorf("audit marks: %w", err))
	}
	return out, nil
}

// AuditMarkInsert stores m.
func (s *Store) AuditMarkInsert(ctx context.Context, m broker.AuditMark) error {
	return s.inWriteTx(ctx, func(tx *sql.Tx) error { return auditMarkInsert(ctx, tx, m) })
}

func auditMarkInsert(ctx context.Context, tx *sql.Tx, m broker.AuditMark) error {
	var before *string
	if !m.Before.IsZero() {
		b := formatTime(m.Before)
		before = &b
	}
	_, err := tx.ExecContext(ctx, `INSERT INTO encryption_vault_audit_marks (id, kind, created_at, retained_before, entries, key_id, mac)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)`, m.ID, string(m.Kind), formatTime(m.CreatedAt), before, m.Entries, m.KeyID, m.MAC)
	if err != nil {
		return interpretError(ctx, fmt.Errorf("audit mark insert: %w", err))
	}
	return nil
}
