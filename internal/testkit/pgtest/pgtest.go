// Package pgtest is the shared plumbing of tests that run on a real
// PostgreSQL: a fresh database per test, throwaway non-superuser roles and
// pools that close themselves.
//
// The server is found through KEYBROKER_TEST_DATABASE_URL (a postgres://
// URL of a role that may create databases and roles), defaulting to the
// dev machine's trust-auth superuser on 127.0.0.1:5432. Roles created here
// log in without a password, so the server must trust local connections
// (as the default dev setup does).
package pgtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// URLEnv names the environment variable that points tests at a server.
const URLEnv = "KEYBROKER_TEST_DATABASE_URL"

// DefaultURL is used when URLEnv is unset: the dev machine's server.
const DefaultURL = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"

// cleanupTimeout bounds each cleanup statement; t.Context() is already
// cancelled when cleanups run.
const cleanupTimeout = 30 * time.Second

// AdminURL returns the URL of the administrative connection tests use to
// create databases and roles.
func AdminURL() string {
	if u := strings.TrimSpace(os.Getenv(URLEnv)); u != "" {
		return u
	}
	return DefaultURL
}

// NewDatabase creates a fresh, uniquely named database and returns its
// URL, connecting as the administrative user. The database is dropped,
// with any connections still open to it, when the test ends.
func NewDatabase(t testing.TB) string {
	t.Helper()
	name := uniqueName(t)
	if err := adminExec(AdminURL(), "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := adminExec(AdminURL(), "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)"); err != nil {
			t.Error(err)
		}
	})
	return withDatabase(t, AdminURL(), name)
}

// Role is a throwaway login role.
type Role struct {
	Name string // the role name, unique on the server
	URL  string // the database URL given to NewRole, connecting as this role
}

// NewRole creates a LOGIN role that is neither superuser nor BYPASSRLS
// (so row-level security applies to it) and returns it with a URL that
// connects to databaseURL's database as that role, without a password.
// When the test ends, whatever the role owns or was granted in that
// database is dropped, then the role.
func NewRole(t testing.TB, databaseURL string) Role {
	t.Helper()
	name := uniqueName(t)
	ident := pgx.Identifier{name}.Sanitize()
	if err := adminExec(databaseURL, "CREATE ROLE "+ident+" LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// Roles are server-wide: DROP OWNED in the test database first, or
		// DROP ROLE refuses while the role owns objects there. The role's
		// schemas go first, one transaction each: a schema with a
		// partitioned audit table holds dozens of relations, and one
		// DROP OWNED of them all can exhaust the server's shared lock
		// table while other tests run ("out of shared memory").
		if err := dropOwnedSchemas(databaseURL, name); err != nil {
			t.Error(err)
		}
		if err := adminExec(databaseURL, "DROP OWNED BY "+ident+" CASCADE; DROP ROLE IF EXISTS "+ident); err != nil {
			t.Error(err)
		}
	})
	u := parseURL(t, databaseURL)
	u.User = url.User(name)
	return Role{Name: name, URL: u.String()}
}

// NewPlainDatabase creates a fresh database (NewDatabase) and a plain
// role (NewRole) allowed to create schemas in it — what keybroker is given
// in production, and all that its migrations need. It returns the role,
// whose URL connects to the new database, and the administrative URL of
// that database, for looking at what was really written. keybroker
// refuses a superuser (or BYPASSRLS) URL: tests that start it use the
// role's URL.
func NewPlainDatabase(t testing.TB) (role Role, adminURL string) {
	t.Helper()
	adminURL = NewDatabase(t)
	role = NewRole(t, adminURL)
	name := parseURL(t, adminURL).Path[1:]
	if err := adminExec(adminURL, "GRANT CREATE ON DATABASE "+pgx.Identifier{name}.Sanitize()+" TO "+pgx.Identifier{role.Name}.Sanitize()); err != nil {
		t.Fatal(err)
	}
	return role, adminURL
}

// NewPool opens a small pool on databaseURL and closes it when the test
// ends. It is kept small because many tests run at once against one
// server with a limited number of connections.
func NewPool(t testing.TB, databaseURL string) *pgxpool.Pool {
	t.Helper()
	cfg, err := pgxpool.ParseConfig(databaseURL)
	if err != nil {
		t.Fatalf("pgtest: parse %s: %v", redact(databaseURL), err)
	}
	cfg.MaxConns = 4
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		t.Fatalf("pgtest: open pool: %v", err)
	}
	t.Cleanup(pool.Close)
	return pool
}

// Exec runs one statement on pool and fails the test when it errors.
func Exec(t testing.TB, pool *pgxpool.Pool, sql string, args ...any) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), cleanupTimeout)
	defer cancel()
	if _, err := pool.Exec(ctx, sql, args...); err != nil {
		t.Fatalf("pgtest: %s: %v", sql, err)
	}
}

// adminExec runs sql on a short-lived connection: database and role DDL
// should not hold on to pool connections of the test.
func adminExec(databaseURL, sql string) error {
	ctx, cancel := context.WithTimeout(context.Background(), cleanupTimeout)
	defer cancel()
	conn, err := pgx.Connect(ctx, databaseURL)
	if err != nil {
		return fmt.Errorf("pgtest: connect to %s (set %s to point tests at a PostgreSQL server): %w", redact(databaseURL), URLEnv, err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, sql); err != nil {
		return fmt.Errorf("pgtest: %s: %w", sql, err)
	}
	return nil
}

// dropOwnedSchemas drops each schema role owns in the database, one
// transaction each.
func dropOwnedSchemas(databaseURL, role string) error {
	ctx, cancel := context.WithTimeout(context.Background(), cleanupTimeout)
	defer cancel()
	conn, err := pgx.Connect(ctx, databaseURL)
	if err != nil {
		return fmt.Errorf("pgtest: connect to %s: %w", redact(databaseURL), err)
	}
	defer conn.Close(ctx)
	rows, err := conn.Query(ctx, "SELECT nspname FROM pg_namespace WHERE nspowner = (SELECT oid FROM pg_roles WHERE rolname = $1)", role)
	if err != nil {
		return fmt.Errorf("pgtest: list the schemas of %s: %w", role, err)
	}
	schemas, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return fmt.Errorf("pgtest: list the schemas of %s: %w", role, err)
	}
	for _, schema := range schemas {
		if _, err := conn.Exec(ctx, "DROP SCHEMA IF EXISTS "+pgx.Identifier{schema}.Sanitize()+" CASCADE"); err != nil {
			return fmt.Errorf("pgtest: drop schema %s: %w", schema, err)
		}
	}
	return nil
}

// uniqueName returns a lower-case identifier that starts with a hint of
// the test's name, to tell leftovers apart, and ends with random hex.
func uniqueName(t testing.TB) string {
	var hint strings.Builder
	for _, r := range strings.ToLower(t.Name()) {
		if hint.Len() >= 24 {
			break
		}
		if (r >= 'a' && r <= 'z') || (r >= '0' && r <= '9') {
			hint.WriteRune(r)
		}
	}
	random := make([]byte, 8)
	_, _ = rand.Read(random) // never fails
	return "kbtest_" + hint.String() + "_" + hex.EncodeToString(random)
}

func withDatabase(t testing.TB, databaseURL, name string) string {
	u := parseURL(t, databaseURL)
	u.Path = "/" + name
	u.RawPath = ""
	return u.String()
}

func parseURL(t testing.TB, databaseURL string) *url.URL {
	t.Helper()
	u, err := url.Parse(databaseURL)
	if err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
		t.Fatalf("pgtest: %s must be a postgres:// URL, got %s", URLEnv, redact(databaseURL))
	}
	return u
}

// redact hides a password before a URL reaches the test log.
func redact(databaseURL string) string {
	u, err := url.Parse(databaseURL)
	if err != nil {
		return "<unparseable URL>"
	}
	return u.Redacted()
}

// ReopenFormat1 reopens format 1 in keybroker's schema the way
// docs/rotation.md tells the owner of the schema to before importing
// format-1 rows: a freshly migrated schema never held one and starts with
// format 1 closed. pool must connect as that owner or a superuser. A
// schema without the closure (migrated by an older keybroker) is left as
// it is.
func ReopenFormat1(t testing.TB, pool *pgxpool.Pool, schema string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), cleanupTimeout)
	defer cancel()
	table := pgx.Identifier{schema, "encryption_vault_format1"}.Sanitize()
	var exists bool
	if err := pool.QueryRow(ctx, "SELECT to_regclass($1) IS NOT NULL", table).Scan(&exists); err != nil {
		t.Fatalf("pgtest: reopen format 1: %v", err)
	}
	if !exists {
		return
	}
	err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		for _, sql := range []string{
			"ALTER TABLE " + table + " DISABLE TRIGGER encryption_vault_format1_one_way",
			"UPDATE " + table + " SET closed_at = NULL, closed_by = NULL",
			"ALTER TABLE " + table + " ENABLE TRIGGER encryption_vault_format1_one_way",
		} {
			if _, err := tx.Exec(ctx, sql); err != nil {
				return fmt.Errorf("%s: %w", sql, err)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("pgtest: reopen format 1: %v", err)
	}
}
