package sqlitestore

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"

	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"

	"github.com/keybroker/keybroker/broker"
)

// interpretError translates a driver error, once, at the store's boundary.
// Failures that mean "the database cannot serve us now" — locked by
// another process past the busy timeout, an I/O error, a full disk, a
// cancelled request, a closed store — become *broker.UnavailableError
// (503, retry later). Everything else, a CHECK violation included, is a
// plain wrapped error: it is a bug, and retrying will not help.
//
// Classification is by type and SQLite result code, never by error text.
func interpretError(ctx context.Context, err error) error {
	if err == nil {
		return nil
	}
	if isUnavailable(ctx, err) {
		return unavailable(err)
	}
	var sqliteErr *sqlite.Error
	if errors.As(err, &sqliteErr) && sqliteErr.Code() == sqlite3.SQLITE_CONSTRAINT_TRIGGER {
		// The one trigger that raises (migration 0003): a row under a
		// deleted data key.
		return fmt.Errorf("sqlitestore: %w: %w", broker.ErrDataKeyDeleted, err)
	}
	return fmt.Errorf("sqlitestore: %w", err)
}

func unavailable(err error) error {
	return &broker.UnavailableError{Dependency: broker.DependencyStore, Err: fmt.Errorf("sqlitestore: %w", err)}
}

func isUnavailable(ctx context.Context, err error) bool {
	var sqliteErr *sqlite.Error
	if errors.As(err, &sqliteErr) {
		switch sqliteErr.Code() & 0xff { // the primary result code
		case sqlite3.SQLITE_BUSY, // another process holds the lock past the busy timeout
			sqlite3.SQLITE_LOCKED,
			sqlite3.SQLITE_IOERR,
			sqlite3.SQLITE_FULL, // disk full, as PostgreSQL's class 53
			sqlite3.SQLITE_CANTOPEN,
			sqlite3.SQLITE_NOMEM,
			sqlite3.SQLITE_READONLY, // the file system went read-only under us
			sqlite3.SQLITE_PROTOCOL,
			sqlite3.SQLITE_INTERRUPT: // the request's context ended mid-statement
			return true
		}
		return false
	}
	switch {
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return true
	case errors.Is(err, ErrClosed), errors.Is(err, sql.ErrConnDone), errors.Is(err, driver.ErrBadConn):
		return true
	case errors.Is(err, sql.ErrTxDone) && ctx.Err() != nil:
		// database/sql rolled the transaction back because ctx ended.
		return true
	}
	return false
}

// sqliteCode returns err's primary SQLite result code, or 0.
func sqliteCode(err error) int {
	var sqliteErr *sqlite.Error
	if errors.As(err, &sqliteErr) {
		return sqliteErr.Code() & 0xff
	}
	return 0
}
