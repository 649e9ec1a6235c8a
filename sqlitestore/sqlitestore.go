// Package sqlitestore is keybroker's embedded store: it implements
// broker.Store on one SQLite file through modernc.org/sqlite, a pure-Go
// SQLite, so the zero-setup default and small single-node installs need
// neither a database server nor cgo.
//
// The schema mirrors the PostgreSQL one (package migrations): the same
// tables, columns, indexes and named CHECK constraints
// (encryption_vaults_has_wrap, encryption_vaults_wrap_iv_pair,
// encryption_vaults_zk_consistency, encryption_vaults_format_version_known).
// It is applied from numbered SQL files embedded in the binary, each in
// its own transaction and recorded with its checksum in a
// keybroker_migrations table, as on PostgreSQL.
//
// # Row-level security exists only on PostgreSQL
//
// SQLite has no row-level security and no roles. This store scopes every
// transaction to one user itself: every read filters on the transaction's
// user id, and a write of a row that belongs to another user is refused
// before it reaches SQLite. Anything that opens the database file directly
// (the sqlite3 shell, a backup tool) sees every user's rows; protect the
// data directory with file permissions (Open creates it 0700 and the
// database 0600).
//
// # Concurrency and durability
//
// The database runs in WAL mode with synchronous=FULL, so a commit that
// returned is on disk, and readers (Ping) never wait for the writer.
// SQLite allows one writer per database; since every keybroker transaction
// writes (a fetch writes its audit row), every transaction begins with
// BEGIN IMMEDIATE, taking the write lock up front. Inside one process the
// transactions queue on a context-aware lock before they begin, so they
// never spin on SQLITE_BUSY; another process holding the lock is waited
// for up to Config.BusyTimeout. A transaction therefore owns the whole
// database from its first statement, which is why VaultGet(ctx, true)
// needs no row lock: read-modify-write cycles are serialised already.
//
// The fetch hot path (GET /key) takes neither: VaultRead is one statement
// on a WAL snapshot, and AuditAppend commits the audit rows of concurrent
// fetches together, one fsync per batch (broker.VaultReader and
// broker.AuditAppender).
package sqlitestore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"time"

	_ "modernc.org/sqlite" // registers the "sqlite" database/sql driver

	"github.com/keybroker/keybroker/broker"
)

// FileName is the database file's name inside the data directory. SQLite
// keeps FileName-wal and FileName-shm beside it while the store is open.
const FileName = "keybroker.db"

// DefaultDir is the data directory the command line uses when none is
// configured, relative to the working directory.
const DefaultDir = ".keybroker"

// DefaultBusyTimeout is how long a transaction waits for another process
// that holds the database's write lock before it fails as unavailable.
const DefaultBusyTimeout = 5 * time.Second

// CacheKiB is each pooled connection's page cache (PRAGMA cache_size),
// in KiB. The cache lives outside the Go heap, once per connection; a page
// it misses is a pread from the kernel's page cache, which keeps a small
// install's whole file anyway. 512 KiB keeps the server under 64 MiB at
// 256 connections (make bench).
const CacheKiB = 512

// Config configures Open.
type Config struct {
	// Dir is the data directory; required. Open creates it (0700) when it
	// is missing. The database is Dir/keybroker.db.
	Dir string
	// BusyTimeout bounds the wait for a write lock held by another process
	// (a second keybroker on the same directory, a backup). Within one
	// Store, transactions queue without it. Default DefaultBusyTimeout.
	BusyTimeout time.Duration
}

func (c *Config) validate() error {
	if c.Dir == "" {
		return errors.New("sqlitestore: Config.Dir is required")
	}
	if c.BusyTimeout == 0 {
		c.BusyTimeout = DefaultBusyTimeout
	}
	if c.BusyTimeout < time.Millisecond {
		return errors.New("sqlitestore: Config.BusyTimeout must be at least 1ms")
	}
	return nil
}

// ErrClosed is returned, inside a *broker.UnavailableError, by a Store
// that was closed.
var ErrClosed = errors.New("sqlitestore: store is closed")

// Store implements broker.Store on a SQLite database file.
type Store struct {
	db      *sql.DB
	path    string
	applied []string
	closed  atomic.Bool
	// writeLock is held by the one transaction that may run: SQLite has a
	// single writer, and queueing here (context-aware) is cheaper and
	// fairer than letting transactions poll SQLite's busy handler.
	writeLock chan struct{}
}

var _ broker.Store = (*Store)(nil)

// Open opens (creating when missing) the database in cfg.Dir and applies
// the embedded migrations. It refuses, with a one-line error that says
// what to do and without modifying anything:
//   - a data directory that cannot be created or is not writable;
//   - a keybroker.db that is not a SQLite database, or is damaged
//     (errors.Is ErrNotKeybrokerDatabase);
//   - a SQLite database of another application: tables but no
//     keybroker_migrations (errors.Is ErrNotKeybrokerDatabase);
//   - a database whose applied migrations differ from the embedded files
//     (checksum mismatch).
//
// A database another process holds locked past BusyTimeout is a
// *broker.UnavailableError.
func Open(ctx context.Context, cfg Config) (*Store, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	dir, err := filepath.Abs(cfg.Dir)
	if err != nil {
		return nil, fmt.Errorf("sqlitestore: data directory %q: %w", cfg.Dir, err)
	}
	if err := prepareDir(dir); err != nil {
		return nil, err
	}
	path := filepath.Join(dir, FileName)
	if err := checkFile(path); err != nil {
		return nil, err
	}
	db, err := sql.Open("sqlite", dataSourceName(path, cfg.BusyTimeout))
	if err != nil {
		return nil, fmt.Errorf("sqlitestore: open %s: %w", path, err)
	}
	// One writer at a time plus concurrent readers (Ping); a few idle
	// connections spare reopening the file and re-running the pragmas.
	db.SetMaxOpenConns(4)
	db.SetMaxIdleConns(4)
	s := &Store{db: db, path: path, writeLock: make(chan struct{}, 1)}
	if err := s.bootstrap(ctx); err != nil {
		_ = db.Close()
		return nil, err
	}
	if s.applied, err = s.migrate(ctx); err != nil {
		_ = db.Close()
		return nil, err
	}
	return s, nil
}

// dataSourceName is the driver's DSN for path. Per-connection settings go
// here so that every pooled connection has them: the busy timeout,
// synchronous=FULL (WAL commits are fsynced: a returned commit survives a
// power cut), foreign keys, and BEGIN IMMEDIATE for every transaction so
// that none starts as a reader and then fails to upgrade with
// SQLITE_BUSY, and secure_delete. journal_mode=WAL is persistent in the
// file and is set once by bootstrap, only after the file is known to be
// keybroker's.
func dataSourceName(path string, busy time.Duration) string {
	q := url.Values{}
	q.Set("_busy_timeout", strconv.FormatInt(busy.Milliseconds(), 10))
	q.Set("_synchronous", "FULL")
	q.Set("_foreign_keys", "on")
	q.Set("_txlock", "immediate")
	// Deleted and overwritten rows (an erased vault, the wrap a rotation
	// replaced) are zeroed in the file rather than left in free space.
	q.Set("_pragma", "secure_delete(1)")
	// SQLite's page cache is per connection and outside the Go heap;
	// its default (2 000 KiB) times the pool is most of the embedded
	// store's memory. The hot pages — the vault table's and its index's
	// upper levels, the audit table's tail — fit in far less, and a miss
	// is a read from the OS page cache, not the disk.
	q.Add("_pragma", fmt.Sprintf("cache_size(-%d)", CacheKiB))
	// A file: URI so that any path works, '?' and '%' included.
	u := url.URL{Scheme: "file", Path: filepath.ToSlash(path), RawQuery: q.Encode()}
	return u.String()
}

// Path returns the database file's absolute path.
func (s *Store) Path() string { return s.path }

// Migrated returns the names of the migration files that Open applied
// (none when the database was current), for the startup log.
func (s *Store) Migrated() []string { return append([]string(nil), s.applied...) }

// Close closes the database. Transactions started afterwards fail with a
// *broker.UnavailableError wrapping ErrClosed.
func (s *Store) Close() error {
	if s.closed.Swap(true) {
		return nil
	}
	if err := s.db.Close(); err != nil {
		return fmt.Errorf("sqlitestore: close: %w", err)
	}
	return nil
}

// Ping reports, for readiness, whether the database answers and holds the
// store's tables. A closed store or a locked or failing file is a
// *broker.UnavailableError.
func (s *Store) Ping(ctx context.Context) error {
	if s.closed.Load() {
		return unavailable(ErrClosed)
	}
	// LIMIT 0 reads no row, yet the statement fails unless both tables exist.
	rows, err := s.db.QueryContext(ctx, `SELECT 1 FROM encryption_vaults, encryption_vault_audit LIMIT 0`)
	if err != nil {
		return interpretError(ctx, fmt.Errorf("ping: %w", err))
	}
	if err := rows.Close(); err != nil {
		return interpretError(ctx, fmt.Errorf("ping: %w", err))
	}
	return nil
}

// InUserTx runs fn in one transaction scoped to userID and commits it when
// fn returns nil. An error of fn rolls the transaction back and is
// returned as is; a closed store, a cancelled context or a database locked
// by another process past BusyTimeout is a *broker.UnavailableError. fn
// must not call InUserTx: transactions of one Store run one at a time.
func (s *Store) InUserTx(ctx context.Context, userID string, fn func(tx broker.Tx) error) error {
	if userID == "" {
		// Every statement filters on the user id; an empty one is a bug.
		return fmt.Errorf("sqlitestore: %w: empty user id", broker.ErrInvalidArgument)
	}
	return s.inWriteTx(ctx, func(sqlTx *sql.Tx) error {
		return fn(&tx{tx: sqlTx, userID: userID})
	})
}

// inWriteTx runs fn in one BEGIN IMMEDIATE transaction once this Store's
// write lock is free, and commits it when fn returns nil; fn's error is
// returned as is.
func (s *Store) inWriteTx(ctx context.Context, fn func(sqlTx *sql.Tx) error) error {
	if s.closed.Load() {
		return unavailable(ErrClosed)
	}
	select {
	case s.writeLock <- struct{}{}:
	case <-ctx.Done():
		return unavailable(fmt.Errorf("wait for the write lock: %w", ctx.Err()))
	}
	defer func() { <-s.writeLock }()

	sqlTx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return interpretError(ctx, fmt.Errorf("begin: %w", err))
	}
	// Rollback after a successful commit is a no-op; database/sql also
	// rolls back by itself when ctx is cancelled mid-transaction.
	defer func() { _ = sqlTx.Rollback() }()

	if err := fn(sqlTx); err != nil {
		return err
	}
	if err := sqlTx.Commit(); err != nil {
		return interpretError(ctx, fmt.Errorf("commit: %w", err))
	}
	return nil
}

// tx implements broker.Tx on one SQLite transaction.
type tx struct {
	tx     *sql.Tx
	userID string
}

var _ broker.Tx = (*tx)(nil)

// vaultColumns is the column list of every vault read and insert, in the
// order scanVault and vaultArgs use.
const vaultColumns = `user_id, wrapped_mk, wrap_iv, format_version, kek_id, key_check, created_at, rotated_at,
    recovery_wrapped_mk, recovery_iv, recovery_format_version, recovery_set_at, zero_knowledge,
    key_proof, restorable_recovery_wrapped_mk, restorable_recovery_iv, restorable_recovery_format_version,
    restorable_recovery_set_at, restorable_key_check, restorable_key_proof, restorable_taken_at`

const (
	sqlVaultGet    = `SELECT ` + vaultColumns + ` FROM encryption_vaults WHERE user_id = ?1`
	sqlVaultInsert = `INSERT INTO encryption_vaults (` + vaultColumns + `)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21)
ON CONFLICT (user_id) DO NOTHING`
	sqlVaultUpdate = `UPDATE encryption_vaults SET
    wrapped_mk = ?2, wrap_iv = ?3, format_version = ?4, kek_id = ?5, key_check = ?6,
    created_at = ?7, rotated_at = ?8, recovery_wrapped_mk = ?9, recovery_iv = ?10,
    recovery_format_version = ?11, recovery_set_at = ?12, zero_knowledge = ?13,
    key_proof = ?14, restorable_recovery_wrapped_mk = ?15, restorable_recovery_iv = ?16,
    restorable_recovery_format_version = ?17, restorable_recovery_set_at = ?18,
    restorable_key_check = ?19, restorable_key_proof = ?20, restorable_taken_at = ?21
WHERE user_id = ?1`
	// Empty strings are stored as NULL, as pgstore and the original
	// service leave unknown request metadata.
	sqlAuditInsert = `INSERT INTO encryption_vault_audit (id, user_id, action, ip_address, user_agent, context, status, created_at, mac)
VALUES (?1, ?2, ?3, NULLIF(?4, ''), NULLIF(?5, ''), NULLIF(?6, ''), ?7, ?8, ?9)`
)

// VaultGet returns the scoped user's vault. forUpdate needs no lock of its
// own: the transaction began IMMEDIATE and already excludes every other
// writer. It returns broker.ErrNotFound when the user has none.
func (t *tx) VaultGet(ctx context.Context, forUpdate bool) (*broker.Vault, error) {
	v, err := scanVault(t.tx.QueryRowContext(ctx, sqlVaultGet, t.userID))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, broker.ErrNotFound
	}
	if err != nil {
		return nil, interpretError(ctx, fmt.Errorf("vault get: %w", err))
	}
	return v, nil
}

// VaultInsert inserts v unless the user already has a vault and reports
// whether it did. Transactions are serialised, so a concurrent init of the
// same user either committed before (this call reports false and the
// caller reads that row in this transaction) or starts after.
func (t *tx) VaultInsert(ctx context.Context, v *broker.Vault) (bool, error) {
	if err := t.checkScope("vault insert", v.UserID); err != nil {
		return false, err
	}
	res, err := t.tx.ExecContext(ctx, sqlVaultInsert, vaultArgs(v)...)
	if err != nil {
		return false, interpretError(ctx, fmt.Errorf("vault insert: %w", err))
	}
	n, err := res.RowsAffected()
	if err != nil {
		return false, interpretError(ctx, fmt.Errorf("vault insert: %w", err))
	}
	return n == 1, nil
}

// VaultUpdate overwrites every column of the user's vault with v. It
// returns broker.ErrNotFound when the row is gone; a row that breaks a
// CHECK constraint is a plain error naming the constraint.
func (t *tx) VaultUpdate(ctx context.Context, v *broker.Vault) error {
	if err := t.checkScope("vault update", v.UserID); err != nil {
		return err
	}
	res, err := t.tx.ExecContext(ctx, sqlVaultUpdate, vaultArgs(v)...)
	if err != nil {
		return interpretError(ctx, fmt.Errorf("vault update: %w", err))
	}
	n, err := res.RowsAffected()
	if err != nil {
		return interpretError(ctx, fmt.Errorf("vault update: %w", err))
	}
	if n == 0 {
		return broker.ErrNotFound
	}
	return nil
}

// AuditInsert appends one audit row; it commits or rolls back with the
// rest of the transaction.
func (t *tx) AuditInsert(ctx context.Context, e *broker.AuditEntry) error {
	if err := t.checkScope("audit insert", e.UserID); err != nil {
		return err
	}
	_, err := t.tx.ExecContext(ctx, sqlAuditInsert,
		e.ID, e.UserID, string(e.Action), e.IPAddress, e.UserAgent, e.Context, e.Status, formatTime(e.CreatedAt), e.MAC)
	if err != nil {
		return interpretError(ctx, fmt.Errorf("audit insert: %w", err))
	}
	return nil
}

// checkScope refuses a write for another user than the transaction's.
// On PostgreSQL row-level security would refuse it too; here this check
// is the only guard, so it is never skipped.
func (t *tx) checkScope(what, userID string) error {
	if userID != t.userID {
		return fmt.Errorf("sqlitestore: %s: row of user %q in a transaction scoped to user %q", what, userID, t.userID)
	}
	return nil
}

// timeLayout is how timestamps are stored: UTC, always six fractional
// digits, so that text order is time order. The trailing Z is appended
// rather than part of the layout, where it would mean "zone".
const timeLayout = "2006-01-02T15:04:05.000000"

// formatTime rounds t to the microsecond, the precision of PostgreSQL's
// TIMESTAMPTZ, so both stores return the same instant.
func formatTime(t time.Time) string {
	return t.UTC().Round(time.Microsecond).Format(timeLayout) + "Z"
}

func formatTimePtr(t *time.Time) *string {
	if t == nil {
		return nil
	}
	s := formatTime(*t)
	return &s
}

func parseTime(column, s string) (time.Time, error) {
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return time.Time{}, fmt.Errorf("column %s holds %q, not a timestamp", column, s)
	}
	return t.UTC(), nil
}

func vaultArgs(v *broker.Vault) []any {
	var r broker.RestorableRecovery
	var wrapped, iv, takenAt *string
	var format *int
	if v.Restorable != nil {
		r = *v.Restorable
		wrapped, iv, format, takenAt = &r.WrappedMK, &r.IV, &r.FormatVersion, formatTimePtr(&r.TakenAt)
	}
	return []any{
		v.UserID, v.WrappedMK, v.WrapIV, v.FormatVersion, v.KEKID, v.KeyCheck,
		formatTime(v.CreatedAt), formatTimePtr(v.RotatedAt),
		v.RecoveryWrappedMK, v.RecoveryIV, v.RecoveryFormatVersion, formatTimePtr(v.RecoverySetAt), v.ZeroKnowledge,
		v.KeyProof, wrapped, iv, format, formatTimePtr(r.SetAt), r.KeyCheck, r.KeyProof, takenAt,
	}
}

func scanVault(row *sql.Row) (*broker.Vault, error) {
	var (
		v                   broker.Vault
		createdAt           string
		rotatedAt, recovSet sql.NullString
		r                   broker.RestorableRecovery
		restWrapped         *string
		restIV              *string
		restFormat          *int
		restSet, restTaken  sql.NullString
	)
	err := row.Scan(
		&v.UserID, &v.WrappedMK, &v.WrapIV, &v.FormatVersion, &v.KEKID, &v.KeyCheck, &createdAt, &rotatedAt,
		&v.RecoveryWrappedMK, &v.RecoveryIV, &v.RecoveryFormatVersion, &recovSet, &v.ZeroKnowledge,
		&v.KeyProof, &restWrapped, &restIV, &restFormat, &restSet, &r.KeyCheck, &r.KeyProof, &restTaken,
	)
	if err != nil {
		return nil, err
	}
	// encryption_vaults_restorable_complete keeps these together.
	if restWrapped != nil && restIV != nil && restFormat != nil && restTaken.Valid {
		if r.TakenAt, err = parseTime("restorable_taken_at", restTaken.String); err != nil {
			return nil, err
		}
		if r.SetAt, err = parseNullTime("restorable_recovery_set_at", restSet); err != nil {
			return nil, err
		}
		r.WrappedMK, r.IV, r.FormatVersion = *restWrapped, *restIV, *restFormat
		v.Restorable = &r
	}
	if v.CreatedAt, err = parseTime("created_at", createdAt); err != nil {
		return nil, err
	}
	if v.RotatedAt, err = parseNullTime("rotated_at", rotatedAt); err != nil {
		return nil, err
	}
	if v.RecoverySetAt, err = parseNullTime("recovery_set_at", recovSet); err != nil {
		return nil, err
	}
	return &v, nil
}

func parseNullTime(column string, s sql.NullString) (*time.Time, error) {
	if !s.Valid {
		return nil, nil
	}
	t, err := parseTime(column, s.String)
	if err != nil {
		return nil, err
	}
	return &t, nil
}
