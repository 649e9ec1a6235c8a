package pgstore

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/keybroker/keybroker/broker"
)

// The fetch hot path: a read in one round trip, and audit rows of many
// fetches in one commit.
var (
	_ broker.VaultReader   = (*Store)(nil)
	_ broker.AuditAppender = (*Store)(nil)
)

const setScope = "SELECT set_config('app.current_user_id', $1, true)"

// VaultRead reads the user's vault in one round trip: the scope setting
// and the select are pipelined in one batch, which PostgreSQL runs as one
// implicit transaction, so the transaction-local scope covers the select
// and row-level security applies as in InUserTx. It returns
// broker.ErrNotFound when the user has no vault.
func (s *Store) VaultRead(ctx context.Context, userID string) (*broker.Vault, error) {
	if userID == "" {
		return nil, fmt.Errorf("pgstore: %w: empty user id", broker.ErrInvalidArgument)
	}
	batch := &pgx.Batch{}
	batch.Queue(setScope, userID)
	batch.Queue(s.sql.vaultGet, userID)
	results := s.pool.SendBatch(ctx, batch)
	if _, err := results.Exec(); err != nil {
		results.Close()
		return nil, interpretError(fmt.Errorf("vault read: set scope: %w", err))
	}
	v, err := scanVault(results.QueryRow())
	closeErr := results.Close()
	if errors.Is(err, pgx.ErrNoRows) {
		err = nil
		if closeErr == nil {
			return nil, broker.ErrNotFound
		}
	}
	if err == nil {
		err = closeErr
	}
	if err != nil {
		return nil, interpretError(fmt.Errorf("vault read: %w", err))
	}
	return v, nil
}

// AuditAppend writes entries, possibly of many users, in one transaction
// and one round trip: each insert is preceded by its user's scope, which
// the audit table's row-level security checks row by row. It returns
// once the commit is durable; an error means none of the rows was kept.
func (s *Store) AuditAppend(ctx context.Context, entries []*broker.AuditEntry) error {
	if len(entries) == 0 {
		return nil
	}
	batch := &pgx.Batch{}
	// Without an explicit BEGIN the pipeline up to its Sync is one
	// implicit transaction; the explicit one makes that intent visible
	// and lets a failure abort every row of the batch.
	batch.Queue("BEGIN")
	for _, e := range entries {
		if e.UserID == "" {
			return fmt.Errorf("pgstore: audit append: %w: empty user id", broker.ErrInvalidArgument)
		}
		batch.Queue(setScope, e.UserID)
		batch.Queue(s.sql.auditInsert, e.ID, e.UserID, string(e.Action), e.IPAddress, e.UserAgent, e.Context, e.Status, e.CreatedAt)
	}
	batch.Queue("COMMIT")
	if err := s.pool.SendBatch(ctx, batch).Close(); err != nil {
		return interpretError(fmt.Errorf("audit append: %w", err))
	}
	return nil
}
