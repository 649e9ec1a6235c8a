package main

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"io"
	"net/http/httptest"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/internal/jwtissuer"
	"github.com/keybroker/keybroker/internal/testkit/pgtest"
	"github.com/keybroker/keybroker/pgstore"
)

// TestPrivilegedDatabaseRoleIsRefused is the attack of an operator
// mistake: keybroker pointed at a superuser (the official PostgreSQL
// image's bootstrap user) or at a role with BYPASSRLS, where the forced
// row-level security would silently do nothing. The binary's serve and
// migrate exit 1 before touching the database, with the SQL that makes a
// plain role; the operator commands that open the store refuse too. The
// override starts with a loud warning.
func TestPrivilegedDatabaseRoleIsRefused(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	issuer, err := jwtissuer.New("https://auth.test")
	require.NoError(t, err)
	jwks := httptest.NewServer(issuer.JWKSHandler())
	t.Cleanup(jwks.Close)
	superURL := pgtest.NewDatabase(t) // as the superuser
	admin := pgtest.NewPool(t, superURL)
	bypass := pgtest.NewRole(t, superURL)
	pgtest.Exec(t, admin, "ALTER ROLE "+ident(bypass.Name)+" BYPASSRLS")
	var db string
	require.NoError(t, admin.QueryRow(t.Context(), "SELECT current_database()").Scan(&db))
	pgtest.Exec(t, admin, "GRANT CREATE ON DATABASE "+ident(db)+" TO "+ident(bypass.Name))
	r := &rig{bin: keybrokerBinary(t), issuer: issuer, jwks: jwks.URL}
	key := make([]byte, 32)
	rand.Read(key)
	kekText := base64.StdEncoding.EncodeToString(key)
	kek := "MANA_AUTH_KEK=" + kekText

	schemaExists := func(t *testing.T) bool {
		t.Helper()
		var n int
		require.NoError(t, admin.QueryRow(t.Context(), "SELECT count(*) FROM pg_namespace WHERE nspname = 'keybroker'").Scan(&n))
		return n > 0
	}
	roles := []struct{ name, url, says string }{
		{"Superuser", superURL, `is a superuser`},
		{"BypassRLS", bypass.URL, `has BYPASSRLS`},
	}
	for _, role := range roles {
		for _, command := range []string{"serve", "migrate"} {
			t.Run(role.name+"/"+command, func(t *testing.T) {
				r := *r
				r.dbURL = role.url
				c := startChild(t, []string{r.bin, command}, r.env(kek))
				require.Equal(t, 1, c.wait(t), "keybroker %s started as a privileged role:\n%s", command, c.stderr.String())
				out := c.stderr.String()
				require.Contains(t, out, role.says)
				require.Contains(t, out, `CREATE ROLE "keybroker" LOGIN NOSUPERUSER NOBYPASSRLS PASSWORD`)
				require.Contains(t, out, `GRANT CREATE ON DATABASE `+ident(db)+` TO "keybroker";`)
				require.Contains(t, out, "KEYBROKER_ALLOW_PRIVILEGED_DB_ROLE")
				require.NotContains(t, out, "keybroker serving")
				require.False(t, schemaExists(t), "it migrated before refusing")
			})
		}
	}

	t.Run("OperatorCommandsRefuseToo", func(t *testing.T) {
		env := map[string]string{"DATABASE_URL": superURL, "MANA_AUTH_KEK": kekText}
		for _, args := range [][]string{{"kek", "status"}, {"rewrap", "--dry-run"}} {
			err := run(context.Background(), args, envFunc(env), io.Discard, io.Discard, nil)
			require.ErrorContains(t, err, "is a superuser", "%v", args)
			require.ErrorContains(t, err, "CREATE ROLE", "%v", args)
		}
	})

	t.Run("OverrideStartsAndWarns", func(t *testing.T) {
		// After the refusals, which check that nothing was migrated. The
		// environment variable on the binary's migrate, the flag on serve.
		c := startChild(t, []string{r.bin, "migrate"}, append(r.env(kek), "DATABASE_URL="+bypass.URL, "KEYBROKER_ALLOW_PRIVILEGED_DB_ROLE"+"=true"))
		require.Equal(t, 0, c.wait(t), c.stderr.String())
		require.Contains(t, c.stderr.String(), "ROW-LEVEL SECURITY IS NOT ENFORCED")
		require.True(t, schemaExists(t))

		srv := startServe(t, map[string]string{
			"DATABASE_URL":           superURL,
			"MANA_AUTH_KEK":          kekText,
			"KEYBROKER_JWKS_URL":     jwks.URL,
			"KEYBROKER_JWT_UNPINNED": "true",
			"KEYBROKER_ADDR":         "127.0.0.1:0",
			"KEYBROKER_LOG_FORMAT":   "json",
		}, "serve", "--allow-privileged-db-role")
		require.NoError(t, srv.stop())
		logs := srv.logs.String()
		require.Contains(t, logs, `"level":"WARN","msg":"ROW-LEVEL SECURITY IS NOT ENFORCED: pgstore: the database role \"postgres\" is a superuser`)
		require.Contains(t, logs, "keybroker serving")
	})

	t.Run("PlainRoleStarts", func(t *testing.T) {
		// The control: the same binary as a plain role just works.
		plain, _ := pgtest.NewPlainDatabase(t)
		r := *r
		r.dbURL = plain.URL
		c := startChild(t, []string{r.bin, "migrate"}, r.env(kek))
		require.Equal(t, 0, c.wait(t), c.stderr.String())
		require.NotContains(t, c.stderr.String(), "ROW-LEVEL SECURITY")
	})
}

func ident(name string) string { return pgx.Identifier{name}.Sanitize() }

// TestRefusalSuggestsAFreeRoleName: the old Compose recipe's superuser is
// itself named keybroker; the SQL must not tell its operator to create a
// role that exists.
func TestRefusalSuggestsAFreeRoleName(t *testing.T) {
	err := privilegedRoleRefusal(&pgstore.PrivilegedRoleError{Database: "keybroker", SessionUser: "keybroker",
		CurrentUser: "keybroker", Role: "keybroker", Superuser: true})
	require.ErrorContains(t, err, `CREATE ROLE "keybroker_owner" LOGIN`)
	require.ErrorContains(t, err, `GRANT CREATE ON DATABASE "keybroker" TO "keybroker_owner";`)
	require.ErrorContains(t, err, `the database role "keybroker" is a superuser`)

	err = privilegedRoleRefusal(&pgstore.PrivilegedRoleError{Database: "app", SessionUser: "app",
		CurrentUser: "app", Role: "admins", BypassRLS: true})
	require.ErrorContains(t, err, `CREATE ROLE "keybroker" LOGIN`)
	require.ErrorContains(t, err, `"app" is a member of "admins", which has BYPASSRLS`)
}
