package pgstore

import (
	"context"
	"encoding/base64"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/keybroker/keybroker/broker"
)

// The wraps of a data key beyond its first (migration 0011): one row per
// data key and KEK, when several KEKs wrap every data key.

func (s *Store) dataKeyWrapsTable() string {
	return pgx.Identifier{s.schema, "kek_data_key_wraps"}.Sanitize()
}

// dataKeyWraps adds to list the other wraps of each data key, in the
// order the KEKs were added.
func (s *Store) dataKeyWraps(ctx context.Context, list []broker.DataKey) error {
	if len(list) == 0 {
		return nil
	}
	at := make(map[string]int, len(list))
	for i := range list {
		at[list[i].ID] = i
	}
	rows, err := s.pool.Query(ctx, `SELECT data_key_id, kek_id, wrapped FROM `+s.dataKeyWrapsTable()+` ORDER BY created_at, kek_id`)
	if err != nil {
		return interpretError(fmt.Errorf("data key wraps: %w", err))
	}
	defer rows.Close()
	for rows.Next() {
		var id, kekID, wrapped string
		if err := rows.Scan(&id, &kekID, &wrapped); err != nil {
			return interpretError(fmt.Errorf("data key wraps: %w", err))
		}
		i, ok := at[id]
		if !ok || list[i].WrappedBy == kekID {
			continue // deleted since the list was read, or the first wrap's KEK
		}
		raw, err := base64.StdEncoding.DecodeString(wrapped)
		if err != nil {
			return fmt.Errorf("data key wraps: %s by %s: wrapped is not base64: %w", id, kekID, err)
		}
		list[i].Wraps = append(list[i].Wraps, broker.DataKeyWrap{KEKID: kekID, Wrapped: raw})
	}
	if err := rows.Err(); err != nil {
		return interpretError(fmt.Errorf("data key wraps: %w", err))
	}
	return nil
}

// insertDataKeyWraps stores dk's other wraps in tx.
func (s *Store) insertDataKeyWraps(ctx context.Context, tx pgx.Tx, dk broker.DataKey) error {
	for _, w := range dk.Wraps {
		if _, err := tx.Exec(ctx, `INSERT INTO `+s.dataKeyWrapsTable()+` (data_key_id, kek_id, wrapped) VALUES ($1, $2, $3)`,
			dk.ID, w.KEKID, base64.StdEncoding.EncodeToString(w.Wrapped)); err != nil {
			return err
		}
	}
	return nil
}

// DataKeyAddWrap stores wrapped as data key id's wrap by kekID, provided
// the data key exists and kekID wraps it neither first nor otherwise.
func (s *Store) DataKeyAddWrap(ctx context.Context, id, kekID string, wrapped []byte) (bool, error) {
	tag, err := s.pool.Exec(ctx, `INSERT INTO `+s.dataKeyWrapsTable()+` (data_key_id, kek_id, wrapped)
SELECT id, $2, $3 FROM `+s.dataKeysTable()+` WHERE id = $1 AND wrapped_by <> $2
ON CONFLICT (data_key_id, kek_id) DO NOTHING`, id, kekID, base64.StdEncoding.EncodeToString(wrapped))
	if err != nil {
		return false, interpretError(fmt.Errorf("data key add wrap: %w", err))
	}
	return tag.RowsAffected() == 1, nil
}
