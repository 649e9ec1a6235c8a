package deploy

// These tests run what the Compose recipe runs against PostgreSQL — the
// initdb script, keybroker's database URL, the README's backup, restore
// and move commands — on the machine's PostgreSQL server, which stands in
// for the postgres container (there is no Docker engine here). What is
// adapted, and only that: the server is reached over TCP (PGHOST/PGPORT)
// instead of the container's local socket, the bootstrap superuser is the
// test server's administrative user, and the role and database get unique
// names instead of "keybroker", since roles are shared by every test on
// the server.

import (
	"context"
	"crypto/rand"
	"net/http"
	"net/url"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/internal/testkit/pgtest"
)

// TestComposeDatabaseRoles replays the Compose recipe's database side:
// the initdb script makes a plain role keybroker starts as and refuses the
// bootstrap superuser; the README's backup, taken as documented from the
// database keybroker made and filled, restores as documented and
// keybroker hands out the same keys; an install of the old recipe, which
// ran as the superuser, moves to the plain role as documented; and so do,
// in place, the tables of any other install that ran as a superuser.
func TestComposeDatabaseRoles(t *testing.T) {
	t.Parallel()
	for _, tool := range []string{"psql", "pg_dump", "pg_restore", "createdb", "dropdb"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("SKIPPED LOUDLY: %s is not installed (the PostgreSQL client tools the postgres image ships)", tool)
		}
	}
	c := newComposeDB(t)
	require.Equal(t, c.env(t, "POSTGRES_USER"), "postgres", "the README's commands say -U postgres")
	require.Equal(t, "keybroker", c.env(t, "KEYBROKER_DB_USER"), "the README's commands name the role keybroker")
	require.Equal(t, "keybroker", c.env(t, "KEYBROKER_DB_NAME"), "the README's commands name the database keybroker")

	backup := c.readmeCommands(t, "### Backups")
	tools := []string{}
	for _, cmd := range backup {
		tools = append(tools, strings.Fields(cmd)[0])
	}
	require.Equal(t, []string{"pg_dump", "dropdb", "createdb", "pg_restore"}, tools, "the README's backup and restore")
	dump, restore := backup[0], backup[1:]

	t.Run("BackupAndRestore", func(t *testing.T) {
		t.Parallel()
		name := uniqueName("compose_backup")
		password := "pw'" + rand.Text() // a quote: the script must quote it
		c.dropOnCleanup(t, name, name)
		c.runInitdb(t, name, name, password)

		// What the script made: a plain role with the file's password,
		// owning the database.
		var super, bypass, createDB, createRole, login bool
		var verifier, owner string
		require.NoError(t, c.adminDB.QueryRow(t.Context(), `SELECT r.rolsuper, r.rolbypassrls, r.rolcreatedb, r.rolcreaterole, r.rolcanlogin,
			coalesce(r.rolpassword, ''), pg_get_userbyid(d.datdba) FROM pg_authid r, pg_database d WHERE r.rolname = $1 AND d.datname = $1`, name).
			Scan(&super, &bypass, &createDB, &createRole, &login, &verifier, &owner))
		require.False(t, super)
		require.False(t, bypass)
		require.False(t, createDB)
		require.False(t, createRole)
		require.True(t, login)
		require.Equal(t, name, owner)
		require.True(t, scramMatches(t, verifier, password), "the role's password is not the secret file's")

		// keybroker refuses the bootstrap superuser on that database…
		superURL := *c.admin
		superURL.Path = "/" + name
		out, code := runKeybroker(t, "migrate", "DATABASE_URL="+superURL.String())
		require.Equal(t, 1, code, "migrate as the bootstrap superuser:\n%s", out)
		require.Contains(t, out, "is a superuser")
		require.Contains(t, out, "CREATE ROLE")

		// …and starts as the plain role, through compose.yaml's URL.
		kbURL := c.databaseURL(t, name, name, password)
		srv := c.serve(t, kbURL)
		want := fillVaults(t, srv)
		audited := c.auditRows(t, name)

		// The bug this recipe fixes: keybroker's own role cannot dump its
		// tables, which force row-level security on their owner.
		out2, err := c.runCommand(t, "pg_dump -U keybroker keybroker", name, name)
		require.Error(t, err, "pg_dump as the plain role:\n%s", out2)
		require.Contains(t, string(out2), "row-level security")

		out2, err = c.runCommand(t, dump, name, name)
		require.NoError(t, err, "%s:\n%s", dump, out2)
		srv.stop() // docker compose stop keybroker
		for _, cmd := range restore {
			out2, err := c.runCommand(t, cmd, name, name)
			require.NoError(t, err, "%s:\n%s", cmd, out2)
		}
		require.Equal(t, audited, c.auditRows(t, name), "every audit row restored")
		c.requireOwnedByPlainRole(t, name, name)

		srv = c.serve(t, kbURL)
		require.Equal(t, want, keysOf(t, srv), "the restored database hands out the same keys")
	})

	t.Run("MoveAnOldComposeInstall", func(t *testing.T) {
		t.Parallel()
		// The old recipe: POSTGRES_USER=keybroker, so keybroker ran as a
		// superuser named keybroker, which owned everything. A superuser
		// of this test's stands in for it (it cannot be the real
		// bootstrap superuser, which the test server already has).
		name := uniqueName("compose_move")
		c.dropOnCleanup(t, name, name)
		pgtest.Exec(t, c.adminDB, "CREATE ROLE "+ident(name)+" LOGIN SUPERUSER")
		pgtest.Exec(t, c.adminDB, "CREATE DATABASE "+ident(name)+" OWNER "+ident(name))
		oldURL := c.databaseURL(t, name, name, "old")
		srv := c.serve(t, oldURL, "KEYBROKER_ALLOW_PRIVILEGED_DB_ROLE=true") // what the old recipe did, unwarned
		want := fillVaults(t, srv)
		audited := c.auditRows(t, name)

		move := c.readmeCommands(t, "### Moving to a plain database role")
		require.NotEmpty(t, move)
		require.True(t, strings.HasPrefix(move[0], "pg_dump -U keybroker "), "the move starts with a dump as the old superuser: %s", move[0])
		srv.stop()
		out, err := c.runCommand(t, move[0], name, name)
		require.NoError(t, err, "%s:\n%s", move[0], out)

		// docker compose down; docker volume rm: the old role and its
		// database are gone. The new recipe's first start makes the plain
		// role under the same name, and its database.
		pgtest.Exec(t, c.adminDB, "DROP DATABASE "+ident(name)+" WITH (FORCE)")
		pgtest.Exec(t, c.adminDB, "DROP ROLE "+ident(name))
		password := rand.Text()
		c.runInitdb(t, name, name, password)
		kbURL := c.databaseURL(t, name, name, password)
		// keybroker may already have started on the empty database.
		srv = c.serve(t, kbURL)
		srv.stop()
		dumpFile := strings.Fields(move[0])[len(strings.Fields(move[0]))-1]
		for _, cmd := range restore {
			cmd = strings.Replace(cmd, "< keybroker.dump", "< "+dumpFile, 1)
			out, err := c.runCommand(t, cmd, name, name)
			require.NoError(t, err, "%s:\n%s", cmd, out)
		}
		require.Equal(t, audited, c.auditRows(t, name))
		c.requireOwnedByPlainRole(t, name, name)
		srv = c.serve(t, kbURL)
		require.Equal(t, want, keysOf(t, srv), "the moved install hands out the same keys")
	})

	t.Run("MoveInPlace", func(t *testing.T) {
		t.Parallel()
		// Elsewhere, tables that a superuser's keybroker made move to a new
		// plain role with the README's SQL, run as it stands but for the
		// role's and the database's names.
		database := uniqueName("inplace")
		role := uniqueName("inplace_role")
		c.dropOnCleanup(t, role, database)
		pgtest.Exec(t, c.adminDB, "CREATE DATABASE "+ident(database))
		superURL := *c.admin
		superURL.Path = "/" + database
		srv := c.serve(t, superURL.String(), "KEYBROKER_ALLOW_PRIVILEGED_DB_ROLE=true")
		want := fillVaults(t, srv)
		srv.stop()

		sql := c.readmeSQL(t, "**Elsewhere**")
		sql = strings.ReplaceAll(sql, "ROLE keybroker ", "ROLE "+ident(role)+" ")
		sql = strings.ReplaceAll(sql, "DATABASE keybroker ", "DATABASE "+ident(database)+" ")
		sql = strings.ReplaceAll(sql, "TO keybroker", "TO "+ident(role))
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, "psql", "-v", "ON_ERROR_STOP=1", "--no-psqlrc", "-U", c.superuser(), "-d", database)
		cmd.Env = c.pgEnv()
		cmd.Stdin = strings.NewReader(sql)
		out, err := cmd.CombinedOutput()
		require.NoError(t, err, "%s\n%s", sql, out)

		c.requireOwnedByPlainRole(t, role, database)
		plainURL := superURL
		plainURL.User = url.User(role)
		srv = c.serve(t, plainURL.String())
		require.Equal(t, want, keysOf(t, srv), "the moved tables hand out the same keys")
		status, body := vaultJSON(t, srv, http.MethodPost, "/init", "dave", nil)
		require.Equal(t, http.StatusOK, status, "a new vault, through the trigger the role now owns: %v", body)
	})
}
