package pgstore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/keybroker/keybroker/broker"
)

// interpretError translates a driver error, once, at the store's
// boundary. Failures that mean "the database could not be reached or
// could not serve us now" become *broker.UnavailableError (503, retry
// later). A foreign-key violation on a vault table is
// broker.ErrUnknownUser: keybroker's own tables have no foreign keys,
// and on a schema adopted from the original service both reference the
// users table by user_id, so it means the user has no row there (a
// deleted account whose token has not expired). Everything else — a
// CHECK or RLS violation included — is a plain wrapped error: it is a
// bug, and retrying will not help.
//
// Classification is by type, SQLSTATE and table, never by error text.
func interpretError(err error) error {
	if err == nil {
		return nil
	}
	if isUnavailable(err) {
		return &broker.UnavailableError{Dependency: broker.DependencyStore, Err: fmt.Errorf("pgstore: %w", err)}
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "23503" && pgErr.ConstraintName == dataKeyExistsConstraint {
		return fmt.Errorf("pgstore: %w: %w", broker.ErrDataKeyDeleted, err)
	}
	if isUnknownUser(err) {
		return fmt.Errorf("pgstore: %w: %w", broker.ErrUnknownUser, err)
	}
	return fmt.Errorf("pgstore: %w", err)
}

// isUnknownUser reports whether err is a foreign-key violation of a row
// of one of the vault tables.
func isUnknownUser(err error) bool {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "23503" { // foreign_key_violation
		return false
	}
	switch pgErr.TableName {
	case "encryption_vaults", "encryption_vault_audit":
		return true
	}
	// A partitioned audit table reports the partition (auditpartitions.go).
	return isAuditPartition(pgErr.TableName)
}

// dataKeyExistsConstraint names the refusal of a row under a deleted data
// key (migration 0006), raised as a foreign_key_violation.
const dataKeyExistsConstraint = "encryption_vaults_data_key_exists"

func isUnavailable(err error) bool {
	var connectErr *pgconn.ConnectError
	if errors.As(err, &connectErr) {
		// Whatever the reason (refused, DNS, authentication, no such
		// database), the request cannot reach its data.
		return true
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return unavailableSQLState(pgErr.Code)
	}
	var netErr net.Error
	switch {
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		return true
	case pgconn.Timeout(err), pgconn.SafeToRetry(err):
		return true
	case errors.Is(err, pgconn.ErrConnClosed), errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return true
	case errors.As(err, &netErr):
		return true
	}
	return false
}

// unavailableSQLState reports whether a server error means the server
// cannot serve the request now rather than that the request is wrong.
func unavailableSQLState(code string) bool {
	switch code {
	case "57P01", // admin_shutdown
		"57P02", // crash_shutdown
		"57P03", // cannot_connect_now (starting up, recovering)
		"57P04", // database_dropped
		"57P05", // idle_session_timeout
		"57014", // query_canceled (statement_timeout)
		"55P03", // lock_not_available (lock_timeout)
		"25006": // read_only_sql_transaction: connected to a standby after failover
		return true
	}
	if len(code) != 5 {
		return false
	}
	switch code[:2] {
	case "08", // connection exception
		"53": // insufficient resources (too many connections, disk full, out of memory)
		return true
	}
	return false
}
