package pgstore

import (
	"context"
	"encoding/base64"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/keybroker/keybroker/broker"
)

var _ broker.DataKeyStore = (*Store)(nil)

func (s *Store) dataKeysTable() string {
	return pgx.Identifier{s.schema, "kek_data_keys"}.Sanitize()
}

// DataKeyList returns every data key, oldest first.
func (s *Store) DataKeyList(ctx context.Context) ([]broker.DataKey, error) {
	rows, err := s.pool.Query(ctx, `SELECT id, wrapped_by, wrapped, created_at FROM `+s.dataKeysTable()+` ORDER BY created_at, id`)
	if err != nil {
		return nil, interpretError(fmt.Errorf("data key list: %w", err))
	}
	var out []broker.DataKey
	for rows.Next() {
		var dk broker.DataKey
		var wrapped string
		if err := rows.Scan(&dk.ID, &dk.WrappedBy, &wrapped, &dk.CreatedAt); err != nil {
			rows.Close()
			return nil, interpretError(fmt.Errorf("data key list: %w", err))
		}
		if dk.Wrapped, err = base64.StdEncoding.DecodeString(wrapped); err != nil {
			rows.Close()
			return nil, fmt.Errorf("data key list: %s: wrapped is not base64: %w", dk.ID, err)
		}
		out = append(out, dk)
	}
	if err := rows.Err(); err != nil {
		return nil, interpretError(fmt.Errorf("data key list: %w", err))
	}
	return out, nil
}

// DataKeyInsert stores a new data key.
func (s *Store) DataKeyInsert(ctx context.Context, dk broker.DataKey) error {
	_, err := s.pool.Exec(ctx, `INSERT INTO `+s.dataKeysTable()+` (id, wrapped_by, wrapped, created_at, updated_at) VALUES ($1, $2, $3, $4, $4)`,
		dk.ID, dk.WrappedBy, base64.StdEncoding.EncodeToString(dk.Wrapped), dk.CreatedAt)
	if err != nil {
		return interpretError(fmt.Errorf("data key insert: %w", err))
	}
	return nil
}

// DataKeyRewrap replaces the wrap of data key id if fromKEK still wraps it.
func (s *Store) DataKeyRewrap(ctx context.Context, id, fromKEK string, wrapped []byte, toKEK string) (bool, error) {
	tag, err := s.pool.Exec(ctx, `UPDATE `+s.dataKeysTable()+` SET wrapped_by = $3, wrapped = $4, updated_at = now() WHERE id = $1 AND wrapped_by = $2`,
		id, fromKEK, toKEK, base64.StdEncoding.EncodeToString(wrapped))
	if err != nil {
		return false, interpretError(fmt.Errorf("data key rewrap: %w", err))
	}
	return tag.RowsAffected() == 1, nil
}
