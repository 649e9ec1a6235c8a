// Package pgstore is keybroker's PostgreSQL store: it implements
// broker.Store on a pgx pool over the tables of package migrations.
//
// Every transaction is scoped to one user through
// set_config('app.current_user_id', $1, true), which the row-level
// security policies of both tables compare against, so the runtime role
// needs neither superuser nor BYPASSRLS: the database itself keeps one
// user's transaction away from another user's rows.
package pgstore

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/keybroker/keybroker/broker"
)

// DefaultSchema is the schema keybroker uses when none is configured.
const DefaultSchema = "keybroker"

// Config configures a Store.
type Config struct {
	// Pool is the connection pool; required. The Store does not close it.
	Pool *pgxpool.Pool
	// Schema holds the tables; DefaultSchema when empty. Use "auth" to run
	// on a mana-auth database.
	Schema string
}

func (c *Config) validate() error {
	if c.Pool == nil {
		return errors.New("pgstore: Config.Pool is required")
	}
	if c.Schema == "" {
		c.Schema = DefaultSchema
	}
	return nil
}

// Store implements broker.Store on PostgreSQL.
type Store struct {
	pool   *pgxpool.Pool
	schema string // unsanitized; build identifiers with pgx.Identifier
	sql    statements
	// fetchArgs caches VaultFetch's per-batch parameters.
	fetchArgs fetchArgs
}

var _ broker.Store = (*Store)(nil)

// New returns a Store. It does not connect: the store may be down when
// keybroker starts, which readiness (Ping) reports.
func New(ctx context.Context, cfg Config) (*Store, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	return &Store{pool: cfg.Pool, schema: cfg.Schema, sql: newStatements(cfg.Schema)}, nil
}

// vaultColumns is the column list of every vault read and insert, in the
// order scanVault and vaultArgs use.
const vaultColumns = `user_id, wrapped_mk, wrap_iv, format_version, kek_id, key_check, created_at, rotated_at,
    recovery_wrapped_mk, recovery_iv, recovery_format_version, recovery_set_at, zero_knowledge,
    key_proof, restorable_recovery_wrapped_mk, restorable_recovery_iv, restorable_recovery_format_version,
    restorable_recovery_set_at, restorable_key_check, restorable_key_proof, restorable_taken_at`

// statements is the store's SQL with the schema's sanitized table names
// spliced in once, at construction.
type statements struct {
	vaultGet, vaultGetForUpdate, vaultInsert, vaultUpdate, auditInsert, auditAppend, vaultFetch, ping string
}

func newStatements(schema string) statements {
	vaults := pgx.Identifier{schema, "encryption_vaults"}.Sanitize()
	audit := pgx.Identifier{schema, "encryption_vault_audit"}.Sanitize()
	get := `SELECT ` + vaultColumns + ` FROM ` + vaults + ` WHERE user_id = $1`
	return statements{
		vaultGet:          get,
		vaultGetForUpdate: get + ` FOR UPDATE`,
		vaultInsert: `INSERT INTO ` + vaults + ` (` + vaultColumns + `)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21)
ON CONFLICT (user_id) DO NOTHING`,
		vaultUpdate: `UPDATE ` + vaults + ` SET
    wrapped_mk = $2, wrap_iv = $3, format_version = $4, kek_id = $5, key_check = $6,
    created_at = $7, rotated_at = $8, recovery_wrapped_mk = $9, recovery_iv = $10,
    recovery_format_version = $11, recovery_set_at = $12, zero_knowledge = $13,
    key_proof = $14, restorable_recovery_wrapped_mk = $15, restorable_recovery_iv = $16,
    restorable_recovery_format_version = $17, restorable_recovery_set_at = $18,
    restorable_key_check = $19, restorable_key_proof = $20, restorable_taken_at = $21
WHERE user_id = $1`,
		// Empty strings are stored as NULL, as the original service left
		// unknown request metadata.
		auditInsert: `INSERT INTO ` + audit + ` (id, user_id, action, ip_address, user_agent, context, status, created_at, mac)
VALUES ($1, $2, $3, NULLIF($4, ''), NULLIF($5, ''), NULLIF($6, ''), $7, $8, $9)`,
		// The rows of AuditAppend, as arrays: set_config scopes each row
		// to its own user as the row is produced (see AuditAppend).
		auditAppend: `INSERT INTO ` + audit + ` (id, user_id, action, ip_address, user_agent, context, status, created_at, mac)
SELECT r.id, set_config('app.current_user_id', r.user_id, true), r.action,
    NULLIF(r.ip_address, ''), NULLIF(r.user_agent, ''), NULLIF(r.context, ''), r.status, r.created_at, r.mac
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::int4[], $8::timestamptz[], $9::bytea[])
    AS r(id, user_id, action, ip_address, user_agent, context, status, created_at, mac)`,
		// One fetch: the read and, by what it found, the audit row
		// (broker.FetchBatch.Case): $6 lists the KEK ids that open
		// locally, $7–$9 the outcomes' actions, contexts and statuses in
		// broker.FetchCase order. A data-modifying WITH runs whether or
		// not the outer select reads it. $10 are the rows' MACs by case.
		vaultFetch: `WITH v AS (` + get + `),
c AS (
    SELECT CASE WHEN v.user_id IS NULL THEN 1 WHEN v.zero_knowledge THEN 2 WHEN v.kek_id = ANY($6::text[]) THEN 3 END AS i
    FROM (VALUES (1)) AS one (x) LEFT JOIN v ON true
),
a AS (
    INSERT INTO ` + audit + ` (id, user_id, action, ip_address, user_agent, context, status, created_at, mac)
    SELECT $2::text, $1, ($7::text[])[c.i], NULLIF($3::text, ''), NULLIF($4::text, ''), NULLIF(($8::text[])[c.i], ''),
        ($9::int4[])[c.i], $5::timestamptz, ($10::bytea[])[c.i]
    FROM c WHERE c.i IS NOT NULL
)
SELECT ` + vaultColumns + ` FROM v`,
		// LIMIT 0 reads no row, yet the statement fails unless both tables
		// exist and the role may read them.
		ping: `SELECT 1 FROM ` + vaults + `, ` + audit + ` LIMIT 0`,
	}
}

// InUserTx runs fn in one transaction scoped to userID and commits it
// when fn returns nil. An error of fn rolls the transaction back and is
// returned as is; failures to reach the database are returned as
// *broker.UnavailableError.
func (s *Store) InUserTx(ctx context.Context, userID string, fn func(tx broker.Tx) error) error {
	if userID == "" {
		// An empty scope would match rows whose user_id is '' — refuse it
		// rather than rely on there being none.
		return fmt.Errorf("pgstore: %w: empty user id", broker.ErrInvalidArgument)
	}
	pgTx, err := s.pool.Begin(ctx)
	if err != nil {
		return interpretError(fmt.Errorf("begin: %w", err))
	}
	// Rollback after a successful commit is a no-op. With ctx already
	// cancelled pgx closes the connection instead, and the server rolls
	// back; either way nothing of a failed fn is kept.
	defer func() { _ = pgTx.Rollback(ctx) }()

	if _, err := pgTx.Exec(ctx, "SELECT set_config('app.current_user_id', $1, true)", userID); err != nil {
		return interpretError(fmt.Errorf("set user scope: %w", err))
	}
	if err := fn(&tx{tx: pgTx, userID: userID, sql: &s.sql}); err != nil {
		return err
	}
	if err := pgTx.Commit(ctx); err != nil {
		return interpretError(fmt.Errorf("commit: %w", err))
	}
	return nil
}

// Ping reports, for readiness, whether the database answers and this
// role can use the store's tables: an unmigrated schema or a missing
// GRANT then shows as "not ready" instead of as a 500 on every request.
// An unreachable database is a *broker.UnavailableError; a missing table
// or privilege is a plain error.
func (s *Store) Ping(ctx context.Context) error {
	if _, err := s.pool.Exec(ctx, s.sql.ping); err != nil {
		return interpretError(fmt.Errorf("ping: %w", err))
	}
	return nil
}

// tx implements broker.Tx on one pgx transaction.
type tx struct {
	tx     pgx.Tx
	userID string
	sql    *statements
}

var _ broker.Tx = (*tx)(nil)

// VaultGet returns the scoped user's vault, locked until the end of the
// transaction when forUpdate is set. It returns broker.ErrNotFound when
// the user has none.
func (t *tx) VaultGet(ctx context.Context, forUpdate bool) (*broker.Vault, error) {
	query := t.sql.vaultGet
	if forUpdate {
		query = t.sql.vaultGetForUpdate
	}
	v, err := scanVault(t.tx.QueryRow(ctx, query, t.userID))
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, broker.ErrNotFound
	}
	if err != nil {
		return nil, interpretError(fmt.Errorf("vault get: %w", err))
	}
	return v, nil
}

// VaultInsert inserts v unless the user already has a vault and reports
// whether it did. A concurrent insert of the same user waits for the other
// transaction and then reports false, so the caller may read the winner's
// row in the same transaction.
func (t *tx) VaultInsert(ctx context.Context, v *broker.Vault) (bool, error) {
	if err := t.checkScope("vault insert", v.UserID); err != nil {
		return false, err
	}
	tag, err := t.tx.Exec(ctx, t.sql.vaultInsert, vaultArgs(v)...)
	if err != nil {
		return false, interpretError(fmt.Errorf("vault insert: %w", err))
	}
	return tag.RowsAffected() == 1, nil
}

// VaultUpdate overwrites every column of the user's vault with v. It
// returns broker.ErrNotFound when the row is gone; a row that breaks a
// CHECK constraint is a plain error and aborts the transaction.
func (t *tx) VaultUpdate(ctx context.Context, v *broker.Vault) error {
	if err := t.checkScope("vault update", v.UserID); err != nil {
		return err
	}
	tag, err := t.tx.Exec(ctx, t.sql.vaultUpdate, vaultArgs(v)...)
	if err != nil {
		return interpretError(fmt.Errorf("vault update: %w", err))
	}
	if tag.RowsAffected() == 0 {
		return broker.ErrNotFound
	}
	return nil
}

// AuditInsert appends one audit row; it commits or rolls back with the
// rest of the transaction.
func (t *tx) AuditInsert(ctx context.Context, e *broker.AuditEntry) error {
	if err := t.checkScope("audit insert", e.UserID); err != nil {
		return err
	}
	_, err := t.tx.Exec(ctx, t.sql.auditInsert,
		e.ID, e.UserID, string(e.Action), e.IPAddress, e.UserAgent, e.Context, e.Status, e.CreatedAt, e.MAC)
	if err != nil {
		return interpretError(fmt.Errorf("audit insert: %w", err))
	}
	return nil
}

// checkScope refuses a write for another user than the transaction's.
// Row-level security would refuse it too; checking first turns a
// programming error into a clear message instead of a policy violation.
func (t *tx) checkScope(what, userID string) error {
	if userID != t.userID {
		return fmt.Errorf("pgstore: %s: row of user %q in a transaction scoped to user %q", what, userID, t.userID)
	}
	return nil
}

func vaultArgs(v *broker.Vault) []any {
	var r broker.RestorableRecovery
	var wrapped, iv *string
	var format *int
	var takenAt *time.Time
	if v.Restorable != nil {
		r = *v.Restorable
		wrapped, iv, format, takenAt = &r.WrappedMK, &r.IV, &r.FormatVersion, &r.TakenAt
	}
	return []any{
		v.UserID, v.WrappedMK, v.WrapIV, v.FormatVersion, v.KEKID, v.KeyCheck, v.CreatedAt, v.RotatedAt,
		v.RecoveryWrappedMK, v.RecoveryIV, v.RecoveryFormatVersion, v.RecoverySetAt, v.ZeroKnowledge,
		v.KeyProof, wrapped, iv, format, r.SetAt, r.KeyCheck, r.KeyProof, takenAt,
	}
}

// Pool defaults of OpenPool.
const (
	defaultConnectTimeout = 5 * time.Second
	defaultApplication    = "keybroker"
)

// DefaultPoolSize is the most connections OpenPool's pool opens when
// neither the URL (pool_max_conns) nor PoolConfig.MaxConns sets it: 4
// per CPU, at least 8. Commits wait on the disk, so a pool larger than
// the CPUs keeps them busy; every replica opens this many at most, and
// ReadConnectionBudget says how many replicas the server has room for.
func DefaultPoolSize() int { return max(8, 4*runtime.NumCPU()) }

// PoolConfig configures NewPool.
type PoolConfig struct {
	// URL is a PostgreSQL URL or keyword/value string; required.
	URL string
	// MaxConns is the pool's size; 0: DefaultPoolSize. A pool_max_conns in
	// the URL wins (callers refuse the two when they disagree).
	MaxConns int
}

// OpenPool is NewPool with the pool size of the URL, else the default.
func OpenPool(ctx context.Context, url string) (*pgxpool.Pool, error) {
	return NewPool(ctx, PoolConfig{URL: url})
}

// NewPool parses a PostgreSQL URL (or keyword/value DSN) and returns a
// pool with keybroker's defaults for what the URL leaves unset: a connect
// timeout so that an unreachable server fails requests quickly instead of
// hanging them, a pool sized for many short transactions waiting on commit
// (MaxConns, else 4 per CPU, at least 8), and application_name=keybroker.
// Parameters in the URL (connect_timeout, pool_max_conns,
// application_name) win. It does not connect; use Store.Ping. A URL that
// does not parse is a *URLError, which says which part is wrong and
// never holds the password.
func NewPool(ctx context.Context, pc PoolConfig) (*pgxpool.Pool, error) {
	cfg, err := pgxpool.ParseConfig(pc.URL)
	if err != nil {
		// The parse error may quote the URL, password included.
		if uerr := CheckURL(pc.URL); uerr != nil {
			return nil, uerr
		}
		return nil, errors.New("pgstore: cannot parse the database URL")
	}
	if cfg.ConnConfig.ConnectTimeout == 0 {
		cfg.ConnConfig.ConnectTimeout = defaultConnectTimeout
	}
	if _, set := URLPoolSize(pc.URL); !set {
		cfg.MaxConns = int32(DefaultPoolSize())
		if pc.MaxConns > 0 {
			cfg.MaxConns = int32(pc.MaxConns)
		}
	}
	if _, ok := cfg.ConnConfig.RuntimeParams["application_name"]; !ok {
		cfg.ConnConfig.RuntimeParams["application_name"] = defaultApplication
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("pgstore: open pool: %w", err)
	}
	return pool, nil
}
