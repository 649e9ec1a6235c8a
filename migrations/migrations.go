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
// versions start at 0001 and have no gaps or duplicates, and no file is
// empty.
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
	for i, m := range out {
		if m.Version != i+1 {
			return nil, fmt.Errorf("migrations: version %04d is missing (next file is %q)", i+1, m.Name)
		}
	}
	return out, nil
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
	m := newMigrator(schema)
	if err := m.bootstrap(ctx, pool); err != nil {
		return nil, err
	}
	for _, mig := range all {
		done, err := m.applyOne(ctx, pool, mig)
		if err != nil {
			return applied, err
		}
		if done {
			applied = append(applied, mig.Name)
		}
	}
	return applied, nil
}

type migrator struct {
	schema    string
	lockKey   int64
	schemaSQL string // sanitized schema identifier
	tableSQL  string // sanitized schema.keybroker_migrations
}

func newMigrator(schema string) *migrator {
	// The key is derived from the schema so that migrators of different
	// schemas in one database do not wait for each other.
	h := fnv.New64a()
	h.Write([]byte("keybroker/migrations\x00" + schema))
	return &migrator{
		schema:    schema,
		lockKey:   int64(binary.BigEndian.Uint64(h.Sum(nil))),
		schemaSQL: pgx.Identifier{schema}.Sanitize(),
		tableSQL:  pgx.Identifier{schema, "keybroker_migrations"}.Sanitize(),
	}
}

// locked runs fn in a transaction that holds the schema's advisory lock.
// A transaction-scoped lock is released by commit or rollback, so a
// crashed migrator never leaves it held on a pooled connection.
func (m *migrator) locked(ctx context.Context, pool *pgxpool.Pool, fn func(tx pgx.Tx) error) error {
	return pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", m.lockKey); err != nil {
			return fmt.Errorf("advisory lock: %w", err)
		}
		return fn(tx)
	})
}

// bootstrap creates the schema and the bookkeeping table under the lock:
// even with IF NOT EXISTS, concurrent CREATE SCHEMA statements can fail on
// a unique violation in the catalog.
func (m *migrator) bootstrap(ctx context.Context, pool *pgxpool.Pool) error {
	err := m.locked(ctx, pool, func(tx pgx.Tx) error {
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

// applyOne applies mig unless it is recorded, and verifies the record when
// it is. The check happens under the lock, so a migration another replica
// applied meanwhile is seen and skipped.
func (m *migrator) applyOne(ctx context.Context, pool *pgxpool.Pool, mig Migration) (applied bool, err error) {
	err = m.locked(ctx, pool, func(tx pgx.Tx) error {
		var name, checksum string
		err := tx.QueryRow(ctx, "SELECT name, checksum FROM "+m.tableSQL+" WHERE version = $1", mig.Version).Scan(&name, &checksum)
		switch {
		case err == nil:
			if name != mig.Name {
				return fmt.Errorf("version %d is recorded as %q", mig.Version, name)
			}
			if checksum != mig.Checksum {
				return fmt.Errorf("checksum mismatch: the file changed after it was applied (recorded %s, embedded %s)", checksum, mig.Checksum)
			}
			return nil
		case !errors.Is(err, pgx.ErrNoRows):
			return err
		}
		if _, err := tx.Exec(ctx, "SET LOCAL search_path TO "+m.schemaSQL); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, mig.SQL); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, "INSERT INTO "+m.tableSQL+" (version, name, checksum) VALUES ($1, $2, $3)", mig.Version, mig.Name, mig.Checksum); err != nil {
			return err
		}
		applied = true
		return nil
	})
	if err != nil {
		return false, fmt.Errorf("migrations: %s in schema %q: %w", mig.Name, m.schema, err)
	}
	return applied, nil
}
