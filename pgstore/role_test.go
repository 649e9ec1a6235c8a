package pgstore_test

import (
	"crypto/rand"
	"errors"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/internal/testkit/pgtest"
	"github.com/keybroker/keybroker/pgstore"
)

// TestCheckRoleRefusesRolesThatRLSDoesNotBind: every way a session can end
// up above the policies — superuser, BYPASSRLS, a default SET ROLE to such
// a role, membership in one — is found; a plain role, and a plain role
// that is a member of plain roles only, passes.
func TestCheckRoleRefusesRolesThatRLSDoesNotBind(t *testing.T) {
	t.Parallel()
	dbURL := pgtest.NewDatabase(t)
	admin := pgtest.NewPool(t, dbURL)
	check := func(t *testing.T, url string) error {
		t.Helper()
		return pgstore.CheckRole(t.Context(), pgtest.NewPool(t, url))
	}
	privileged := func(t *testing.T, err error) *pgstore.PrivilegedRoleError {
		t.Helper()
		var e *pgstore.PrivilegedRoleError
		require.True(t, errors.As(err, &e), "want a PrivilegedRoleError, got %v", err)
		return e
	}

	t.Run("PlainRolePasses", func(t *testing.T) {
		plain := pgtest.NewRole(t, dbURL)
		other := pgtest.NewRole(t, dbURL)
		pgtest.Exec(t, admin, "GRANT "+ident(other.Name)+" TO "+ident(plain.Name))
		require.NoError(t, check(t, plain.URL))
	})
	t.Run("Superuser", func(t *testing.T) {
		e := privileged(t, check(t, dbURL)) // the administrative URL
		require.True(t, e.Superuser)
		require.Equal(t, e.SessionUser, e.Role)
		require.Contains(t, e.Error(), "is a superuser")
	})
	t.Run("BypassRLS", func(t *testing.T) {
		r := pgtest.NewRole(t, dbURL)
		pgtest.Exec(t, admin, "ALTER ROLE "+ident(r.Name)+" BYPASSRLS")
		e := privileged(t, check(t, r.URL))
		require.False(t, e.Superuser)
		require.True(t, e.BypassRLS)
		require.Equal(t, r.Name, e.Role)
		require.Contains(t, e.Error(), "has BYPASSRLS")
	})
	t.Run("DefaultSetRoleToBypassRLS", func(t *testing.T) {
		// The login role is plain, but its settings switch every session
		// to a BYPASSRLS role: current_user is what the policies see.
		login := pgtest.NewRole(t, dbURL)
		above := pgtest.NewRole(t, dbURL)
		pgtest.Exec(t, admin, "ALTER ROLE "+ident(above.Name)+" BYPASSRLS")
		pgtest.Exec(t, admin, "GRANT "+ident(above.Name)+" TO "+ident(login.Name))
		pgtest.Exec(t, admin, "ALTER ROLE "+ident(login.Name)+" SET role = "+ident(above.Name))
		e := privileged(t, check(t, login.URL))
		require.Equal(t, login.Name, e.SessionUser)
		require.Equal(t, above.Name, e.CurrentUser)
		require.Equal(t, above.Name, e.Role)
	})
	t.Run("MemberOfASuperuser", func(t *testing.T) {
		// Membership does not inherit the attribute, but SET ROLE takes it.
		member := pgtest.NewRole(t, dbURL)
		middle := pgtest.NewRole(t, dbURL)
		above := pgtest.NewRole(t, dbURL)
		pgtest.Exec(t, admin, "ALTER ROLE "+ident(above.Name)+" SUPERUSER")
		pgtest.Exec(t, admin, "GRANT "+ident(above.Name)+" TO "+ident(middle.Name))
		pgtest.Exec(t, admin, "GRANT "+ident(middle.Name)+" TO "+ident(member.Name))
		e := privileged(t, check(t, member.URL))
		require.Equal(t, member.Name, e.SessionUser)
		require.Equal(t, member.Name, e.CurrentUser)
		require.Equal(t, above.Name, e.Role)
		require.True(t, e.Superuser)
		require.Contains(t, e.Error(), "is a member of")
	})
	t.Run("UnreachableIsUnavailable", func(t *testing.T) {
		err := check(t, "postgres://postgres@127.0.0.1:1/none?sslmode=disable&connect_timeout=2")
		var unavailable *broker.UnavailableError
		require.ErrorAs(t, err, &unavailable)
	})
	t.Run("SuggestedSQLMakesAPlainRole", func(t *testing.T) {
		// The SQL the refusal shows, pasted as it is (with a password),
		// makes a role that passes the check.
		e := privileged(t, check(t, dbURL))
		name := "kbtest_plainrolesql_" + strings.ToLower(rand.Text()[:12])
		sql := e.PlainRoleSQL(name, name)
		require.Contains(t, sql, "PASSWORD '<a long random password>'")
		t.Cleanup(func() {
			pgtest.Exec(t, admin, "DROP DATABASE IF EXISTS "+ident(name)+" WITH (FORCE)")
			pgtest.Exec(t, admin, "REVOKE ALL ON DATABASE "+ident(e.Database)+" FROM "+ident(name))
			pgtest.Exec(t, admin, "DROP ROLE IF EXISTS "+ident(name))
		})
		// One statement at a time, as psql sends them: CREATE DATABASE
		// cannot run in the implicit transaction of a multi-statement
		// query.
		for _, stmt := range strings.SplitAfter(sql, ";") {
			if strings.TrimSpace(stmt) != "" {
				pgtest.Exec(t, admin, stmt)
			}
		}
		var super, bypass, login bool
		var owner string
		require.NoError(t, admin.QueryRow(t.Context(),
			"SELECT r.rolsuper, r.rolbypassrls, r.rolcanlogin, pg_get_userbyid(d.datdba) FROM pg_roles r, pg_database d WHERE r.rolname = $1 AND d.datname = $1",
			name).Scan(&super, &bypass, &login, &owner))
		require.False(t, super)
		require.False(t, bypass)
		require.True(t, login)
		require.Equal(t, name, owner)
	})
}
