package pgstore

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
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
