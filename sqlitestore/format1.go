package sqlitestore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/keybroker/keybroker/broker"
)

// The format-1 closure (the format1_closure migration): a one-row table
// whose triggers refuse to reopen it.

const sqlFormat1State = `SELECT closed_at, closed_by FROM encryption_vault_format1`

// Format1State reads whether format 1 is closed. It does not wait for the
// writer (a WAL snapshot).
func (s *Store) Format1State(ctx context.Context) (broker.Format1State, error) {
	if s.closed.Load() {
		return broker.Format1State{}, unavailable(ErrClosed)
	}
	st, err := scanFormat1(s.db.QueryRowContext(ctx, sqlFormat1State))
	if err != nil {
		return broker.Format1State{}, interpretError(ctx, fmt.Errorf("format1 state: %w", err))
	}
	return st, nil
}

// Format1Close closes format 1 unless a row with a format-1 server wrap is
// left, in one write transaction, and returns the state after.
func (s *Store) Format1Close(ctx context.Context, runner string) (broker.Format1State, error) {
	var st broker.Format1State
	err := s.inWriteTx(ctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, `UPDATE encryption_vault_format1 SET closed_at = ?1, closed_by = ?2
WHERE closed_at IS NULL
  AND NOT EXISTS (SELECT 1 FROM encryption_vaults WHERE format_version = 1 AND wrapped_mk IS NOT NULL)`,
			formatTime(time.Now()), runner); err != nil {
			return interpretError(ctx, fmt.Errorf("format1 close: %w", err))
		}
		var err error
		if st, err = scanFormat1(tx.QueryRowContext(ctx, sqlFormat1State)); err != nil {
			return interpretError(ctx, fmt.Errorf("format1 close: %w", err))
		}
		return nil
	})
	return st, err
}

func scanFormat1(row *sql.Row) (broker.Format1State, error) {
	var closedAt, closedBy sql.NullString
	err := row.Scan(&closedAt, &closedBy)
	if errors.Is(err, sql.ErrNoRows) {
		// The row is never deleted (a trigger refuses it); if it is gone
		// anyway, fail closed.
		return broker.Format1State{Closed: true, ClosedBy: "(the format-1 state row is missing)"}, nil
	}
	if err != nil {
		return broker.Format1State{}, err
	}
	if !closedAt.Valid {
		return broker.Format1State{}, nil
	}
	at, err := parseTime("closed_at", closedAt.String)
	if err != nil {
		return broker.Format1State{}, err
	}
	return broker.Format1State{Closed: true, ClosedAt: at, ClosedBy: closedBy.String}, nil
}
