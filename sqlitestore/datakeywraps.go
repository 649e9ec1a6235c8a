package sqlitestore

import (
	"context"
	"database/sql"
	"encoding/base64"
	"fmt"
	"time"

	"github.com/keybroker/keybroker/broker"
)

// The wraps of a data key beyond its first (migration 0008), as on
// PostgreSQL.

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
	rows, err := s.db.QueryContext(ctx, `SELECT data_key_id, kek_id, wrapped FROM kek_data_key_wraps ORDER BY created_at, kek_id`)
	if err != nil {
		return interpretError(ctx, fmt.Errorf("data key wraps: %w", err))
	}
	defer rows.Close()
	for rows.Next() {
		var id, kekID, wrapped string
		if err := rows.Scan(&id, &kekID, &wrapped); err != nil {
			return interpretError(ctx, fmt.Errorf("data key wraps: %w", err))
		}
		i, ok := at[id]
		if !ok || list[i].WrappedBy == kekID {
			continue
		}
		raw, err := base64.StdEncoding.DecodeString(wrapped)
		if err != nil {
			return fmt.Errorf("data key wraps: %s by %s: wrapped is not base64: %w", id, kekID, err)
		}
		list[i].Wraps = append(list[i].Wraps, broker.DataKeyWrap{KEKID: kekID, Wrapped: raw})
	}
	if err := rows.Err(); err != nil {
		return interpretError(ctx, fmt.Errorf("data key wraps: %w", err))
	}
	return nil
}

// insertDataKeyWraps stores dk's other wraps in tx.
func insertDataKeyWraps(ctx context.Context, tx *sql.Tx, dk broker.DataKey) error {
	now := formatTime(time.Now())
	for _, w := range dk.Wraps {
		if _, err := tx.ExecContext(ctx, `INSERT INTO kek_data_key_wraps (data_key_id, kek_id, wrapped, created_at) VALUES (?1, ?2, ?3, ?4)`,
			dk.ID, w.KEKID, base64.StdEncoding.EncodeToString(w.Wrapped), now); err != nil {
			return interpretError(ctx, fmt.Errorf("data key insert: %w", err))
		}
	}
	return nil
}

// DataKeyAddWrap stores wrapped as data key id's wrap by kekID, provided
// the data key exists and kekID wraps it neither first nor otherwise.
func (s *Store) DataKeyAddWrap(ctx context.Context, id, kekID string, wrapped []byte) (bool, error) {
	if s.closed.Load() {
		return false, unavailable(ErrClosed)
	}
	var added bool
	err := s.inWriteTx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `INSERT INTO kek_data_key_wraps (data_key_id, kek_id, wrapped, created_at)
SELECT id, ?2, ?3, ?4 FROM kek_data_keys WHERE id = ?1 AND wrapped_by <> ?2
ON CONFLICT (data_key_id, kek_id) DO NOTHING`, id, kekID, base64.StdEncoding.EncodeToString(wrapped), formatTime(time.Now()))
		if err != nil {
			return interpretError(ctx, fmt.Errorf("data key add wrap: %w", err))
		}
		n, err := res.RowsAffected()
		added = n == 1
		return err
	})
	return added, err
}
