package faults

import (
	"context"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
)

// VaultConstraints are the original service's three CHECK constraints of
// encryption_vaults — a user always has a wrap, wraps come with their
// IVs, and zero-knowledge means the server holds no wrap of its own —
// and keybroker's restore slot's: a kept recovery wrap is whole.
var VaultConstraints = []string{
	"encryption_vaults_has_wrap",
	"encryption_vaults_wrap_iv_pair",
	"encryption_vaults_zk_consistency",
	"encryption_vaults_restorable_complete",
}

// Querier is what the checks need of a pgx connection or pool.
type Querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// CheckVaultConstraints verifies on PostgreSQL that each of
// VaultConstraints exists on schema.encryption_vaults and is validated,
// and that no row violates it when its expression is evaluated again now
// (not only when the row was written). db must see every row: a superuser
// or the table owner outside any user scope does not — use a superuser.
func CheckVaultConstraints(ctx context.Context, db Querier, schema string) error {
	table := pgx.Identifier{schema, "encryption_vaults"}.Sanitize()
	for _, name := range VaultConstraints {
		var def string
		var validated bool
		err := db.QueryRow(ctx, `SELECT pg_get_constraintdef(c.oid), c.convalidated
FROM pg_constraint c
JOIN pg_class r ON r.oid = c.conrelid
JOIN pg_namespace n ON n.oid = r.relnamespace
WHERE n.nspname = $1 AND r.relname = 'encryption_vaults' AND c.conname = $2 AND c.contype = 'c'`,
			schema, name).Scan(&def, &validated)
		if err != nil {
			return fmt.Errorf("constraint %s: %w", name, err)
		}
		if !validated {
			return fmt.Errorf("constraint %s is NOT VALID: old rows were never checked", name)
		}
		expr, ok := strings.CutPrefix(def, "CHECK ")
		if !ok {
			return fmt.Errorf("constraint %s: unexpected definition %q", name, def)
		}
		// The expression comes from the catalog, not from input.
		var violating int
		if err := db.QueryRow(ctx, "SELECT count(*) FROM "+table+" WHERE NOT "+expr).Scan(&violating); err != nil {
			return fmt.Errorf("constraint %s: re-evaluate: %w", name, err)
		}
		if violating > 0 {
			return fmt.Errorf("constraint %s: %d rows violate %s", name, violating, expr)
		}
	}
	return nil
}
