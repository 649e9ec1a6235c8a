package pgstore

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/keybroker/keybroker/broker"
)

// The service operations (data export, erasure) and the pool statistics
// operators scrape.

// adminStatements is the SQL of the admin operations.
type adminStatements struct {
	vaultGet, auditCount, auditFirst, auditAfter, auditByAction, vaultDelete, auditDelete string
}

// adminSQL builds the admin statements. They are rare (a service call
// per user request for export or erasure), so they are built per call
// rather than kept on every Store.
func (s *Store) adminSQL() *adminStatements {
	vaults := pgx.Identifier{s.schema, "encryption_vaults"}.Sanitize()
	audit := pgx.Identifier{s.schema, "encryption_vault_audit"}.Sanitize()
	const auditColumns = `id, user_id, action, COALESCE(ip_address, ''), COALESCE(user_agent, ''), COALESCE(context, ''), status, created_at`
	return &adminStatements{
		vaultGet:      s.sql.vaultGet,
		auditCount:    `SELECT count(*) FROM ` + audit + ` WHERE user_id = $1`,
		auditFirst:    `SELECT ` + auditColumns + ` FROM ` + audit + ` WHERE user_id = $1 ORDER BY created_at, id LIMIT $2`,
		auditAfter:    `SELECT ` + auditColumns + ` FROM ` + audit + ` WHERE user_id = $1 AND (created_at, id) > ($2, $3) ORDER BY created_at, id LIMIT $4`,
		auditByAction: `SELECT ` + auditColumns + ` FROM ` + audit + ` WHERE user_id = $1 AND action = $2 AND status = $3 ORDER BY created_at DESC, id DESC LIMIT $4`,
		vaultDelete:   `DELETE FROM ` + vaults + ` WHERE user_id = $1`,
		auditDelete: `DELETE FROM ` + audit + ` WHERE user_id = $1
RETURNING id, user_id, action, COALESCE(ip_address, ''), COALESCE(user_agent, ''), COALESCE(context, ''), status, created_at, mac`,
	}
}

// inScope runs fn in a transaction scoped to userID, as InUserTx does,
// so row-level security confines every statement to that user's rows.
func (s *Store) inScope(ctx context.Context, userID string, opts pgx.TxOptions, fn func(pgx.Tx, *adminStatements) error) error {
	if userID == "" {
		return fmt.Errorf("pgstore: %w: empty user id", broker.ErrInvalidArgument)
	}
	sql := s.adminSQL()
	pgTx, err := s.pool.BeginTx(ctx, opts)
	if err != nil {
		return interpretError(fmt.Errorf("begin: %w", err))
	}
	defer func() { _ = pgTx.Rollback(ctx) }()
	if _, err := pgTx.Exec(ctx, setScope, userID); err != nil {
		return interpretError(fmt.Errorf("set user scope: %w", err))
	}
	if err := fn(pgTx, sql); err != nil {
		return err
	}
	if err := pgTx.Commit(ctx); err != nil {
		return interpretError(fmt.Errorf("commit: %w", err))
	}
	return nil
}

// VaultMeta returns the user's vault (nil when there is none) and the
// count of the user's audit rows, from one repeatable-read snapshot.
// Failures to reach the database are *broker.UnavailableError.
func (s *Store) VaultMeta(ctx context.Context, userID string) (*broker.Vault, int64, error) {
	var v *broker.Vault
	var count int64
	err := s.inScope(ctx, userID, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly}, func(tx pgx.Tx, sql *adminStatements) error {
		got, err := scanVault(tx.QueryRow(ctx, sql.vaultGet, userID))
		switch {
		case errors.Is(err, pgx.ErrNoRows):
		case err != nil:
			return interpretError(fmt.Errorf("vault meta: %w", err))
		default:
			v = got
		}
		if err := tx.QueryRow(ctx, sql.auditCount, userID).Scan(&count); err != nil {
			return interpretError(fmt.Errorf("audit count: %w", err))
		}
		return nil
	})
	if err != nil {
		return nil, 0, err
	}
	return v, count, nil
}

// AuditPage returns up to limit of the user's audit rows in (created_at,
// id) order, after the cursor's row when after is set. Absent metadata
// (NULL ip_address, user_agent, context) reads as empty strings.
func (s *Store) AuditPage(ctx context.Context, userID string, after *broker.AuditCursor, limit int) ([]broker.AuditEntry, error) {
	if limit < 1 {
		return nil, fmt.Errorf("pgstore: %w: limit %d", broker.ErrInvalidArgument, limit)
	}
	var out []broker.AuditEntry
	err := s.inScope(ctx, userID, pgx.TxOptions{AccessMode: pgx.ReadOnly}, func(tx pgx.Tx, sql *adminStatements) error {
		var rows pgx.Rows
		var err error
		if after == nil {
			rows, err = tx.Query(ctx, sql.auditFirst, userID, limit)
		} else {
			rows, err = tx.Query(ctx, sql.auditAfter, userID, after.CreatedAt, after.ID, limit)
		}
		if err != nil {
			return interpretError(fmt.Errorf("audit page: %w", err))
		}
		out, err = pgx.CollectRows(rows, scanAuditEntry)
		if err != nil {
			return interpretError(fmt.Errorf("audit page: %w", err))
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// scanAuditEntry reads one row of the admin statements' audit columns.
func scanAuditEntry(row pgx.CollectableRow) (broker.AuditEntry, error) {
	var e broker.AuditEntry
	var action string
	err := row.Scan(&e.ID, &e.UserID, &action, &e.IPAddress, &e.UserAgent, &e.Context, &e.Status, &e.CreatedAt)
	e.Action = broker.Action(action)
	return e, err
}

// AuditByAction returns up to q.Limit of the user's audit rows of one
// action and status, newest first, under the user's row-level scope.
func (s *Store) AuditByAction(ctx context.Context, userID string, q broker.AuditQuery) ([]broker.AuditEntry, error) {
	if q.Limit < 1 {
		return nil, fmt.Errorf("pgstore: %w: limit %d", broker.ErrInvalidArgument, q.Limit)
	}
	var out []broker.AuditEntry
	err := s.inScope(ctx, userID, pgx.TxOptions{AccessMode: pgx.ReadOnly}, func(tx pgx.Tx, sql *adminStatements) error {
		rows, err := tx.Query(ctx, sql.auditByAction, userID, string(q.Action), q.Status, q.Limit)
		if err != nil {
			return interpretError(fmt.Errorf("audit by action: %w", err))
		}
		if out, err = pgx.CollectRows(rows, scanAuditEntry); err != nil {
			return interpretError(fmt.Errorf("audit by action: %w", err))
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// VaultErase deletes the user's vault and audit rows in one transaction
// and writes nothing else but the erasure mark that mark returns for the
// deleted rows (no user id in it). Deleting a vault that another transaction is
// changing waits for that transaction, so an erasure never leaves a row
// a concurrent rotate re-wrote behind it.
func (s *Store) VaultErase(ctx context.Context, userID string, mark broker.EraseMarker) (broker.EraseResult, error) {
	var res broker.EraseResult
	err := s.inScope(ctx, userID, pgx.TxOptions{}, func(tx pgx.Tx, sql *adminStatements) error {
		tag, err := tx.Exec(ctx, sql.vaultDelete, userID)
		if err != nil {
			return interpretError(fmt.Errorf("vault erase: %w", err))
		}
		res.VaultDeleted = tag.RowsAffected() > 0
		rows, err := tx.Query(ctx, sql.auditDelete, userID)
		if err != nil {
			return interpretError(fmt.Errorf("audit erase: %w", err))
		}
		erased, err := pgx.CollectRows(rows, scanAuditRow)
		if err != nil {
			return interpretError(fmt.Errorf("audit erase: %w", err))
		}
		res.AuditRowsDeleted = int64(len(erased))
		if mark == nil {
			return nil
		}
		if m := mark(erased); m != nil {
			return auditMarkInsert(ctx, tx, s.table("encryption_vault_audit_marks"), *m)
		}
		return nil
	})
	if err != nil {
		return broker.EraseResult{}, err
	}
	return res, nil
}

// PoolStat returns the connection pool's statistics, for metrics.
func (s *Store) PoolStat() *pgxpool.Stat { return s.pool.Stat() }
