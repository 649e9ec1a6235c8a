package sqlitestore

import (
	"bytes"
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"slices"
	"strings"

	sqlite3 "modernc.org/sqlite/lib"

	"github.com/keybroker/keybroker/migrations"
)

//go:embed sql
var embedded embed.FS

// ErrNotKeybrokerDatabase is wrapped by Open's error when keybroker.db is
// not a SQLite database, is damaged, or belongs to another application.
var ErrNotKeybrokerDatabase = errors.New("not a keybroker SQLite database")

// applicationID marks the file as keybroker's in the SQLite header's
// application_id field ("KBRK"), so that another application's database
// is recognised even when its tables happen to look like ours.
const applicationID = 0x4B42524B

// sqliteMagic starts every SQLite database file.
var sqliteMagic = []byte("SQLite format 3\x00")

// hint ends every refusal of Open: what the operator can do about it.
const hint = "point --data-dir elsewhere"

// embeddedMigrations returns the store's migrations, parsed as strictly as
// PostgreSQL's.
func embeddedMigrations() ([]migrations.Migration, error) {
	sub, err := fs.Sub(embedded, "sql")
	if err != nil {
		return nil, fmt.Errorf("sqlitestore: %w", err)
	}
	all, err := migrations.Parse(sub)
	if err != nil {
		return nil, fmt.Errorf("sqlitestore: %w", err)
	}
	return all, nil
}

// prepareDir creates dir (0700) when missing and proves that files can be
// created in it: SQLite must create keybroker.db-wal and -shm there, and
// failing now says which directory is wrong instead of failing later on
// the first request.
func prepareDir(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("sqlitestore: cannot create data directory %s (%w): fix the path or its permissions, or %s", dir, reason(err), hint)
	}
	probe, err := os.CreateTemp(dir, ".keybroker-write-check-*")
	if err != nil {
		return fmt.Errorf("sqlitestore: data directory %s is not writable (%w): give this user write access to it, or %s", dir, reason(err), hint)
	}
	name := probe.Name()
	_ = probe.Close()
	if err := os.Remove(name); err != nil {
		return fmt.Errorf("sqlitestore: data directory %s: cannot remove %s (%w): fix its permissions, or %s", dir, name, reason(err), hint)
	}
	return nil
}

// checkFile creates path (0600: wrapped keys and the audit trail are in
// it, and SQLite gives its -wal and -shm files the same mode) when it is
// missing, and otherwise refuses a file that is not writable or does not
// start like a SQLite database, before SQLite opens it: SQLite would
// otherwise fail only at the first statement, and nothing of a file that
// is not ours may be touched.
func checkFile(path string) error {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err == nil {
		return f.Close()
	}
	if !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("sqlitestore: cannot create %s (%w): fix the data directory's permissions, or %s", path, reason(err), hint)
	}
	info, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("sqlitestore: %s (%w): %s", path, reason(err), hint)
	}
	if !info.Mode().IsRegular() {
		return notOurs(path, "not a regular file")
	}
	f, err = os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("sqlitestore: %s is not writable (%w): give this user write access to it, or %s", path, reason(err), hint)
	}
	defer f.Close()
	header := make([]byte, len(sqliteMagic))
	n, err := io.ReadFull(f, header)
	switch {
	case n == 0 && errors.Is(err, io.EOF):
		return nil // an empty file is an empty database
	case err != nil && !errors.Is(err, io.ErrUnexpectedEOF):
		return fmt.Errorf("sqlitestore: cannot read %s (%w): %s", path, reason(err), hint)
	case !bytes.Equal(header[:n], sqliteMagic) || n < len(sqliteMagic):
		return notOurs(path, "file is not a database")
	}
	return nil
}

// notOurs is Open's refusal of a file it must not use.
func notOurs(path, why string) error {
	return fmt.Errorf("sqlitestore: %s is %w (%s): move it away or %s", path, ErrNotKeybrokerDatabase, why, hint)
}

// reason strips the path from a *fs.PathError (the message names it
// already) and keeps the error chain for errors.Is.
func reason(err error) error {
	var pathErr *fs.PathError
	if errors.As(err, &pathErr) {
		return pathErr.Err
	}
	return err
}

// openError turns a failure of the first statements on the file into
// Open's error: SQLite's verdict that the file is no database or is
// damaged is a refusal like the header check's; a lock held past the busy
// timeout is unavailability; anything else is wrapped.
func (s *Store) openError(ctx context.Context, what string, err error) error {
	switch sqliteCode(err) {
	case sqlite3.SQLITE_NOTADB:
		return notOurs(s.path, "file is not a database")
	case sqlite3.SQLITE_CORRUPT:
		return notOurs(s.path, "database disk image is malformed")
	}
	if isUnavailable(ctx, err) {
		return unavailable(fmt.Errorf("%s %s: %w", what, s.path, err))
	}
	return fmt.Errorf("sqlitestore: %s %s: %w", what, s.path, err)
}

// inTx runs fn in one BEGIN IMMEDIATE transaction, for Open's own work.
func (s *Store) inTx(ctx context.Context, fn func(tx *sql.Tx) error) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer func() { _ = tx.Rollback() }()
	if err := fn(tx); err != nil {
		return err
	}
	return tx.Commit()
}

// bootstrap claims a new database for keybroker (application_id and the
// keybroker_migrations table, in one transaction) or verifies that an
// existing one is keybroker's, then switches it to WAL mode. A database
// with tables of its own but no keybroker_migrations belongs to someone
// else and is refused untouched: migrating into it would mix our tables
// into their schema.
func (s *Store) bootstrap(ctx context.Context) error {
	var refusal error
	err := s.inTx(ctx, func(tx *sql.Tx) error {
		var appID int64
		if err := tx.QueryRowContext(ctx, `PRAGMA application_id`).Scan(&appID); err != nil {
			return err
		}
		tables, err := tableNames(ctx, tx)
		if err != nil {
			return err
		}
		hasMigrations := slices.Contains(tables, "keybroker_migrations")
		switch {
		case appID != 0 && appID != applicationID:
			refusal = notOurs(s.path, fmt.Sprintf("its application_id is %#x; keybroker will not migrate into another application's database", appID))
			return refusal
		case !hasMigrations && len(tables) > 0:
			refusal = notOurs(s.path, fmt.Sprintf("it holds tables %s but no keybroker_migrations; keybroker will not migrate into another application's database", listNames(tables)))
			return refusal
		}
		if !hasMigrations {
			if _, err := tx.ExecContext(ctx, `CREATE TABLE keybroker_migrations (
    version     INTEGER PRIMARY KEY NOT NULL,
    name        TEXT NOT NULL,
    checksum    TEXT NOT NULL,
    applied_at  TEXT NOT NULL
) STRICT`); err != nil {
				return err
			}
		}
		if appID == 0 {
			// A constant: PRAGMA takes no bound parameters.
			if _, err := tx.ExecContext(ctx, fmt.Sprintf(`PRAGMA application_id = %d`, applicationID)); err != nil {
				return err
			}
		}
		return nil
	})
	if refusal != nil {
		return refusal
	}
	if err != nil {
		return s.openError(ctx, "prepare", err)
	}

	// WAL lets Ping read while a transaction writes, and makes a commit
	// one append to the log. The mode is stored in the file, so this runs
	// once per Open, outside any transaction as SQLite requires.
	var mode string
	if err := s.db.QueryRowContext(ctx, `PRAGMA journal_mode = WAL`).Scan(&mode); err != nil {
		return s.openError(ctx, "enable WAL mode on", err)
	}
	if !strings.EqualFold(mode, "wal") {
		return fmt.Errorf("sqlitestore: %s stays in journal mode %q instead of WAL: put the data directory on a local file system, or %s", s.path, mode, hint)
	}
	return nil
}

func tableNames(ctx context.Context, tx *sql.Tx) ([]string, error) {
	rows, err := tx.QueryContext(ctx, `SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite\_%' ESCAPE '\' ORDER BY name`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var names []string
	for rows.Next() {
		var name string
		if err := rows.Scan(&name); err != nil {
			return nil, err
		}
		names = append(names, name)
	}
	return names, rows.Err()
}

// listNames quotes a few names for a one-line message.
func listNames(names []string) string {
	const most = 5
	quoted := make([]string, 0, most+1)
	for i, n := range names {
		if i == most {
			quoted = append(quoted, fmt.Sprintf("and %d more", len(names)-most))
			break
		}
		quoted = append(quoted, fmt.Sprintf("%q", n))
	}
	return strings.Join(quoted, ", ")
}

// migrate applies the embedded migrations that are not recorded yet and
// verifies the ones that are (migrations.Run), each in its own BEGIN
// IMMEDIATE transaction, which holds the database's write lock. It
// returns the names it applied.
func (s *Store) migrate(ctx context.Context) ([]string, error) {
	all, err := embeddedMigrations()
	if err != nil {
		return nil, err
	}
	applied, err := migrations.Run(ctx, migrator{s}, all)
	var failed *migrations.RunError
	if !errors.As(err, &failed) {
		return applied, err
	}
	var changed *migrations.ChangedError
	if errors.As(failed.Err, &changed) {
		return applied, fmt.Errorf("sqlitestore: migration %s in %s: %w: this database was migrated by another keybroker build; run that build or restore a backup", failed.Migration.Name, s.path, changed)
	}
	return applied, s.openError(ctx, "migration "+failed.Migration.Name+" on", failed.Err)
}

// migrator is the SQLite migrations.Dialect.
type migrator struct{ s *Store }

// InLockedTx implements migrations.Dialect: BEGIN IMMEDIATE takes the
// database's write lock, which serialises migrators of the same file.
func (m migrator) InLockedTx(ctx context.Context, fn func(tx migrations.DialectTx) error) error {
	return m.s.inTx(ctx, func(tx *sql.Tx) error { return fn(migrationTx{tx}) })
}

// migrationTx is the SQLite migrations.DialectTx.
type migrationTx struct{ tx *sql.Tx }

// Recorded implements migrations.DialectTx.
func (t migrationTx) Recorded(ctx context.Context, version int) (name, checksum string, found bool, err error) {
	err = t.tx.QueryRowContext(ctx, `SELECT name, checksum FROM keybroker_migrations WHERE version = ?1`, version).Scan(&name, &checksum)
	if errors.Is(err, sql.ErrNoRows) {
		return "", "", false, nil
	}
	return name, checksum, err == nil, err
}

// Apply implements migrations.DialectTx.
func (t migrationTx) Apply(ctx context.Context, m migrations.Migration) error {
	if _, err := t.tx.ExecContext(ctx, m.SQL); err != nil {
		return err
	}
	_, err := t.tx.ExecContext(ctx,
		`INSERT INTO keybroker_migrations (version, name, checksum, applied_at) VALUES (?1, ?2, ?3, strftime('%Y-%m-%dT%H:%M:%f000Z', 'now'))`,
		m.Version, m.Name, m.Checksum)
	return err
}
