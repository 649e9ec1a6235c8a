package pgstore

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// PrivilegedRoleError reports that the pool connects as a role that
// row-level security does not bind. A superuser and a role with BYPASSRLS
// see and write every user's rows whatever the policies say, even with
// FORCE ROW LEVEL SECURITY, so the store's per-user scoping would then
// rest on keybroker's own SQL alone.
type PrivilegedRoleError struct {
	// Database is the database the pool connects to.
	Database string
	// SessionUser is the role the connection logged in as, CurrentUser
	// the role its statements run as (they differ when the role's
	// settings or the URL's options say SET ROLE).
	SessionUser, CurrentUser string
	// Role is the privileged role: SessionUser, CurrentUser, or a role
	// SessionUser is a member of and can therefore SET ROLE to.
	Role string
	// Superuser and BypassRLS are Role's attributes; at least one is set.
	Superuser, BypassRLS bool
}

func (e *PrivilegedRoleError) Error() string {
	what := "is a superuser"
	if !e.Superuser {
		what = "has BYPASSRLS"
	}
	switch e.Role {
	case e.CurrentUser, e.SessionUser:
		return fmt.Sprintf("pgstore: the database role %q %s: row-level security does not apply to it", e.Role, what)
	default:
		return fmt.Sprintf("pgstore: the database role %q is a member of %q, which %s: one SET ROLE and row-level security does not apply", e.SessionUser, e.Role, what)
	}
}

// roleCheckSQL finds a role that makes row-level security moot for this
// session: the session user, the current user, or any role the session
// user is a member of, directly or not (which it can SET ROLE to), that
// is a superuser or has BYPASSRLS. BYPASSRLS is not inherited through
// membership, but SET ROLE acquires it, and keybroker's role never needs
// such a membership. The roles the session itself is come first.
const roleCheckSQL = `SELECT current_database(), session_user::text, current_user::text, r.rolname::text, r.rolsuper, r.rolbypassrls
FROM pg_catalog.pg_roles AS r
WHERE (r.rolsuper OR r.rolbypassrls)
  AND (r.rolname IN (session_user, current_user) OR pg_catalog.pg_has_role(session_user, r.oid, 'MEMBER'))
ORDER BY r.rolname = current_user DESC, r.rolname = session_user DESC, r.rolname
LIMIT 1`

// CheckRole returns a *PrivilegedRoleError when the pool's connections
// run as, or can SET ROLE to, a superuser or a role with BYPASSRLS. It
// asks once, on one connection: every connection of a pool logs in with
// the same settings. A database it cannot reach is a
// *broker.UnavailableError, as elsewhere in the store.
func CheckRole(ctx context.Context, pool *pgxpool.Pool) error {
	var e PrivilegedRoleError
	err := pool.QueryRow(ctx, roleCheckSQL).Scan(&e.Database, &e.SessionUser, &e.CurrentUser, &e.Role, &e.Superuser, &e.BypassRLS)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil
	}
	if err != nil {
		return interpretError(fmt.Errorf("check the database role: %w", err))
	}
	return &e
}

// quoteIdent quotes a name for the SQL a refusal suggests.
func quoteIdent(name string) string { return pgx.Identifier{name}.Sanitize() }

// PlainRoleSQL is ready-to-paste SQL, for a superuser, that creates a
// LOGIN role named role without superuser or BYPASSRLS and lets it create
// keybroker's schema: a database of its own named database, or, in the
// alternative it also shows, CREATE on the database e names. The
// password is a placeholder the operator replaces.
func (e *PrivilegedRoleError) PlainRoleSQL(role, database string) string {
	r, d := quoteIdent(role), quoteIdent(database)
	var b strings.Builder
	fmt.Fprintf(&b, "CREATE ROLE %s LOGIN NOSUPERUSER NOBYPASSRLS PASSWORD '<a long random password>';\n", r)
	fmt.Fprintf(&b, "CREATE DATABASE %s OWNER %s;\n", d, r)
	fmt.Fprintf(&b, "-- or, to keep using the database %s:\n", quoteIdent(e.Database))
	fmt.Fprintf(&b, "GRANT CREATE ON DATABASE %s TO %s;", quoteIdent(e.Database), r)
	return b.String()
}

// ConnectionBudget is how the server's connections are shared out: what
// max_connections allows ordinary roles, how many are open now, and how
// many one pool may take.
type ConnectionBudget struct {
	// MaxConnections is the server's max_connections.
	MaxConnections int
	// Reserved are the connections kept for superusers and roles with
	// pg_use_reserved_connections (superuser_reserved_connections and,
	// from PostgreSQL 16, reserved_connections).
	Reserved int
	// Open are the client connections open now, of every role and
	// database, this pool's included.
	Open int
	// Own are the connections of this pool among Open.
	Own int
	// Pool is the most connections one pool opens (its MaxConns).
	Pool int
}

// Available is what ordinary roles may open together.
func (b ConnectionBudget) Available() int { return max(0, b.MaxConnections-b.Reserved) }

// Replicas is how many pools of this size fit in what is available.
func (b ConnectionBudget) Replicas() int {
	if b.Pool <= 0 {
		return 0
	}
	return b.Available() / b.Pool
}

// Others are the connections open now that are not this pool's.
func (b ConnectionBudget) Others() int { return max(0, b.Open-b.Own) }

// Tight reports whether the budget leaves no room for a second replica
// (nor for the new process of a rolling restart beside the old one), or
// whether the connections others hold now leave less than a full pool.
func (b ConnectionBudget) Tight() bool {
	return b.Replicas() < 2 || b.Available()-b.Others() < b.Pool
}

// connectionBudgetSQL reads the limits and counts the sessions connected
// to any database; pg_stat_database shows every role that count, where
// pg_stat_activity hides the kind of other roles' processes.
const connectionBudgetSQL = `SELECT current_setting('max_connections')::int,
  current_setting('superuser_reserved_connections')::int
    + coalesce(nullif(current_setting('reserved_connections', true), '')::int, 0),
  (SELECT coalesce(sum(numbackends), 0)::int FROM pg_catalog.pg_stat_database)`

// ReadConnectionBudget reads the server's connection limits and use, and
// the pool's size. A server it cannot reach is a *broker.UnavailableError.
func ReadConnectionBudget(ctx context.Context, pool *pgxpool.Pool) (ConnectionBudget, error) {
	b := ConnectionBudget{Pool: int(pool.Config().MaxConns)}
	if err := pool.QueryRow(ctx, connectionBudgetSQL).Scan(&b.MaxConnections, &b.Reserved, &b.Open); err != nil {
		return b, interpretError(fmt.Errorf("read max_connections: %w", err))
	}
	b.Own = int(pool.Stat().TotalConns())
	return b, nil
}

// PrivilegeError is a role that may not create or change keybroker's
// schema: the migrations need CREATE on the database to make the schema,
// or CREATE on the schema (and ownership of its tables) once it exists.
type PrivilegeError struct {
	Role, Database, Schema string
	// SchemaExists tells which grant is missing.
	SchemaExists bool
	// Err is the server's refusal, when the migrations met one.
	Err error
}

func (e *PrivilegeError) Error() string {
	var b strings.Builder
	what := fmt.Sprintf("create the schema %q in the database %q", e.Schema, e.Database)
	if e.SchemaExists {
		what = fmt.Sprintf("create or change tables in the schema %q of the database %q", e.Schema, e.Database)
	}
	fmt.Fprintf(&b, "pgstore: the database role %q may not %s", e.Role, what)
	if e.Err != nil {
		fmt.Fprintf(&b, " (%v)", e.Err)
	}
	b.WriteString(".\n  The migrations need it. As the database's owner or a superuser, run:\n    ")
	b.WriteString(e.GrantSQL())
	return b.String()
}

// Unwrap is the server's refusal.
func (e *PrivilegeError) Unwrap() error { return e.Err }

// GrantSQL is ready-to-paste SQL that gives the role what the migrations
// need.
func (e *PrivilegeError) GrantSQL() string {
	r, d, s := quoteIdent(e.Role), quoteIdent(e.Database), quoteIdent(e.Schema)
	if e.SchemaExists {
		return fmt.Sprintf("ALTER SCHEMA %s OWNER TO %s;\n  (or GRANT USAGE, CREATE ON SCHEMA %s TO %s; tables another role made need ALTER TABLE … OWNER TO %s)", s, r, s, r, r)
	}
	return fmt.Sprintf("GRANT CREATE ON DATABASE %s TO %s;", d, r)
}

// privilegeSQL says who the session is and whether it may create the
// schema (CREATE on the database) or, when it exists, tables in it.
const privilegeSQL = `SELECT current_user::text, current_database()::text,
  n.oid IS NOT NULL,
  CASE WHEN n.oid IS NULL THEN has_database_privilege(current_database(), 'CREATE')
       ELSE has_schema_privilege(n.oid, 'CREATE') END
FROM (SELECT 1) AS one LEFT JOIN pg_catalog.pg_namespace AS n ON n.nspname = $1`

// CheckMigratePrivileges reports, without changing anything, whether the
// pool's role may apply the migrations to schema: CREATE on the database
// while the schema does not exist, CREATE on the schema once it does. Its
// refusal is a *PrivilegeError; a server it cannot reach is a
// *broker.UnavailableError.
func CheckMigratePrivileges(ctx context.Context, pool *pgxpool.Pool, schema string) error {
	var e PrivilegeError
	var allowed bool
	e.Schema = schema
	if err := pool.QueryRow(ctx, privilegeSQL, schema).Scan(&e.Role, &e.Database, &e.SchemaExists, &allowed); err != nil {
		return interpretError(fmt.Errorf("check the role's privileges: %w", err))
	}
	if allowed {
		return nil
	}
	return &e
}

// ExplainMigrateError turns a migration refused for want of a privilege
// (SQLSTATE 42501, insufficient_privilege) into a *PrivilegeError that
// names the grant to run; any other error is returned as it is.
func ExplainMigrateError(ctx context.Context, pool *pgxpool.Pool, schema string, err error) error {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "42501" {
		return err
	}
	e := &PrivilegeError{Schema: schema, Err: errors.New(pgErr.Message)}
	var allowed bool
	if qerr := pool.QueryRow(ctx, privilegeSQL, schema).Scan(&e.Role, &e.Database, &e.SchemaExists, &allowed); qerr != nil {
		return err
	}
	return e
}
