package faults

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// PGBinDirEnv names the directory of initdb and pg_ctl when they are
// neither under /usr/lib/postgresql/*/bin nor on PATH.
const PGBinDirEnv = "KEYBROKER_PG_BINDIR"

// pgCtlTimeout bounds pg_ctl's own waits for start and stop.
const pgCtlTimeout = 60 * time.Second

// Postgres is a private PostgreSQL cluster in a temporary directory,
// listening on a free 127.0.0.1 port, with trust authentication for its
// superuser "postgres". The test may stop it (as a crash would) and start
// it again; it is stopped and removed when the test ends.
type Postgres struct {
	// Port is the TCP port on 127.0.0.1; it stays the same across restarts.
	Port int

	root    string // holds data/, the socket and the log; short for the socket path
	bindir  string
	runAs   string // OS user that runs initdb and postgres; "" for the current one
	mu      sync.Mutex
	running bool
}

// StartPostgres creates and starts a private cluster. Tests run as root
// on the test machines and initdb refuses root, so then the cluster runs
// as the "postgres" OS user (through runuser). When no PostgreSQL server
// binaries exist, the test is skipped with a loud message.
func StartPostgres(t testing.TB) *Postgres {
	t.Helper()
	bindir, err := findPGBinDir()
	if err != nil {
		t.Skipf("SKIPPED LOUDLY: cannot run a private PostgreSQL cluster for this fault test: %v (set $%s)", err, PGBinDirEnv)
	}
	p := &Postgres{bindir: bindir}
	if os.Geteuid() == 0 {
		if _, err := user.Lookup("postgres"); err != nil {
			t.Skipf("SKIPPED LOUDLY: running as root and there is no 'postgres' OS user to run a private PostgreSQL cluster as: %v", err)
		}
		if _, err := exec.LookPath("runuser"); err != nil {
			t.Skipf("SKIPPED LOUDLY: running as root and runuser is missing: cannot start a private PostgreSQL cluster as a non-root user")
		}
		p.runAs = "postgres"
	}
	// Not t.TempDir: its parents are 0700 root, and postgres must reach
	// the directory. A short path also keeps the socket path under the
	// 107-byte limit.
	p.root, err = os.MkdirTemp("", "kbpg-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(p.root) })
	if p.runAs != "" {
		if out, err := exec.Command("chown", p.runAs, p.root).CombinedOutput(); err != nil {
			t.Fatalf("faults: chown %s: %v: %s", p.root, err, out)
		}
	}
	if out, err := p.command("initdb", "-D", p.dataDir(), "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync").CombinedOutput(); err != nil {
		t.Fatalf("faults: initdb: %v\n%s", err, out)
	}
	// A free port may be taken between our probe and postgres's bind by
	// another test doing the same: try a few.
	var lastErr error
	for range 5 {
		if p.Port, err = freePort(); err != nil {
			t.Fatal(err)
		}
		if lastErr = p.start(); lastErr == nil {
			break
		}
	}
	if lastErr != nil {
		t.Fatalf("faults: start PostgreSQL: %v\n%s", lastErr, p.Log())
	}
	t.Cleanup(func() { _ = p.stop() })
	return p
}

// URL is the superuser's URL of database on this cluster.
func (p *Postgres) URL(database string) string {
	u := url.URL{
		Scheme:   "postgres",
		User:     url.User("postgres"),
		Host:     net.JoinHostPort("127.0.0.1", strconv.Itoa(p.Port)),
		Path:     "/" + database,
		RawQuery: "sslmode=disable&connect_timeout=5",
	}
	return u.String()
}

// Stop stops the server as a crash would (pg_ctl stop -m immediate):
// connections are cut, nothing is flushed beyond what commits already
// made durable, and the next Start runs crash recovery.
func (p *Postgres) Stop(t testing.TB) {
	t.Helper()
	if err := p.stop(); err != nil {
		t.Fatalf("faults: stop PostgreSQL: %v\n%s", err, p.Log())
	}
}

// Start starts the stopped server again on the same port.
func (p *Postgres) Start(t testing.TB) {
	t.Helper()
	if err := p.start(); err != nil {
		t.Fatalf("faults: restart PostgreSQL: %v\n%s", err, p.Log())
	}
}

// Log returns the server's log.
func (p *Postgres) Log() string {
	b, _ := os.ReadFile(filepath.Join(p.root, "postgres.log"))
	return string(b)
}

// Exec runs sql as the superuser on database.
func (p *Postgres) Exec(t testing.TB, database, sql string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, p.URL(database))
	if err != nil {
		t.Fatalf("faults: connect: %v", err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, sql); err != nil {
		t.Fatalf("faults: %s: %v", sql, err)
	}
}

// NewRuntimeDatabase creates a database and a login role that owns a
// schema-creating grant on it but is neither superuser nor BYPASSRLS, as
// keybroker runs in production; it returns the role's URL.
func (p *Postgres) NewRuntimeDatabase(t testing.TB, name string) string {
	t.Helper()
	ident := pgx.Identifier{name}.Sanitize()
	p.Exec(t, "postgres", "CREATE ROLE "+ident+" LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE")
	p.Exec(t, "postgres", "CREATE DATABASE "+ident+" OWNER "+ident)
	u, _ := url.Parse(p.URL(name))
	u.User = url.User(name)
	return u.String()
}

func (p *Postgres) dataDir() string { return filepath.Join(p.root, "data") }

func (p *Postgres) start() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.running {
		return nil
	}
	opts := fmt.Sprintf("-p %d -k %s -c listen_addresses=127.0.0.1 -c max_connections=60 -c shared_buffers=16MB", p.Port, p.root)
	out, err := p.command("pg_ctl", "-D", p.dataDir(), "-l", filepath.Join(p.root, "postgres.log"),
		"-o", opts, "-w", "-t", strconv.Itoa(int(pgCtlTimeout.Seconds())), "start").CombinedOutput()
	if err != nil {
		return fmt.Errorf("pg_ctl start: %v: %s", err, out)
	}
	p.running = true
	return nil
}

func (p *Postgres) stop() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.running {
		return nil
	}
	out, err := p.command("pg_ctl", "-D", p.dataDir(), "-m", "immediate", "-w",
		"-t", strconv.Itoa(int(pgCtlTimeout.Seconds())), "stop").CombinedOutput()
	if err != nil {
		return fmt.Errorf("pg_ctl stop: %v: %s", err, out)
	}
	p.running = false
	return nil
}

// command runs a PostgreSQL server tool as the cluster's OS user.
func (p *Postgres) command(tool string, args ...string) *exec.Cmd {
	bin := filepath.Join(p.bindir, tool)
	if p.runAs == "" {
		return exec.Command(bin, args...)
	}
	return exec.Command("runuser", append([]string{"-u", p.runAs, "--", bin}, args...)...)
}

// findPGBinDir finds the directory of initdb and pg_ctl.
func findPGBinDir() (string, error) {
	if dir := os.Getenv(PGBinDirEnv); dir != "" {
		return dir, nil
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	// Highest major version first ("9.6" < "15" compares wrongly as text).
	sort.Slice(dirs, func(i, j int) bool { return pgMajor(dirs[i]) > pgMajor(dirs[j]) })
	for _, dir := range dirs {
		if _, err := os.Stat(filepath.Join(dir, "initdb")); err == nil {
			return dir, nil
		}
	}
	if initdb, err := exec.LookPath("initdb"); err == nil {
		return filepath.Dir(initdb), nil
	}
	return "", fmt.Errorf("no initdb under /usr/lib/postgresql/*/bin or on PATH")
}

func pgMajor(dir string) float64 {
	v, _ := strconv.ParseFloat(filepath.Base(filepath.Dir(dir)), 64)
	return v
}

// freePort returns a TCP port that was free on 127.0.0.1 a moment ago.
func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}
