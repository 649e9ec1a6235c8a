package sqlitestore

import (
	"context"
	"database/sql"
	"encoding/base64"
	"errors"
	"fmt"
	"time"

	"github.com/keybroker/keybroker/broker"
)

// The data keys of cached envelope mode, as on PostgreSQL: a remote KEK
// on a single-node install keeps the KMS off the fetch path too.

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
	rows.Close()
	if err := s.dataKeyWraps(ctx, out); err != nil {
		return nil, err
	}
	return out, nil
}

// DataKeyInsert stores dk as the newest data key if the newest is still
// after. Write transactions are serialised (BEGIN IMMEDIATE), so the
// check and the insert are atomic across processes sharing the file. Its
// created_at is dk.CreatedAt (now when zero), moved to a microsecond after
// the newest's when it is not later.
func (s *Store) DataKeyInsert(ctx context.Context, dk broker.DataKey, after string) (bool, error) {
	var inserted bool
	err := s.inWriteTx(ctx, func(tx *sql.Tx) error {
		newest, newestAt, err := newestDataKey(ctx, tx)
		if err != nil || newest != after {
			return err
		}
		created := dk.CreatedAt
		if created.IsZero() {
			created = time.Now()
		}
		created = created.UTC().Round(time.Microsecond)
		if newest != "" && !created.After(newestAt) {
			created = newestAt.Add(time.Microsecond)
		}
		_, err = tx.ExecContext(ctx, `INSERT INTO kek_data_keys (id, wrapped_by, wrapped, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?4)`,
			dk.ID, dk.WrappedBy, base64.StdEncoding.EncodeToString(dk.Wrapped), formatTime(created))
		if err != nil {
			return interpretError(ctx, fmt.Errorf("data key insert: %w", err))
		}
		if err := insertDataKeyWraps(ctx, tx, dk); err != nil {
			return err
		}
		inserted = true
		return nil
	})
	if err != nil {
		return false, err
	}
	return inserted, nil
}

// newestDataKey returns the newest data key's id and creation time; ""
// when there is none.
func newestDataKey(ctx context.Context, tx *sql.Tx) (string, time.Time, error) {
	var id, created string
	err := tx.QueryRowContext(ctx, `SELECT id, created_at FROM kek_data_keys ORDER BY created_at DESC, id DESC LIMIT 1`).Scan(&id, &created)
	if errors.Is(err, sql.ErrNoRows) {
		return "", time.Time{}, nil
	}
	if err != nil {
		return "", time.Time{}, interpretError(ctx, fmt.Errorf("data key newest: %w", err))
	}
	at, err := parseTime("created_at", created)
	return id, at, err
}

// DataKeyDelete deletes data key id if it is not the newest and no row
// with a server wrap names it, and records the id in
// kek_data_keys_deleted, whose triggers refuse any later row under it. One
// write transaction: no write of a row comes between the check and the
// delete.
func (s *Store) DataKeyDelete(ctx context.Context, id string) (bool, error) {
	var deleted bool
	err := s.inWriteTx(ctx, func(tx *sql.Tx) error {
		newest, _, err := newestDataKey(ctx, tx)
		if err != nil || newest == id {
			return err
		}
		var used bool
		if err := tx.QueryRowContext(ctx, `SELECT EXISTS (SELECT 1 FROM encryption_vaults WHERE kek_id = ?1 AND wrapped_mk IS NOT NULL)`, id).Scan(&used); err != nil {
			return interpretError(ctx, fmt.Errorf("data key delete: %w", err))
		}
		if used {
			return nil
		}
		res, err := tx.ExecContext(ctx, `DELETE FROM kek_data_keys WHERE id = ?1`, id)
		if err != nil {
			return interpretError(ctx, fmt.Errorf("data key delete: %w", err))
		}
		if n, err := res.RowsAffected(); err != nil || n == 0 {
			return err
		}
		if _, err := tx.ExecContext(ctx, `DELETE FROM kek_data_key_wraps WHERE data_key_id = ?1`, id); err != nil {
			return interpretError(ctx, fmt.Errorf("data key delete: %w", err))
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO kek_data_keys_deleted (id, deleted_at) VALUES (?1, ?2) ON CONFLICT (id) DO NOTHING`,
			id, formatTime(time.Now())); err != nil {
			return interpretError(ctx, fmt.Errorf("data key delete: %w", err))
		}
		deleted = true
		return nil
	})
	if err != nil {
		return false, err
	}
	return deleted, nil
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
