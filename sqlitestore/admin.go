package sqlitestore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

	"github.com/keybroker/keybroker/broker"
)

// The service operations behind the export and erasure endpoints.

const (
	sqlAuditColumns = `id, user_id, action, COALESCE(ip_address, ''), COALESCE(user_agent, ''), COALESCE(context, ''), status, created_at`
	sqlAuditCount   = `SELECT count(*) FROM encryption_vault_audit WHERE user_id = ?1`
	sqlAuditFirst   = `SELECT ` + sqlAuditColumns + ` FROM encryption_vault_audit WHERE user_id = ?1 ORDER BY created_at, id LIMIT ?2`
	// Timestamps are fixed-width UTC text, so text order is time order.
	sqlAuditAfter = `SELECT ` + sqlAuditColumns + ` FROM encryption_vault_audit
WHERE user_id = ?1 AND (created_at > ?2 OR (created_at = ?2 AND id > ?3)) ORDER BY created_at, id LIMIT ?4`
	sqlAuditByAction = `SELECT ` + sqlAuditColumns + ` FROM encryption_vault_audit
WHERE user_id = ?1 AND action = ?2 AND status = ?3 ORDER BY created_at DESC, id DESC LIMIT ?4`
	sqlVaultDelete = `DELETE FROM encryption_vaults WHERE user_id = ?1`
	sqlAuditDelete = `DELETE FROM encryption_vault_audit WHERE user_id = ?1 RETURNING ` + sqlAuditColumns + `, mac`
)

// inAdminTx runs fn in one transaction, queued behind the store's other
// transactions exactly as InUserTx is. Every statement fn runs filters on
// userID: there is no row-level security to do it here.
func (s *Store) inAdminTx(ctx context.Context, userID string, fn func(*sql.Tx) error) error {
	if userID == "" {
		return fmt.Errorf("sqlitestore: %w: empty user id", broker.ErrInvalidArgument)
	}
	return s.inWriteTx(ctx, fn)
}

// VaultMeta returns the user's vault (nil when there is none) and the
// count of the user's audit rows, read in one transaction.
func (s *Store) VaultMeta(ctx context.Context, userID string) (*broker.Vault, int64, error) {
	var v *broker.Vault
	var count int64
	err := s.inAdminTx(ctx, userID, func(tx *sql.Tx) error {
		got, err := scanVault(tx.QueryRowContext(ctx, sqlVaultGet, userID))
		switch {
		case errors.Is(err, sql.ErrNoRows):
		case err != nil:
			return interpretError(ctx, fmt.Errorf("vault meta: %w", err))
		default:
			v = got
		}
		if err := tx.QueryRowContext(ctx, sqlAuditCount, userID).Scan(&count); err != nil {
			return interpretError(ctx, fmt.Errorf("audit count: %w", err))
		}
		return nil
	})
	if err != nil {
		return nil, 0, err
	}
	return v, count, nil
}

// AuditPage returns up to limit of the user's audit rows in (created_at,
// id) order, after the cursor's row when after is set.
func (s *Store) AuditPage(ctx context.Context, userID string, after *broker.AuditCursor, limit int) ([]broker.AuditEntry, error) {
	if limit < 1 {
		return nil, fmt.Errorf("sqlitestore: %w: limit %d", broker.ErrInvalidArgument, limit)
	}
	var out []broker.AuditEntry
	err := s.inAdminTx(ctx, userID, func(tx *sql.Tx) error {
		var rows *sql.Rows
		var err error
		if after == nil {
			rows, err = tx.QueryContext(ctx, sqlAuditFirst, userID, limit)
		} else {
			rows, err = tx.QueryContext(ctx, sqlAuditAfter, userID, formatTime(after.CreatedAt), after.ID, limit)
		}
		if err != nil {
			return interpretError(ctx, fmt.Errorf("audit page: %w", err))
		}
		out, err = scanAuditRows(ctx, rows, "audit page")
		return err
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// AuditByAction returns up to q.Limit of the user's audit rows of one
// action and status, newest first.
func (s *Store) AuditByAction(ctx context.Context, userID string, q broker.AuditQuery) ([]broker.AuditEntry, error) {
	if q.Limit < 1 {
		return nil, fmt.Errorf("sqlitestore: %w: limit %d", broker.ErrInvalidArgument, q.Limit)
	}
	var out []broker.AuditEntry
	err := s.inAdminTx(ctx, userID, func(tx *sql.Tx) error {
		rows, err := tx.QueryContext(ctx, sqlAuditByAction, userID, string(q.Action), q.Status, q.Limit)
		if err != nil {
			return interpretError(ctx, fmt.Errorf("audit by action: %w", err))
		}
		out, err = scanAuditRows(ctx, rows, "audit by action")
		return err
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// scanAuditRows reads rows of sqlAuditColumns and closes them; what
// names the query in errors.
func scanAuditRows(ctx context.Context, rows *sql.Rows, what string) ([]broker.AuditEntry, error) {
	return scanAuditRowsMAC(ctx, rows, what, false)
}

// scanAuditRowsMAC is scanAuditRows of rows that end with the mac
// column when withMAC is set.
func scanAuditRowsMAC(ctx context.Context, rows *sql.Rows, what string, withMAC bool) ([]broker.AuditEntry, error) {
	defer rows.Close()
	var out []broker.AuditEntry
	for rows.Next() {
		var e broker.AuditEntry
		var action, createdAt string
		dest := []any{&e.ID, &e.UserID, &action, &e.IPAddress, &e.UserAgent, &e.Context, &e.Status, &createdAt}
		if withMAC {
			dest = append(dest, &e.MAC)
		}
		if err := rows.Scan(dest...); err != nil {
			return nil, interpretError(ctx, fmt.Errorf("%s: %w", what, err))
		}
		e.Action = broker.Action(action)
		var err error
		if e.CreatedAt, err = parseTime("created_at", createdAt); err != nil {
			return nil, fmt.Errorf("sqlitestore: %s: %w", what, err)
		}
		out = append(out, e)
	}
	if err := rows.Err(); err != nil {
		return nil, interpretError(ctx, fmt.Errorf("%s: %w", what, err))
	}
	return out, nil
}

// VaultErase deletes the user's vault and audit rows in one transaction
// and writes nothing else but the erasure mark that mark returns for the
// deleted rows (no user id in it). secure_delete is on, so SQLite overwrites the
// deleted rows with zeros; until the next checkpoint their bytes remain in
// keybroker.db-wal, and in any backup taken before.
func (s *Store) VaultErase(ctx context.Context, userID string, mark broker.EraseMarker) (broker.EraseResult, error) {
	var res broker.EraseResult
	err := s.inAdminTx(ctx, userID, func(tx *sql.Tx) error {
		r, err := tx.ExecContext(ctx, sqlVaultDelete, userID)
		if err != nil {
			return interpretError(ctx, fmt.Errorf("vault erase: %w", err))
		}
		n, err := r.RowsAffected()
		if err != nil {
			return interpretError(ctx, fmt.Errorf("vault erase: %w", err))
		}
		res.VaultDeleted = n > 0
		rows, err := tx.QueryContext(ctx, sqlAuditDelete, userID)
		if err != nil {
			return interpretError(ctx, fmt.Errorf("audit erase: %w", err))
		}
		erased, err := scanAuditRowsMAC(ctx, rows, "audit erase", true)
		if err != nil {
			return err
		}
		res.AuditRowsDeleted = int64(len(erased))
		if mark == nil {
			return nil
		}
		if m := mark(erased); m != nil {
			return auditMarkInsert(ctx, tx, *m)
		}
		return nil
	})
	if err != nil {
		return broker.EraseResult{}, err
	}
	return res, nil
}
