// Package migrations holds keybroker's PostgreSQL schema as numbered SQL
// files embedded in the binary, and applies them.
//
// Files are named NNNN_name.sql, numbered from 0001 without gaps. Each is
// applied in its own transaction with search_path set to the target schema
// and recorded in that schema's keybroker_migrations table (version, name,
// SHA-256 checksum, applied_at). The files are written to adopt a
// mana-auth database whose original 002/003 migrations already ran in
// schema auth: they only create what is missing and re-state constraints
// and policies idempotently.
//
// Applying needs no superuser: the migrating role needs CREATE on the
// database (to create the schema) or on an existing schema, and must own
// the tables when it adopts existing ones.
//
// Parse and Run serve the embedded SQLite store too: package sqlitestore
// keeps its own numbered SQL files and bookkeeping table and implements
// Dialect, so both stores share the parser, the checksums and the rules
// by which files are applied and verified.
package migrations

import (
	"context"
	"crypto/sha256"
	"embed"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/fnv"
	"io/fs"
	"regexp"
	"sort"
	"strconv"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

//go:embed sql
var embedded embed.FS

// Migration is one numbered SQL file.
type Migration struct {
	Version  int    // the NNNN prefix, from 1
	Name     string // the file name, e.g. "0001_encryption_vaults.sql"
	SQL      string
	Checksum string // hex SHA-256 of SQL
}

// fileName is the only accepted shape of a migration file name.
var fileName = regexp.MustCompile(`^([0-9]{4})_([a-z0-9]+(?:_[a-z0-9]+)*)\.sql$`)

// All returns keybroker's embedded migrations in order.
func All() ([]Migration, error) {
	sub, err := fs.Sub(embedded, "sql")
	if err != nil {
		return nil, fmt.Errorf("migrations: %w", err)
	}
	return Parse(sub)
}

// Parse reads the migrations at the root of fsys. It is strict so that a
// misnamed or misnumbered file fails the build's tests rather than being
// skipped in production: every entry must be a file named NNNN_name.sql,
// versions start at 0001 and have no duplicates, and no file is empty.
// Versions may leave gaps: work done in parallel reserves its numbers
// ahead, and Run applies every version not recorded, in order, whatever
// was applied before it.
func Parse(fsys fs.FS) ([]Migration, error) {
	entries, err := fs.ReadDir(fsys, ".")
	if err != nil {
		return nil, fmt.Errorf("migrations: %w", err)
	}
	byVersion := make(map[int]string, len(entries))
	out := make([]Migration, 0, len(entries))
	for _, e := range entries {
		m := fileName.FindStringSubmatch(e.Name())
		if e.IsDir() || m == nil {
			return nil, fmt.Errorf("migrations: %q is not a migration file named NNNN_name.sql", e.Name())
		}
		version, _ := strconv.Atoi(m[1]) // four digits always parse
		if version == 0 {
			return nil, fmt.Errorf("migrations: %q: versions start at 0001", e.Name())
		}
		if other, dup := byVersion[version]; dup {
			return nil, fmt.Errorf("migrations: %q and %q share version %d", other, e.Name(), version)
		}
		byVersion[version] = e.Name()
		body, err := fs.ReadFile(fsys, e.Name())
		if err != nil {
			return nil, fmt.Errorf("migrations: %w", err)
		}
		if len(body) == 0 {
			return nil, fmt.Errorf("migrations: %q is empty", e.Name())
		}
		sum := sha256.Sum256(body)
		out = append(out, Migration{Version: version, Name: e.Name(), SQL: string(body), Checksum: hex.EncodeToString(sum[:])})
	}
	if len(out) == 0 {
		return nil, errors.New("migrations: no migration files")
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Version < out[j].Version })
	if out[0].Version != 1 {
		return nil, fmt.Errorf("migrations: version 0001 is missing (first file is %q)", out[0].Name)
	}
	return out, nil
}

// Dialect is one database engine's side of Run: a transaction that holds
// the engine's migration lock. The engine keeps its own SQL files and
// bookkeeping table; Run holds the rules that are the same everywhere
// (order, verification, tolerance of newer versions).
type Dialect interface {
	// InLockedTx runs fn in one transaction that holds the migration
	// lock, so that concurrent migrators of the same database apply each
	// file once, and commits it when fn returns nil. The lock ends with
	// the transaction: a crashed migrator never leaves it held.
	InLockedTx(ctx context.Context, fn func(tx DialectTx) error) error
}

// DialectTx is the work of Run inside one locked transaction.
type DialectTx interface {
	// Recorded returns the name and checksum recorded for version; found
	// is false when none is.
	Recorded(ctx context.Context, version int) (name, checksum string, found bool, err error)
	// Apply runs m's SQL and records m's version, name and checksum with
	// the time.
	Apply(ctx context.Context, m Migration) error
}

// RunError is Run's error: Migration failed, or is recorded differently
// (Err is then a *ChangedError), and no later one was attempted.
type RunError struct {
	Migration Migration
	Err       error
}

func (e *RunError) Error() string { return e.Migration.Name + ": " + e.Err.Error() }

func (e *RunError) Unwrap() error { return e.Err }

// ChangedError reports an applied migration recorded under another name
// or checksum than its file's: another build migrated the database, or
// the file was edited after it was applied.
type ChangedError struct {
	Migration                      Migration
	RecordedName, RecordedChecksum string
}

func (e *ChangedError) Error() string {
	if e.RecordedName != e.Migration.Name {
		return fmt.Sprintf("version %d is recorded as %q", e.Migration.Version, e.RecordedName)
	}
	return fmt.Sprintf("checksum mismatch: the file changed after it was applied (recorded %s, embedded %s)", e.RecordedChecksum, e.Migration.Checksum)
}

// Run applies the migrations of all (as Parse returns them) that d has
// not recorded, each in its own locked transaction together with its
// record, and verifies the ones it has: the check happens under the lock,
// so a migration another migrator applied meanwhile is seen and skipped.
// It returns the names it applied. A recorded migration whose name or
// checksum differs from the file, or a migration that fails, stops it with
// a *RunError; that migration is rolled back and later ones are not
// attempted. Versions recorded but unknown to all are tolerated, so that
// an older binary still starts after a newer one migrated (a rolling
// upgrade).
func Run(ctx context.Context, d Dialect, all []Migration) (applied []string, err error) {
	for _, m := range all {
		done, err := runOne(ctx, d, m)
		if err != nil {
			return applied, &RunError{Migration: m, Err: err}
		}
		if done {
			applied = append(applied, m.Name)
		}
	}
	return applied, nil
}

func runOne(ctx context.Context, d Dialect, m Migration) (applied bool, err error) {
	err = d.InLockedTx(ctx, func(tx DialectTx) error {
		name, checksum, found, err := tx.Recorded(ctx, m.Version)
		switch {
		case err != nil:
			return err
		case found && (name != m.Name || checksum != m.Checksum):
			return &ChangedError{Migration: m, RecordedName: name, RecordedChecksum: checksum}
		case found:
			return nil
		}
		if err := tx.Apply(ctx, m); err != nil {
			return err
		}
		applied = true
		return nil
	})
	return applied, err
}

// Apply brings schema up to date with the embedded migrations, creating
// the schema when it is missing, and returns the names of the files it
// applied (none when the schema was current). Concurrent callers — several
// replicas starting at once — are serialised by an advisory lock keyed on
// the schema, so each file is applied exactly once.
//
// It returns an error when a file that was already applied has changed
// (its checksum differs), when a recorded version has a different name,
// or when a migration fails; that migration is then rolled back and later
// ones are not attempted. Versions recorded in the database but unknown
// to this binary are tolerated so that an older replica can still start
// during a rolling upgrade.
func Apply(ctx context.Context, pool *pgxpool.Pool, schema string) (applied []string, err error) {
	all, err := All()
	if err != nil {
		return nil, err
	}
	return apply(ctx, pool, schema, all)
}

func apply(ctx context.Context, pool *pgxpool.Pool, schema string, all []Migration) (applied []string, err error) {
	if schema == "" {
		return nil, errors.New("migrations: schema is required")
	}
	m := newPostgres(pool, schema)
	if err := m.bootstrap(ctx); err != nil {
		return nil, err
	}
	applied, err = Run(ctx, m, all)
	var failed *RunError
	if errors.As(err, &failed) {
		return applied, fmt.Errorf("migrations: %s in schema %q: %w", failed.Migration.Name, schema, failed.Err)
	}
	return applied, err
}

// postgres is the PostgreSQL Dialect: one schema's keybroker_migrations
// table, under an advisory lock keyed on the schema.
type postgres struct {
	pool      *pgxpool.Pool
	schema    string
	lockKey   int64
	schemaSQL string // sanitized schema identifier
	tableSQL  string // sanitized schema.keybroker_migrations
}

func newPostgres(pool *pgxpool.Pool, schema string) *postgres {
	// The key is derived from the schema so that migrators of different
	// schemas in one database do not wait for each other.
	h := fnv.New64a()
	h.Write([]byte("keybroker/migrations\x00" + schema))
	return &postgres{
		pool:      pool,
		schema:    schema,
		lockKey:   int64(binary.BigEndian.Uint64(h.Sum(nil))),
		schemaSQL: pgx.Identifier{schema}.Sanitize(),
		tableSQL:  pgx.Identifier{schema, "keybroker_migrations"}.Sanitize(),
	}
}

// locked runs fn in a transaction that holds the schema's advisory lock.
// A transaction-scoped lock is released by commit or rollback, so a
// crashed migrator never leaves it held on a pooled connection.
func (m *postgres) locked(ctx context.Context, fn func(tx pgx.Tx) error) error {
	return pgx.BeginFunc(ctx, m.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", m.lockKey); err != nil {
			return fmt.Errorf("advisory lock: %w", err)
		}
		return fn(tx)
	})
}

// InLockedTx implements Dialect.
func (m *postgres) InLockedTx(ctx context.Context, fn func(tx DialectTx) error) error {
	return m.locked(ctx, func(tx pgx.Tx) error {
		return fn(postgresTx{m, tx})
	})
}

// bootstrap creates the schema and the bookkeeping table under the lock:
// even with IF NOT EXISTS, concurrent CREATE SCHEMA statements can fail on
// a unique violation in the catalog.
func (m *postgres) bootstrap(ctx context.Context) error {
	err := m.locked(ctx, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "CREATE SCHEMA IF NOT EXISTS "+m.schemaSQL); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS `+m.tableSQL+` (
    version     INTEGER PRIMARY KEY,
    name        TEXT NOT NULL,
    checksum    TEXT NOT NULL,
    applied_at  TIMESTAMPTZ NOT NULL DEFAULT now()
)`)
		return err
	})
	if err != nil {
		return fmt.Errorf("migrations: prepare schema %q: %w", m.schema, err)
	}
	return nil
}

// postgresTx is the PostgreSQL DialectTx.
type postgresTx struct {
	m  *postgres
	tx pgx.Tx
}

// Recorded implements DialectTx.
func (t postgresTx) Recorded(ctx context.Context, version int) (name, checksum string, found bool, err error) {
	err = t.tx.QueryRow(ctx, "SELECT name, checksum FROM "+t.m.tableSQL+" WHERE version = $1", version).Scan(&name, &checksum)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", "", false, nil
	}
	return name, checksum, err == nil, err
}

// Apply implements DialectTx: the file runs with search_path set to the
// schema, so it names its tables unqualified.
func (t postgresTx) Apply(ctx context.Context, mig Migration) error {
	if _, err := t.tx.Exec(ctx, "SET LOCAL search_path TO "+t.m.schemaSQL); err != nil {
		return err
	}
	if _, err := t.tx.Exec(ctx, mig.SQL); err != nil {
		return err
	}
	_, err := t.tx.Exec(ctx, "INSERT INTO "+t.m.tableSQL+" (version, name, checksum) VALUES ($1, $2, $3)", mig.Version, mig.Name, mig.Checksum)
	return err
}
