package pgstore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"syscall"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/broker"
)

func TestInterpretError(t *testing.T) {
	t.Parallel()
	pgErr := func(code string) error { return fmt.Errorf("vault get: %w", &pgconn.PgError{Code: code}) }
	unavailable := map[string]error{
		"AdminShutdown":         pgErr("57P01"),
		"CrashShutdown":         pgErr("57P02"),
		"CannotConnectNow":      pgErr("57P03"),
		"StatementTimeout":      pgErr("57014"),
		"LockTimeout":           pgErr("55P03"),
		"ReadOnlyAfterFailover": pgErr("25006"),
		"ConnectionFailure":     pgErr("08006"),
		"TooManyConnections":    pgErr("53300"),
		"DiskFull":              pgErr("53100"),
		"DeadlineExceeded":      fmt.Errorf("begin: %w", context.DeadlineExceeded),
		"Canceled":              context.Canceled,
		"UnexpectedEOF":         io.ErrUnexpectedEOF,
		"ConnClosed":            fmt.Errorf("x: %w", pgconn.ErrConnClosed),
		"NetOpError":            &net.OpError{Op: "read", Net: "tcp", Err: syscall.ECONNRESET},
	}
	for name, err := range unavailable {
		t.Run(name+"IsUnavailable", func(t *testing.T) {
			t.Parallel()
			got := interpretError(err)
			require.True(t, broker.IsUnavailable(got), "%v", got)
			var u *broker.UnavailableError
			require.ErrorAs(t, got, &u)
			require.Equal(t, broker.DependencyStore, u.Dependency)
			require.ErrorIs(t, got, err, "the cause stays reachable")
		})
	}
	bugs := map[string]error{
		"CheckViolation":      pgErr("23514"),
		"UniqueViolation":     pgErr("23505"),
		"ForeignKeyViolation": pgErr("23503"),
		"RLSViolation":        pgErr("42501"),
		"UndefinedTable":      pgErr("42P01"),
		"Plain":               errors.New("something else"),
	}
	for name, err := range bugs {
		t.Run(name+"IsPlain", func(t *testing.T) {
			t.Parallel()
			got := interpretError(err)
			require.False(t, broker.IsUnavailable(got), "%v", got)
			require.ErrorIs(t, got, err)
		})
	}
	require.NoError(t, interpretError(nil))
}
