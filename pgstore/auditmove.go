package pgstore

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// Moving an unpartitioned audit table (a keybroker install before
// migration 0009, or an adopted mana-auth auth.encryption_vault_audit)
// under a partitioned one, online, copying nothing: the old table becomes
// the partition of every row created before a cutover, and retention drops
// it whole once the cutover is past the retention.
//
// An empty table (a new install) is moved at once instead, in one
// transaction, with today as the cutover (moveEmpty).
//
//  1. Choose the cutover, midnight UTC auditMoveDays days ahead, and
//     record it (a pass that crashed is resumed with the same one).
//  2. ADD CONSTRAINT … CHECK (created_at < cutover) NOT VALID (a moment's
//     lock), then VALIDATE it (a scan under SHARE UPDATE EXCLUSIVE: writes
//     go on). Rows inserted meanwhile are checked as they come, and pass:
//     they are created before the cutover.
//  3. CREATE UNIQUE INDEX CONCURRENTLY on (id, created_at): a partitioned
//     table's primary key must contain the partition key.
//  4. One short transaction: rename the table, give it the new primary key
//     (USING INDEX: no build), create the partitioned parent under the
//     original name with the same columns, defaults, constraints, indexes,
//     foreign keys, row-level security policies and grants, and ATTACH the
//     old table FOR VALUES FROM (MINVALUE) TO (cutover): the valid CHECK
//     spares the scan and the matching indexes are adopted, not built.
//
// The previous release's statements name the table and its columns only,
// so they keep working on the parent. A pass that finds its cutover less
// than auditMoveStale ahead (a move that stalled, or crashed and was not
// resumed) drops its CHECK and starts again with a later one, before the
// CHECK could refuse a row.

const (
	auditMoveDays   = 3
	auditMoveStale  = 24 * time.Hour
	auditMoveCheck  = "encryption_vault_audit_before_partitions"
	auditMoveIndex  = "encryption_vault_audit_id_created_at_key"
	auditPrimaryKey = "encryption_vault_audit_pkey"
)

// errNotEmpty stops moveEmpty.
var errNotEmpty = errors.New("the audit table has rows")

// moveEmpty moves an empty table (a new install) in one transaction
// under its lock, with the cutover at today's midnight UTC: checking and
// indexing no rows takes no time, and the day partitions start today. It
// reports false, having changed nothing, when the table has a row.
func (u *upkeep) moveEmpty(ctx context.Context) (bool, error) {
	table := u.ident(auditTable)
	cutover := u.p.Now.UTC().Truncate(partitionDay)
	err := pgx.BeginFunc(ctx, u.conn, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `LOCK TABLE `+table+` IN ACCESS EXCLUSIVE MODE`); err != nil {
			return err
		}
		// The forced policies hide every row from the owner too; lifted
		// under the lock to look, as migration 0004 does, and put back.
		var force bool
		if err := tx.QueryRow(ctx, `SELECT relforcerowsecurity FROM pg_class WHERE oid = $1::regclass`, table).Scan(&force); err != nil {
			return err
		}
		var rows bool
		if _, err := tx.Exec(ctx, `ALTER TABLE `+table+` NO FORCE ROW LEVEL SECURITY`); err != nil {
			return err
		}
		if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM `+table+`)`).Scan(&rows); err != nil {
			return err
		}
		if rows {
			return errNotEmpty
		}
		stmts := []string{
			`ALTER TABLE ` + table + ` DROP CONSTRAINT IF EXISTS ` + pgx.Identifier{auditMoveCheck}.Sanitize(),
			`ALTER TABLE ` + table + ` ADD CONSTRAINT ` + pgx.Identifier{auditMoveCheck}.Sanitize() +
				` CHECK (created_at < '` + cutover.Format(time.RFC3339) + `')`,
			`DROP INDEX IF EXISTS ` + u.ident(auditMoveIndex),
			`CREATE UNIQUE INDEX ` + pgx.Identifier{auditMoveIndex}.Sanitize() + ` ON ` + table + ` (id, created_at)`,
			`CREATE INDEX IF NOT EXISTS encryption_vault_audit_user_id_idx ON ` + table + ` (user_id)`,
			`CREATE INDEX IF NOT EXISTS encryption_vault_audit_created_at_idx ON ` + table + ` (created_at)`,
		}
		if force {
			stmts = append(stmts, `ALTER TABLE `+table+` FORCE ROW LEVEL SECURITY`)
		}
		for _, stmt := range stmts {
			if _, err := tx.Exec(ctx, stmt); err != nil {
				return err
			}
		}
		if _, err := tx.Exec(ctx, `UPDATE `+u.ident(auditUpkeep)+` SET cutover = $1`, cutover); err != nil {
			return err
		}
		if err := u.swap(ctx, tx, cutover); err != nil {
			return err
		}
		// Today's partition and the next ones in the same commit: a row
		// routed to the default partition while a later ATTACH narrows
		// it fails its partition check.
		return u.createAhead(ctx, tx, nil)
	})
	if errors.Is(err, errNotEmpty) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("moving the empty table: %w", err)
	}
	return true, nil
}

// move runs the steps above on an unpartitioned table.
func (u *upkeep) move(ctx context.Context) error {
	if moved, err := u.moveEmpty(ctx); moved || err != nil {
		return err
	}
	table := u.ident(auditTable)
	var cutover *time.Time
	if err := u.conn.QueryRow(ctx, `SELECT cutover FROM `+u.ident(auditUpkeep)).Scan(&cutover); err != nil {
		return fmt.Errorf("reading the cutover: %w", err)
	}
	hasCheck, err := u.hasConstraint(ctx, auditTable, auditMoveCheck)
	if err != nil {
		return err
	}
	if cutover != nil && u.p.Now.After(cutover.Add(-auditMoveStale)) {
		cutover = nil // stale: start again
	}
	if cutover == nil {
		if hasCheck {
			if _, err := u.conn.Exec(ctx, `ALTER TABLE `+table+` DROP CONSTRAINT `+pgx.Identifier{auditMoveCheck}.Sanitize()); err != nil {
				return fmt.Errorf("dropping a stale cutover check: %w", err)
			}
			hasCheck = false
		}
		c := u.p.Now.UTC().Truncate(partitionDay).AddDate(0, 0, auditMoveDays)
		if _, err := u.conn.Exec(ctx, `UPDATE `+u.ident(auditUpkeep)+` SET cutover = $1`, c); err != nil {
			return fmt.Errorf("recording the cutover: %w", err)
		}
		cutover = &c
	}
	bound := `'` + cutover.UTC().Format(time.RFC3339) + `'`
	if !hasCheck {
		if _, err := u.conn.Exec(ctx, `ALTER TABLE `+table+` ADD CONSTRAINT `+pgx.Identifier{auditMoveCheck}.Sanitize()+
			` CHECK (created_at < `+bound+`) NOT VALID`); err != nil {
			return fmt.Errorf("adding the cutover check: %w", err)
		}
	}
	if _, err := u.conn.Exec(ctx, `ALTER TABLE `+table+` VALIDATE CONSTRAINT `+pgx.Identifier{auditMoveCheck}.Sanitize()); err != nil {
		return fmt.Errorf("validating the cutover check: %w", err)
	}
	// An index a crashed CREATE INDEX CONCURRENTLY left invalid is
	// dropped and built again.
	var valid *bool
	err = u.conn.QueryRow(ctx, `SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relname = $2`, u.schema, auditMoveIndex).Scan(&valid)
	if err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return fmt.Errorf("reading the new key's index: %w", err)
	}
	if valid != nil && !*valid {
		if _, err := u.conn.Exec(ctx, `DROP INDEX CONCURRENTLY `+u.ident(auditMoveIndex)); err != nil {
			return fmt.Errorf("dropping an invalid index: %w", err)
		}
	}
	for _, stmt := range []string{
		`CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS ` + pgx.Identifier{auditMoveIndex}.Sanitize() + ` ON ` + table + ` (id, created_at)`,
		// Both schemas have these two; a table without them gets them here
		// rather than under the lock of ATTACH.
		`CREATE INDEX CONCURRENTLY IF NOT EXISTS encryption_vault_audit_user_id_idx ON ` + table + ` (user_id)`,
		`CREATE INDEX CONCURRENTLY IF NOT EXISTS encryption_vault_audit_created_at_idx ON ` + table + ` (created_at)`,
	} {
		if _, err := u.conn.Exec(ctx, stmt); err != nil {
			return fmt.Errorf("building an index: %w", err)
		}
	}
	return pgx.BeginFunc(ctx, u.conn, func(tx pgx.Tx) error { return u.swap(ctx, tx, *cutover) })
}

func (u *upkeep) hasConstraint(ctx context.Context, table, name string) (bool, error) {
	var n int
	err := u.conn.QueryRow(ctx, `SELECT count(*) FROM pg_constraint WHERE conrelid = $1::regclass AND conname = $2`,
		u.ident(table), name).Scan(&n)
	if err != nil {
		return false, fmt.Errorf("reading constraints: %w", err)
	}
	return n > 0, nil
}

// swap is step 4, in tx.
func (u *upkeep) swap(ctx context.Context, tx pgx.Tx, cutover time.Time) error {
	legacy := "encryption_vault_audit_before_" + cutover.UTC().Format("20060102")
	table, old := u.ident(auditTable), u.ident(legacy)
	exec := func(sql string) error {
		if _, err := tx.Exec(ctx, sql); err != nil {
			return fmt.Errorf("%s: %w", strings.SplitN(sql, " (", 2)[0], err)
		}
		return nil
	}
	if err := exec(`LOCK TABLE ` + table + ` IN ACCESS EXCLUSIVE MODE`); err != nil {
		return err
	}
	if err := exec(`ALTER TABLE ` + table + ` RENAME TO ` + pgx.Identifier{legacy}.Sanitize()); err != nil {
		return err
	}
	var pkey string
	err := tx.QueryRow(ctx, `SELECT conname FROM pg_constraint WHERE conrelid = $1::regclass AND contype = 'p'`, old).Scan(&pkey)
	if err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return fmt.Errorf("reading the primary key: %w", err)
	}
	stmts := []string{}
	if pkey != "" {
		stmts = append(stmts, `ALTER TABLE `+old+` DROP CONSTRAINT `+pgx.Identifier{pkey}.Sanitize())
	}
	stmts = append(stmts,
		`ALTER TABLE `+old+` ADD CONSTRAINT `+pgx.Identifier{legacy + "_pkey"}.Sanitize()+` PRIMARY KEY USING INDEX `+pgx.Identifier{auditMoveIndex}.Sanitize(),
		`ALTER INDEX `+u.ident("encryption_vault_audit_user_id_idx")+` RENAME TO `+pgx.Identifier{legacy + "_user_id_idx"}.Sanitize(),
		`ALTER INDEX `+u.ident("encryption_vault_audit_created_at_idx")+` RENAME TO `+pgx.Identifier{legacy + "_created_at_idx"}.Sanitize(),
		`CREATE TABLE `+table+` (LIKE `+old+` INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING COMMENTS,
    CONSTRAINT `+auditPrimaryKey+` PRIMARY KEY (id, created_at)) PARTITION BY RANGE (created_at)`,
		`ALTER TABLE `+table+` DROP CONSTRAINT `+pgx.Identifier{auditMoveCheck}.Sanitize(),
		`CREATE INDEX encryption_vault_audit_user_id_idx ON `+table+` (user_id)`,
		`CREATE INDEX encryption_vault_audit_created_at_idx ON `+table+` (created_at)`,
	)
	for _, s := range stmts {
		if err := exec(s); err != nil {
			return err
		}
	}
	copied, err := copyTableRules(ctx, tx, old, table)
	if err != nil {
		return err
	}
	for _, s := range copied {
		if err := exec(s); err != nil {
			return err
		}
	}
	if err := exec(`ALTER TABLE ` + table + ` ATTACH PARTITION ` + old + ` FOR VALUES FROM (MINVALUE) TO ('` + cutover.UTC().Format(time.RFC3339) + `')`); err != nil {
		return err
	}
	// The default partition in the same commit: until the upkeep creates
	// today's partition, a row of today has no other one to go to.
	for _, stmt := range []string{
		`CREATE TABLE ` + u.ident(auditDefault) + ` (LIKE ` + table + ` INCLUDING DEFAULTS INCLUDING CONSTRAINTS)`,
		`ALTER TABLE ` + table + ` ATTACH PARTITION ` + u.ident(auditDefault) + ` DEFAULT`,
	} {
		if err := exec(stmt); err != nil {
			return err
		}
	}
	return exec(`UPDATE ` + u.ident(auditUpkeep) + ` SET moved_at = now()`)
}

// copyTableRules returns the statements that give table what old has
// beyond its columns: foreign keys, row-level security and its policies,
// and the grants; and take them off old, which is read through table from
// now on like every partition: no role but the owner may read a partition
// directly (the upkeep and the status do, as the owner).
func copyTableRules(ctx context.Context, tx pgx.Tx, old, table string) ([]string, error) {
	var out []string
	rows, err := tx.Query(ctx, `SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = $1::regclass AND contype = 'f' ORDER BY conname`, old)
	if err != nil {
		return nil, fmt.Errorf("reading foreign keys: %w", err)
	}
	fks, err := pgx.CollectRows(rows, pgx.RowToStructByPos[struct{ Name, Def string }])
	if err != nil {
		return nil, fmt.Errorf("reading foreign keys: %w", err)
	}
	for _, fk := range fks {
		out = append(out, `ALTER TABLE `+table+` ADD CONSTRAINT `+pgx.Identifier{fk.Name}.Sanitize()+` `+fk.Def)
	}
	var rls, force bool
	if err := tx.QueryRow(ctx, `SELECT relrowsecurity, relforcerowsecurity FROM pg_class WHERE oid = $1::regclass`, old).Scan(&rls, &force); err != nil {
		return nil, fmt.Errorf("reading row-level security: %w", err)
	}
	if rls {
		out = append(out, `ALTER TABLE `+table+` ENABLE ROW LEVEL SECURITY`, `ALTER TABLE `+old+` DISABLE ROW LEVEL SECURITY`)
	}
	if force {
		out = append(out, `ALTER TABLE `+table+` FORCE ROW LEVEL SECURITY`, `ALTER TABLE `+old+` NO FORCE ROW LEVEL SECURITY`)
	}
	rows, err = tx.Query(ctx, `SELECT p.polname, p.polpermissive,
    CASE p.polcmd WHEN 'r' THEN 'SELECT' WHEN 'a' THEN 'INSERT' WHEN 'w' THEN 'UPDATE' WHEN 'd' THEN 'DELETE' ELSE 'ALL' END,
    ARRAY(SELECT CASE WHEN r = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(r)) END FROM unnest(p.polroles) AS r),
    coalesce(pg_get_expr(p.polqual, p.polrelid), ''), coalesce(pg_get_expr(p.polwithcheck, p.polrelid), '')
FROM pg_policy p WHERE p.polrelid = $1::regclass ORDER BY p.polname`, old)
	if err != nil {
		return nil, fmt.Errorf("reading policies: %w", err)
	}
	type policy struct {
		Name        string
		Permissive  bool
		Cmd         string
		Roles       []string
		Qual, Check string
	}
	policies, err := pgx.CollectRows(rows, pgx.RowToStructByPos[policy])
	if err != nil {
		return nil, fmt.Errorf("reading policies: %w", err)
	}
	for _, p := range policies {
		as := "PERMISSIVE"
		if !p.Permissive {
			as = "RESTRICTIVE"
		}
		s := `CREATE POLICY ` + pgx.Identifier{p.Name}.Sanitize() + ` ON ` + table + ` AS ` + as + ` FOR ` + p.Cmd + ` TO ` + strings.Join(p.Roles, ", ")
		if p.Qual != "" {
			s += ` USING (` + p.Qual + `)`
		}
		if p.Check != "" {
			s += ` WITH CHECK (` + p.Check + `)`
		}
		out = append(out, s, `DROP POLICY `+pgx.Identifier{p.Name}.Sanitize()+` ON `+old)
	}
	rows, err = tx.Query(ctx, `SELECT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(a.grantee)) END, a.privilege_type
FROM pg_class c, aclexplode(c.relacl) a WHERE c.oid = $1::regclass AND a.grantee <> c.relowner ORDER BY 1, 2`, old)
	if err != nil {
		return nil, fmt.Errorf("reading grants: %w", err)
	}
	grants, err := pgx.CollectRows(rows, pgx.RowToStructByPos[struct{ Grantee, Privilege string }])
	if err != nil {
		return nil, fmt.Errorf("reading grants: %w", err)
	}
	for _, g := range grants {
		out = append(out, `GRANT `+g.Privilege+` ON `+table+` TO `+g.Grantee, `REVOKE ALL ON `+old+` FROM `+g.Grantee)
	}
	return out, nil
}
