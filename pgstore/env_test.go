package pgstore_test

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/internal/testkit/pgtest"
	"github.com/keybroker/keybroker/migrations"
	"github.com/keybroker/keybroker/pgstore"
)

// env is a fresh database with the two roles of a production install:
// a migrator that owns the schema (CREATE on the database, nothing more)
// and a runtime role with DML grants only. Neither is superuser nor
// BYPASSRLS, so row-level security binds both. admin is the superuser,
// used to look at what was really written.
type env struct {
	admin        *pgxpool.Pool
	migrator     pgtest.Role
	migratorPool *pgxpool.Pool
	runtime      pgtest.Role
	runtimePool  *pgxpool.Pool
	databaseURL  string
}

func newEnv(t *testing.T) *env {
	t.Helper()
	dbURL := pgtest.NewDatabase(t)
	e := &env{databaseURL: dbURL, admin: pgtest.NewPool(t, dbURL)}
	e.migrator = pgtest.NewRole(t, dbURL)
	e.runtime = pgtest.NewRole(t, dbURL)
	var db string
	require.NoError(t, e.admin.QueryRow(t.Context(), "SELECT current_database()").Scan(&db))
	pgtest.Exec(t, e.admin, "GRANT CREATE ON DATABASE "+pgx.Identifier{db}.Sanitize()+" TO "+ident(e.migrator.Name))
	e.migratorPool = pgtest.NewPool(t, e.migrator.URL)
	e.runtimePool = pgtest.NewPool(t, e.runtime.URL)
	return e
}

func ident(name string) string { return pgx.Identifier{name}.Sanitize() }

// migrate applies the migrations to schema as the migrator and grants the
// runtime role what keybroker's runtime needs.
func (e *env) migrate(t *testing.T, schema string) {
	t.Helper()
	_, err := migrations.Apply(t.Context(), e.migratorPool, schema)
	require.NoError(t, err)
	grantRuntime(t, e.migratorPool, schema, e.runtime.Name)
}

func grantRuntime(t *testing.T, owner *pgxpool.Pool, schema, role string) {
	t.Helper()
	pgtest.Exec(t, owner, "GRANT USAGE ON SCHEMA "+ident(schema)+" TO "+ident(role))
	pgtest.Exec(t, owner, "GRANT SELECT, INSERT, UPDATE, DELETE ON "+pgx.Identifier{schema, "encryption_vaults"}.Sanitize()+" TO "+ident(role))
	pgtest.Exec(t, owner, "GRANT SELECT, INSERT ON "+pgx.Identifier{schema, "encryption_vault_audit"}.Sanitize()+" TO "+ident(role))
	// The re-wrap job's index (read only: a trigger maintains it) and state.
	pgtest.Exec(t, owner, "GRANT SELECT ON "+pgx.Identifier{schema, "encryption_vault_kek_index"}.Sanitize()+" TO "+ident(role))
	pgtest.Exec(t, owner, "GRANT SELECT, INSERT, UPDATE ON "+pgx.Identifier{schema, "encryption_vault_rewrap_state"}.Sanitize()+" TO "+ident(role))
	// Cached envelope mode's data keys, and the ids of deleted ones.
	pgtest.Exec(t, owner, "GRANT SELECT, INSERT, UPDATE, DELETE ON "+pgx.Identifier{schema, "kek_data_keys"}.Sanitize()+" TO "+ident(role))
	pgtest.Exec(t, owner, "GRANT SELECT, INSERT ON "+pgx.Identifier{schema, "kek_data_keys_deleted"}.Sanitize()+" TO "+ident(role))
	// Tamper evidence (docs/audit.md): the audit key's wraps, the
	// checkpoints and the marks are only ever added to.
	for _, table := range []string{"encryption_vault_audit_keys", "encryption_vault_audit_checkpoints", "encryption_vault_audit_marks"} {
		pgtest.Exec(t, owner, "GRANT SELECT, INSERT ON "+pgx.Identifier{schema, table}.Sanitize()+" TO "+ident(role))
	}
	// The wraps of the data keys by more KEKs than one.
	pgtest.Exec(t, owner, "GRANT SELECT, INSERT, DELETE ON "+pgx.Identifier{schema, "kek_data_key_wraps"}.Sanitize()+" TO "+ident(role))
}

// store returns a Store on the runtime role's pool.
func (e *env) store(t *testing.T, schema string) *pgstore.Store {
	t.Helper()
	s, err := pgstore.New(t.Context(), pgstore.Config{Pool: e.runtimePool, Schema: schema})
	require.NoError(t, err)
	return s
}

// auditRows reads a user's audit rows as the superuser, which row-level
// security does not bind: the truth, whatever the store did.
func auditRows(pool *pgxpool.Pool, schema string) func(ctx context.Context, userID string) ([]broker.AuditEntry, error) {
	query := `SELECT id, user_id, action, coalesce(ip_address, ''), coalesce(user_agent, ''), coalesce(context, ''), status, created_at
FROM ` + pgx.Identifier{schema, "encryption_vault_audit"}.Sanitize() + ` WHERE user_id = $1 ORDER BY created_at, id`
	return func(ctx context.Context, userID string) ([]broker.AuditEntry, error) {
		rows, err := pool.Query(ctx, query, userID)
		if err != nil {
			return nil, err
		}
		return pgx.CollectRows(rows, func(row pgx.CollectableRow) (broker.AuditEntry, error) {
			var a broker.AuditEntry
			err := row.Scan(&a.ID, &a.UserID, &a.Action, &a.IPAddress, &a.UserAgent, &a.Context, &a.Status, &a.CreatedAt)
			return a, err
		})
	}
}

// scoped runs fn as the runtime role in a raw transaction scoped to
// userID (none when empty), then rolls it back.
func scoped(t *testing.T, pool *pgxpool.Pool, userID string, fn func(tx pgx.Tx)) {
	t.Helper()
	tx, err := pool.Begin(t.Context())
	require.NoError(t, err)
	defer func() { _ = tx.Rollback(context.WithoutCancel(t.Context())) }()
	if userID != "" {
		_, err = tx.Exec(t.Context(), "SELECT set_config('app.current_user_id', $1, true)", userID)
		require.NoError(t, err)
	}
	fn(tx)
}
