package pgstore

import (
	"context"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/keybroker/keybroker/broker"
)

func (s *Store) dataKeysTable() string {
	return pgx.Identifier{s.schema, "kek_data_keys"}.Sanitize()
}

// dataKeyLockKey is the transaction-level advisory lock that serialises
// minting and deleting data keys in schema, so that "the newest is still
// X" stays true until the transaction that checked it commits.
func dataKeyLockKey(schema string) int64 {
	h := fnv.New64a()
	h.Write([]byte("keybroker/data-keys\x00" + schema))
	return int64(binary.BigEndian.Uint64(h.Sum(nil)))
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
	if err := s.dataKeyWraps(ctx, out); err != nil {
		return nil, err
	}
	return out, nil
}

// newestDataKey returns the id of the newest data key, "" when none.
func (s *Store) newestDataKey(ctx context.Context, tx pgx.Tx) (string, error) {
	var id string
	err := tx.QueryRow(ctx, `SELECT id FROM `+s.dataKeysTable()+` ORDER BY created_at DESC, id DESC LIMIT 1`).Scan(&id)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", nil
	}
	return id, err
}

// DataKeyInsert stores dk as the newest data key if the newest is still
// after. Under the data keys' advisory lock, its created_at is
// dk.CreatedAt (the database's clock when zero), moved to a microsecond
// after the newest's when it is not later: the order DataKeyList gives is
// the order of the inserts, whatever the minters' clocks say.
func (s *Store) DataKeyInsert(ctx context.Context, dk broker.DataKey, after string) (bool, error) {
	var createdAt *time.Time
	if !dk.CreatedAt.IsZero() {
		createdAt = &dk.CreatedAt
	}
	var inserted bool
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, dataKeyLockKey(s.schema)); err != nil {
			return err
		}
		newest, err := s.newestDataKey(ctx, tx)
		if err != nil || newest != after {
			return err
		}
		_, err = tx.Exec(ctx, `INSERT INTO `+s.dataKeysTable()+` (id, wrapped_by, wrapped, created_at, updated_at)
SELECT $1, $2, $3, t, t FROM (
    SELECT greatest(coalesce($4, clock_timestamp()), (SELECT max(created_at) + interval '1 microsecond' FROM `+s.dataKeysTable()+`)) AS t
) AS now`,
			dk.ID, dk.WrappedBy, base64.StdEncoding.EncodeToString(dk.Wrapped), createdAt)
		if err != nil {
			return err
		}
		if err := s.insertDataKeyWraps(ctx, tx, dk); err != nil {
			return err
		}
		inserted = true
		return nil
	})
	if err != nil {
		return false, interpretError(fmt.Errorf("data key insert: %w", err))
	}
	return inserted, nil
}

// dataKeyDeleteLockTimeout bounds the wait for writes of vault rows in
// flight when deleting a data key (and so the time new writes queue behind
// the delete). A delete that times out is retried at the re-wrap job's
// next run.
const dataKeyDeleteLockTimeout = "5s"

// DataKeyDelete deletes data key id if it is not the newest and no row
// with a server wrap names it, and records the id in
// kek_data_keys_deleted, whose trigger (migration 0006) refuses any later
// write of a row under it. A SHARE lock on encryption_vaults waits for the
// vault writes in flight to commit and holds new ones back until this
// transaction ends: the count below sees every row written before, and
// every row written after sees the record. Fetches only read and are not
// held back. The rows are counted in encryption_vault_kek_index, which
// row-level security does not hide.
func (s *Store) DataKeyDelete(ctx context.Context, id string) (bool, error) {
	var deleted bool
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT set_config('lock_timeout', $1, true)`, dataKeyDeleteLockTimeout); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, dataKeyLockKey(s.schema)); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `LOCK TABLE `+s.table("encryption_vaults")+` IN SHARE MODE`); err != nil {
			return err
		}
		newest, err := s.newestDataKey(ctx, tx)
		if err != nil || newest == id {
			return err
		}
		var used bool
		if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM `+s.table("encryption_vault_kek_index")+` WHERE kek_id = $1 AND wrapped)`, id).Scan(&used); err != nil || used {
			return err
		}
		tag, err := tx.Exec(ctx, `DELETE FROM `+s.dataKeysTable()+` WHERE id = $1`, id)
		if err != nil || tag.RowsAffected() == 0 {
			return err
		}
		if _, err := tx.Exec(ctx, `INSERT INTO `+s.table("kek_data_keys_deleted")+` (id) VALUES ($1) ON CONFLICT (id) DO NOTHING`, id); err != nil {
			return err
		}
		deleted = true
		return nil
	})
	if err != nil {
		return false, interpretError(fmt.Errorf("data key delete: %w", err))
	}
	return deleted, nil
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
