package pgstore

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/keybroker/keybroker/broker"
)

// The format-1 closure (the format1_closure migration): a one-row table
// granted to no one, read and closed through two SECURITY DEFINER
// functions, so the runtime role needs no grant on it and a role that may
// write vault rows cannot reopen it.

// Format1State reads whether format 1 is closed: one short statement,
// asked only before a format-1 wrap is opened.
func (s *Store) Format1State(ctx context.Context) (broker.Format1State, error) {
	return s.format1(ctx, "format1 state", `SELECT format1_closed_at, format1_closed_by FROM `+
		pgx.Identifier{s.schema, "encryption_vault_format1_state"}.Sanitize()+`()`)
}

// Format1Close closes format 1 unless a row with a format-1 server wrap is
// left (the check reads the KEK index in the closing statement), and
// returns the state after.
func (s *Store) Format1Close(ctx context.Context, runner string) (broker.Format1State, error) {
	return s.format1(ctx, "format1 close", `SELECT format1_closed_at, format1_closed_by FROM `+
		pgx.Identifier{s.schema, "encryption_vault_format1_close"}.Sanitize()+`($1)`, runner)
}

func (s *Store) format1(ctx context.Context, what, sql string, args ...any) (broker.Format1State, error) {
	rows, err := s.pool.Query(ctx, sql, args...)
	if err != nil {
		return broker.Format1State{}, interpretError(fmt.Errorf("%s: %w", what, err))
	}
	type row struct {
		ClosedAt *time.Time
		ClosedBy *string
	}
	got, err := pgx.CollectRows(rows, pgx.RowToStructByPos[row])
	if err != nil {
		return broker.Format1State{}, interpretError(fmt.Errorf("%s: %w", what, err))
	}
	if len(got) == 0 {
		// The row is never deleted (a trigger refuses it); if it is gone
		// anyway, fail closed.
		return broker.Format1State{Closed: true, ClosedBy: "(the format-1 state row is missing)"}, nil
	}
	if got[0].ClosedAt == nil {
		return broker.Format1State{}, nil
	}
	st := broker.Format1State{Closed: true, ClosedAt: *got[0].ClosedAt}
	if got[0].ClosedBy != nil {
		st.ClosedBy = *got[0].ClosedBy
	}
	return st, nil
}
