package sqlitestore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

	"github.com/keybroker/keybroker/broker"
)

// The re-wrap job's store side on SQLite. There is no row-level security
// to work around, so candidates and counts come from encryption_vaults
// itself, and a batch is one write transaction: one fsync for the batch
// instead of two per row through InUserTx. A single node needs no runner
// lock (no broker.RewrapLocker): two runners at once — the server's job
// and `keybroker rewrap` on the same file — only take turns on the write
// lock, and the compare-and-swap keeps each row moved once.

// RewrapCandidates lists user ids of rows with a server wrap that the job
// must move (or, with q.OnActiveKEK, that are on the active KEK already;
// with q.LegacyOnly, that are in format 1), in user-id order after q.After.
func (s *Store) RewrapCandidates(ctx context.Context, q broker.RewrapQuery) ([]string, error) {
	if s.closed.Load() {
		return nil, unavailable(ErrClosed)
	}
	cond := `(kek_id <> ?1 OR format_version = 1)`
	switch {
	case q.OnActiveKEK:
		cond = `kek_id = ?1 AND format_version = 2`
	case q.LegacyOnly:
		cond = `format_version = 1 AND ?1 IS NOT NULL`
	}
	rows, err := s.db.QueryContext(ctx, `SELECT user_id FROM encryption_vaults
WHERE wrapped_mk IS NOT NULL AND NOT zero_knowledge AND `+cond+` AND user_id > ?2
ORDER BY user_id LIMIT ?3`, q.ActiveKEKID, q.After, q.Limit)
	if err != nil {
		return nil, interpretError(ctx, fmt.Errorf("rewrap candidates: %w", err))
	}
	defer rows.Close()
	var ids []string
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			return nil, interpretError(ctx, fmt.Errorf("rewrap candidates: %w", err))
		}
		ids = append(ids, id)
	}
	if err := rows.Err(); err != nil {
		return nil, interpretError(ctx, fmt.Errorf("rewrap candidates: %w", err))
	}
	return ids, nil
}

// KEKCounts counts rows per KEK id, format and mode.
func (s *Store) KEKCounts(ctx context.Context) ([]broker.KEKCount, error) {
	if s.closed.Load() {
		return nil, unavailable(ErrClosed)
	}
	rows, err := s.db.QueryContext(ctx, `SELECT kek_id, format_version, wrapped_mk IS NOT NULL, zero_knowledge, count(*)
FROM encryption_vaults GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4`)
	if err != nil {
		return nil, interpretError(ctx, fmt.Errorf("kek counts: %w", err))
	}
	defer rows.Close()
	var counts []broker.KEKCount
	for rows.Next() {
		var c broker.KEKCount
		if err := rows.Scan(&c.KEKID, &c.FormatVersion, &c.Wrapped, &c.ZeroKnowledge, &c.Rows); err != nil {
			return nil, interpretError(ctx, fmt.Errorf("kek counts: %w", err))
		}
		counts = append(counts, c)
	}
	if err := rows.Err(); err != nil {
		return nil, interpretError(ctx, fmt.Errorf("kek counts: %w", err))
	}
	return counts, nil
}

// RewrapRead reads the vaults of userIDs in one read transaction (a WAL
// snapshot: it does not wait for the writer). Users without a vault are
// left out.
func (s *Store) RewrapRead(ctx context.Context, userIDs []string) ([]*broker.Vault, error) {
	if s.closed.Load() {
		return nil, unavailable(ErrClosed)
	}
	tx, err := s.db.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		return nil, interpretError(ctx, fmt.Errorf("rewrap read: %w", err))
	}
	defer func() { _ = tx.Rollback() }()
	out := make([]*broker.Vault, 0, len(userIDs))
	for _, id := range userIDs {
		if id == "" {
			return nil, fmt.Errorf("sqlitestore: %w: empty user id", broker.ErrInvalidArgument)
		}
		v, err := scanVault(tx.QueryRowContext(ctx, sqlVaultGet, id))
		if errors.Is(err, sql.ErrNoRows) {
			continue
		}
		if err != nil {
			return nil, interpretError(ctx, fmt.Errorf("rewrap read: %w", err))
		}
		out = append(out, v)
	}
	return out, nil
}

const (
	// sqlRewrapSwap writes the new wrap only while the row still holds the
	// old one, and touches no other column but a missing key check value.
	sqlRewrapSwap = `UPDATE encryption_vaults SET
    wrapped_mk = ?6, wrap_iv = ?7, format_version = ?8, kek_id = ?9, key_check = coalesce(key_check, ?10)
WHERE user_id = ?1 AND NOT zero_knowledge AND wrapped_mk = ?2 AND wrap_iv IS ?3
  AND format_version = ?4 AND kek_id = ?5`
)

// RewrapApply writes, in one transaction, each swap whose row still has
// the wrap of swap.Old, with its audit row, and reports which it wrote.
func (s *Store) RewrapApply(ctx context.Context, swaps []broker.RewrapSwap) ([]bool, error) {
	for i := range swaps {
		sw := &swaps[i]
		if sw.Old.UserID == "" || sw.Old.UserID != sw.New.UserID || sw.Audit.UserID != sw.Old.UserID {
			return nil, fmt.Errorf("sqlitestore: %w: swap %d: one non-empty user id per swap", broker.ErrInvalidArgument, i)
		}
	}
	applied := make([]bool, len(swaps))
	err := s.inWriteTx(ctx, func(sqlTx *sql.Tx) error {
		swap, err := sqlTx.PrepareContext(ctx, sqlRewrapSwap)
		if err != nil {
			return interpretError(ctx, fmt.Errorf("rewrap apply: %w", err))
		}
		defer swap.Close()
		audit, err := sqlTx.PrepareContext(ctx, sqlAuditInsert)
		if err != nil {
			return interpretError(ctx, fmt.Errorf("rewrap apply: %w", err))
		}
		defer audit.Close()
		for i := range swaps {
			o, n, a := swaps[i].Old, swaps[i].New, swaps[i].Audit
			res, err := swap.ExecContext(ctx, o.UserID, o.WrappedMK, o.WrapIV, o.FormatVersion, o.KEKID,
				n.WrappedMK, n.WrapIV, n.FormatVersion, n.KEKID, n.KeyCheck)
			if err != nil {
				return interpretError(ctx, fmt.Errorf("rewrap apply: %w", err))
			}
			if changed, err := res.RowsAffected(); err != nil || changed != 1 {
				continue
			}
			if _, err := audit.ExecContext(ctx, a.ID, a.UserID, string(a.Action), a.IPAddress, a.UserAgent,
				a.Context, a.Status, formatTime(a.CreatedAt), a.MAC); err != nil {
				return interpretError(ctx, fmt.Errorf("rewrap apply: audit: %w", err))
			}
			applied[i] = true
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return applied, nil
}
