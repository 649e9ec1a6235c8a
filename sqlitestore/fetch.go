package sqlitestore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

	"github.com/keybroker/keybroker/broker"
)

// The fetch hot path: a read that never waits for the writer, and the
// audit rows of many fetches in one commit, so that a login storm costs
// one fsync per batch instead of one per fetch.

// VaultRead reads the user's vault outside any explicit transaction. In
// WAL mode the single statement reads a consistent snapshot and does not
// queue behind a writer. Like every statement of this store it filters on
// the user id itself (there is no row-level security). It returns
// broker.ErrNotFound when the user has no vault.
func (s *Store) VaultRead(ctx context.Context, userID string) (*broker.Vault, error) {
	if userID == "" {
		return nil, fmt.Errorf("sqlitestore: %w: empty user id", broker.ErrInvalidArgument)
	}
	if s.closed.Load() {
		return nil, unavailable(ErrClosed)
	}
	v, err := scanVault(s.db.QueryRowContext(ctx, sqlVaultGet, userID))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, broker.ErrNotFound
	}
	if err != nil {
		return nil, interpretError(ctx, fmt.Errorf("vault read: %w", err))
	}
	return v, nil
}

// AuditAppend writes entries, possibly of many users, in one transaction.
// It returns once the commit is durable (synchronous=FULL); an error means
// none of the rows was kept. An entry SQLite refuses (a constraint) is
// named by a *broker.BatchItemError, so that the others can be written
// without it.
func (s *Store) AuditAppend(ctx context.Context, entries []*broker.AuditEntry) error {
	if len(entries) == 0 {
		return nil
	}
	for i, e := range entries {
		if e.UserID == "" {
			return &broker.BatchItemError{Index: i, Err: fmt.Errorf("sqlitestore: audit append: %w: empty user id", broker.ErrInvalidArgument)}
		}
	}
	return s.inWriteTx(ctx, func(sqlTx *sql.Tx) error {
		stmt, err := sqlTx.PrepareContext(ctx, sqlAuditInsert)
		if err != nil {
			return interpretError(ctx, fmt.Errorf("audit append: %w", err))
		}
		defer stmt.Close()
		for i, e := range entries {
			if _, err := stmt.ExecContext(ctx, e.ID, e.UserID, string(e.Action), e.IPAddress, e.UserAgent, e.Context, e.Status, formatTime(e.CreatedAt), e.MAC); err != nil {
				interpreted := interpretError(ctx, fmt.Errorf("audit append: %w", err))
				if broker.IsUnavailable(interpreted) || sqliteCode(err) == 0 {
					return interpreted
				}
				// Rolled back by inWriteTx: nothing of the batch is kept.
				return &broker.BatchItemError{Index: i, Err: interpreted}
			}
		}
		return nil
	})
}
