package sqlitestore

import (
	"context"
	"database/sql"
	"encoding/base64"
	"fmt"
	"time"

	"github.com/keybroker/keybroker/broker"
)

// The data keys of cached envelope mode, as on PostgreSQL: a remote KEK
// on a single-node install keeps the KMS off the fetch path too.
var _ broker.DataKeyStore = (*Store)(nil)

// DataKeyList returns every data key, oldest first.
func (s *Store) DataKeyList(ctx context.Context) ([]broker.DataKey, error) {
	if s.closed.Load() {
		return nil, unavailable(ErrClosed)
	}
	rows, err := s.db.QueryContext(ctx, `SELECT id, wrapped_by, wrapped, created_at FROM kek_data_keys ORDER BY created_at, id`)
	if err != nil {
		return nil, interpretError(ctx, fmt.Errorf("data key list: %w", err))
	}
	defer rows.Close()
	var out []broker.DataKey
	for rows.Next() {
		var dk broker.DataKey
		var wrapped, created string
		if err := rows.Scan(&dk.ID, &dk.WrappedBy, &wrapped, &created); err != nil {
			return nil, interpretError(ctx, fmt.Errorf("data key list: %w", err))
		}
		if dk.Wrapped, err = base64.StdEncoding.DecodeString(wrapped); err != nil {
			return nil, fmt.Errorf("data key list: %s: wrapped is not base64: %w", dk.ID, err)
		}
		if dk.CreatedAt, err = parseTime("created_at", created); err != nil {
			return nil, err
		}
		out = append(out, dk)
	}
	if err := rows.Err(); err != nil {
		return nil, interpretError(ctx, fmt.Errorf("data key list: %w", err))
	}
	return out, nil
}

// DataKeyInsert stores a new data key.
func (s *Store) DataKeyInsert(ctx context.Context, dk broker.DataKey) error {
	return s.inWriteTx(ctx, func(tx *sql.Tx) error {
		now := formatTime(time.Now())
		_, err := tx.ExecContext(ctx, `INSERT INTO kek_data_keys (id, wrapped_by, wrapped, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5)`,
			dk.ID, dk.WrappedBy, base64.StdEncoding.EncodeToString(dk.Wrapped), formatTime(dk.CreatedAt), now)
		if err != nil {
			return interpretError(ctx, fmt.Errorf("data key insert: %w", err))
		}
		return nil
	})
}

// DataKeyRewrap replaces the wrap of data key id if fromKEK still wraps it.
func (s *Store) DataKeyRewrap(ctx context.Context, id, fromKEK string, wrapped []byte, toKEK string) (bool, error) {
	var moved bool
	err := s.inWriteTx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `UPDATE kek_data_keys SET wrapped_by = ?3, wrapped = ?4, updated_at = ?5 WHERE id = ?1 AND wrapped_by = ?2`,
			id, fromKEK, toKEK, base64.StdEncoding.EncodeToString(wrapped), formatTime(time.Now()))
		if err != nil {
			return interpretError(ctx, fmt.Errorf("data key rewrap: %w", err))
		}
		n, err := res.RowsAffected()
		moved = n == 1
		return err
	})
	return moved, err
}
