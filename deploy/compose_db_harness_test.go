package deploy

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/compose-spec/compose-go/v2/types"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/internal/jwtissuer"
	"github.com/keybroker/keybroker/internal/testkit/pgtest"
)

// initdbDir is where the official postgres image looks for init scripts.
const initdbDir = "/docker-entrypoint-initdb.d"

// composeDB is the Compose recipe's database side, replayed on the test
// server.
type composeDB struct {
	pg, kb   types.ServiceConfig
	admin    *url.URL      // the test server's administrative URL
	adminDB  *pgxpool.Pool // on its default database
	scripts  []string      // the initdb scripts, in the order the image runs them
	kekFile  string        // one KEK for every server of the test
	readme   string        // deploy/README.md
	tempDir  string
	adminPwd string
}

func newComposeDB(t *testing.T) *composeDB {
	t.Helper()
	project, err := loadCompose(t, "compose/.env.example")
	require.NoError(t, err)
	pg, err := project.GetService("postgres")
	require.NoError(t, err)
	kb, err := project.GetService("keybroker")
	require.NoError(t, err)
	admin, err := url.Parse(pgtest.AdminURL())
	require.NoError(t, err)
	c := &composeDB{pg: pg, kb: kb, admin: admin, adminDB: pgtest.NewPool(t, pgtest.AdminURL()), tempDir: t.TempDir()}
	c.adminPwd, _ = admin.User.Password()
	for _, v := range pg.Volumes {
		if v.Target == initdbDir {
			entries, err := os.ReadDir(v.Source)
			require.NoError(t, err)
			for _, e := range entries {
				c.scripts = append(c.scripts, filepath.Join(v.Source, e.Name())) // ReadDir sorts, as the image's glob does
			}
		}
	}
	require.NotEmpty(t, c.scripts, "compose.yaml mounts no initdb scripts")
	readme, err := os.ReadFile("README.md")
	require.NoError(t, err)
	c.readme = string(readme)
	key := make([]byte, 32)
	rand.Read(key)
	c.kekFile = filepath.Join(c.tempDir, "keybroker_kek")
	require.NoError(t, os.WriteFile(c.kekFile, []byte(base64.StdEncoding.EncodeToString(key)), 0o400))
	return c
}

// env is a value of the postgres service's environment.
func (c *composeDB) env(t *testing.T, name string) string {
	t.Helper()
	v := c.pg.Environment[name]
	require.NotNil(t, v, "compose.yaml: postgres has no %s", name)
	return *v
}

// superuser is the bootstrap superuser: compose.yaml's POSTGRES_USER,
// played by the test server's administrative user.
func (c *composeDB) superuser() string { return c.admin.User.Username() }

// pgEnv points libpq at the test server, where the container's local
// socket would be.
func (c *composeDB) pgEnv() []string {
	env := []string{"PATH=" + os.Getenv("PATH"), "PGHOST=" + c.admin.Hostname(), "PGPORT=" + c.port(), "PGSSLMODE=disable"}
	if c.adminPwd != "" {
		env = append(env, "PGPASSWORD="+c.adminPwd)
	}
	return env
}

func (c *composeDB) port() string {
	if p := c.admin.Port(); p != "" {
		return p
	}
	return "5432"
}

// dropOnCleanup drops a database and a role the test made outside pgtest.
func (c *composeDB) dropOnCleanup(t *testing.T, role, database string) {
	t.Cleanup(func() {
		pgtest.Exec(t, c.adminDB, "DROP DATABASE IF EXISTS "+ident(database)+" WITH (FORCE)")
		pgtest.Exec(t, c.adminDB, "DROP ROLE IF EXISTS "+ident(role))
	})
}

// runInitdb runs the initdb scripts as the image does on the first start
// of an empty volume, with the environment it gives them and the
// postgres service's own, the names replaced by role and database and the
// password file by one holding password.
func (c *composeDB) runInitdb(t *testing.T, role, database, password string) {
	t.Helper()
	pwFile := filepath.Join(c.tempDir, "keybroker_db_password-"+role)
	require.NoError(t, os.WriteFile(pwFile, []byte(password), 0o400))
	env := append(c.pgEnv(),
		// What the entrypoint exports (file_env reads POSTGRES_PASSWORD_FILE).
		"POSTGRES_USER="+c.superuser(),
		"POSTGRES_PASSWORD="+c.adminPwd,
		"POSTGRES_DB="+c.superuser(),
		"PGDATA=/var/lib/postgresql/data",
		// The service's environment, with this test's names.
		"KEYBROKER_DB_USER="+role,
		"KEYBROKER_DB_NAME="+database,
		"KEYBROKER_DB_PASSWORD_FILE="+pwFile,
	)
	for _, script := range c.scripts {
		if !strings.HasSuffix(script, ".sh") {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		cmd := exec.CommandContext(ctx, script)
		cmd.Env = env
		out, err := cmd.CombinedOutput()
		cancel()
		require.NoError(t, err, "%s:\n%s", script, out)
		require.NotContains(t, string(out), password, "the script printed the password")
	}
}

// databaseURL is keybroker's DATABASE_URL from compose.yaml, aimed at the
// test server, as role on database, with a pgpass file holding password.
func (c *composeDB) databaseURL(t *testing.T, role, database, password string) string {
	t.Helper()
	u, err := url.Parse(*c.kb.Environment["DATABASE_URL"])
	require.NoError(t, err)
	pgpass := filepath.Join(c.tempDir, "pgpass-"+role+"-"+database)
	line := strings.Join([]string{c.admin.Hostname(), c.port(), database, role, password}, ":") + "\n"
	require.NoError(t, os.WriteFile(pgpass, []byte(line), 0o600))
	q := u.Query()
	require.NotEmpty(t, q.Get("passfile"), "compose.yaml: keybroker's password comes from a passfile")
	q.Set("passfile", pgpass)
	u.RawQuery = q.Encode()
	u.Host = c.admin.Host
	u.User = url.User(role)
	u.Path = "/" + database
	return u.String()
}

// serve starts keybroker on databaseURL with the test's KEK.
func (c *composeDB) serve(t *testing.T, databaseURL string, extra ...string) *server {
	t.Helper()
	return startServer(t, append([]string{"DATABASE_URL=" + databaseURL, "KEYBROKER_KEK=file://" + c.kekFile + "?id=kek-2026"}, extra...)...)
}

// readmeCommands returns the README's `docker compose exec -T postgres …`
// lines under the heading, without that prefix: the commands the
// operator runs inside the postgres container.
func (c *composeDB) readmeCommands(t *testing.T, heading string) []string {
	t.Helper()
	_, section, ok := strings.Cut(c.readme, "\n"+heading+"\n")
	require.True(t, ok, "README.md has no %q", heading)
	if end := strings.Index(section, "\n#"); end >= 0 {
		section = section[:end]
	}
	const prefix = "docker compose exec -T postgres "
	var commands []string
	for _, line := range strings.Split(section, "\n") {
		if cmd, ok := strings.CutPrefix(strings.TrimSpace(line), prefix); ok {
			commands = append(commands, cmd)
		}
	}
	return commands
}

// runCommand runs one README command line against the test server: the
// bootstrap superuser is the administrative user, the database and role
// named keybroker are database and role, and a file in a redirection is
// in the test's directory. It returns the command's combined output and
// its error.
func (c *composeDB) runCommand(t *testing.T, line, role, database string) ([]byte, error) {
	t.Helper()
	fields := strings.Fields(line)
	var argv []string
	var stdin io.Reader
	var stdout *os.File
	for i := 0; i < len(fields); i++ {
		f := fields[i]
		switch {
		case f == "<" || f == ">":
			require.Less(t, i+1, len(fields), "a redirection without a file: %s", line)
			path := filepath.Join(c.tempDir, filepath.Base(fields[i+1]))
			i++
			if f == "<" {
				in, err := os.Open(path)
				require.NoError(t, err)
				t.Cleanup(func() { in.Close() })
				stdin = in
			} else {
				out, err := os.Create(path)
				require.NoError(t, err)
				t.Cleanup(func() { out.Close() })
				stdout = out
			}
		case f == "-U" && i+1 < len(fields):
			// -U postgres is the bootstrap superuser; -U keybroker the old
			// recipe's, whose name the caller passes as role.
			user := c.superuser()
			if fields[i+1] == "keybroker" {
				user = role
			}
			argv = append(argv, f, user)
			i++
		case f == "keybroker":
			argv = append(argv, database)
		case f == "--dbname=keybroker":
			argv = append(argv, "--dbname="+database)
		case f == "--owner=keybroker":
			argv = append(argv, "--owner="+role)
		default:
			argv = append(argv, f)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env = c.pgEnv()
	cmd.Stdin = stdin
	var out bytes.Buffer
	cmd.Stderr = &out
	cmd.Stdout = &out
	if stdout != nil {
		cmd.Stdout = stdout
	}
	err := cmd.Run()
	return out.Bytes(), err
}

// vaultJSON makes one vault request as user and decodes the answer.
func vaultJSON(t *testing.T, srv *server, method, path, user string, body any) (int, map[string]any) {
	t.Helper()
	tok, err := srv.issuer.Mint(jwtissuer.Claims{Subject: user})
	require.NoError(t, err)
	var reqBody io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		require.NoError(t, err)
		reqBody = bytes.NewReader(b)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, "http://"+srv.addr+"/api/v1/me/encryption-vault"+path, reqBody)
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer "+tok)
	req.Header.Set("Content-Type", "application/json")
	res, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer res.Body.Close()
	var out map[string]any
	require.NoError(t, json.NewDecoder(res.Body).Decode(&out))
	return res.StatusCode, out
}

// fillVaults makes vaults through the API — two standard users and one
// in zero-knowledge mode — and returns what GET /key answers each.
func fillVaults(t *testing.T, srv *server) map[string]map[string]any {
	t.Helper()
	for _, user := range []string{"alice", "bob", "carol"} {
		status, body := vaultJSON(t, srv, http.MethodPost, "/init", user, nil)
		require.Equal(t, http.StatusOK, status, body)
	}
	wrap, iv := make([]byte, 48), make([]byte, 12)
	rand.Read(wrap)
	rand.Read(iv)
	status, body := vaultJSON(t, srv, http.MethodPost, "/recovery-wrap", "carol", map[string]string{
		"recoveryWrappedMk": base64.StdEncoding.EncodeToString(wrap), "recoveryIv": base64.StdEncoding.EncodeToString(iv)})
	require.Equal(t, http.StatusOK, status, body)
	status, body = vaultJSON(t, srv, http.MethodPost, "/zero-knowledge", "carol", map[string]bool{"enable": true})
	require.Equal(t, http.StatusOK, status, body)
	return keysOf(t, srv)
}

// keysOf is GET /key for each user of fillVaults.
func keysOf(t *testing.T, srv *server) map[string]map[string]any {
	t.Helper()
	keys := map[string]map[string]any{}
	for _, user := range []string{"alice", "bob", "carol"} {
		status, body := vaultJSON(t, srv, http.MethodGet, "/key", user, nil)
		require.Equal(t, http.StatusOK, status, body)
		keys[user] = body
	}
	require.NotEmpty(t, keys["alice"]["masterKey"])
	require.NotEqual(t, keys["alice"]["masterKey"], keys["bob"]["masterKey"])
	require.Equal(t, true, keys["carol"]["requiresRecoveryCode"])
	return keys
}

// auditRows counts the audit rows of database, as the superuser.
func (c *composeDB) auditRows(t *testing.T, database string) int {
	t.Helper()
	u := *c.admin
	u.Path = "/" + database
	pool := pgtest.NewPool(t, u.String())
	var n int
	require.NoError(t, pool.QueryRow(t.Context(), "SELECT count(*) FROM keybroker.encryption_vault_audit").Scan(&n))
	pool.Close()
	return n
}

// requireOwnedByPlainRole checks that keybroker's schema and every table
// in it belong to role, a plain role.
func (c *composeDB) requireOwnedByPlainRole(t *testing.T, role, database string) {
	t.Helper()
	u := *c.admin
	u.Path = "/" + database
	pool := pgtest.NewPool(t, u.String())
	defer pool.Close()
	var super, bypass bool
	require.NoError(t, pool.QueryRow(t.Context(), "SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = $1", role).Scan(&super, &bypass))
	require.False(t, super, "%s is a superuser", role)
	require.False(t, bypass, "%s has BYPASSRLS", role)
	rows, err := pool.Query(t.Context(), `SELECT n.nspowner::regrole::text, c.relname, c.relowner::regrole::text, c.relforcerowsecurity
		FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE n.nspname = 'keybroker' AND c.relkind IN ('r', 'p')`) // 'p': the partitioned audit table
	require.NoError(t, err)
	forced := 0
	tables := 0
	for rows.Next() {
		var schemaOwner, table, owner string
		var force bool
		require.NoError(t, rows.Scan(&schemaOwner, &table, &owner, &force))
		require.Equal(t, role, strings.Trim(schemaOwner, `"`), "schema owner")
		require.Equal(t, role, strings.Trim(owner, `"`), "owner of %s", table)
		tables++
		if force {
			forced++
		}
	}
	require.NoError(t, rows.Err())
	require.Positive(t, tables)
	require.Equal(t, 2, forced, "row-level security forced on both vault tables")
}

// readmeSQL returns the first ```sql block after marker in the README.
func (c *composeDB) readmeSQL(t *testing.T, marker string) string {
	t.Helper()
	_, after, ok := strings.Cut(c.readme, marker)
	require.True(t, ok, "README.md has no %q", marker)
	_, block, ok := strings.Cut(after, "```sql\n")
	require.True(t, ok, "no SQL after %q", marker)
	block, _, ok = strings.Cut(block, "```")
	require.True(t, ok)
	return block
}

// runKeybroker runs the built binary with a KEK and a JWKS URL besides
// env and returns its output and exit status.
func runKeybroker(t *testing.T, command string, env ...string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	key := make([]byte, 32)
	rand.Read(key)
	cmd := exec.CommandContext(ctx, keybrokerBinary(t), command)
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH"), "MANA_AUTH_KEK=" + base64.StdEncoding.EncodeToString(key),
		"KEYBROKER_JWKS_URL=http://127.0.0.1:1/jwks", "KEYBROKER_ADDR=127.0.0.1:0"}, env...)
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		return string(out), exit.ExitCode()
	}
	require.NoError(t, err)
	return string(out), 0
}

// scramMatches reports whether a SCRAM-SHA-256 verifier, as PostgreSQL
// stores it (SCRAM-SHA-256$iterations:salt$StoredKey:ServerKey), is of
// password (RFC 5802, RFC 7677).
func scramMatches(t *testing.T, verifier, password string) bool {
	t.Helper()
	method, rest, ok := strings.Cut(verifier, "$")
	require.True(t, ok && method == "SCRAM-SHA-256", "not a SCRAM-SHA-256 verifier: %.20q", verifier)
	params, keys, ok := strings.Cut(rest, "$")
	require.True(t, ok)
	iterText, saltText, ok := strings.Cut(params, ":")
	require.True(t, ok)
	storedText, _, ok := strings.Cut(keys, ":")
	require.True(t, ok)
	iterations, err := strconv.Atoi(iterText)
	require.NoError(t, err)
	salt, err := base64.StdEncoding.DecodeString(saltText)
	require.NoError(t, err)
	stored, err := base64.StdEncoding.DecodeString(storedText)
	require.NoError(t, err)
	salted, err := pbkdf2.Key(sha256.New, password, salt, iterations, sha256.Size)
	require.NoError(t, err)
	mac := hmac.New(sha256.New, salted)
	mac.Write([]byte("Client Key"))
	clientKey := sha256.Sum256(mac.Sum(nil))
	return hmac.Equal(clientKey[:], stored)
}

// uniqueName is a lower-case role and database name for one test.
func uniqueName(hint string) string {
	return "kbtest_" + hint + "_" + strings.ToLower(rand.Text()[:10])
}

func ident(name string) string { return pgx.Identifier{name}.Sanitize() }
