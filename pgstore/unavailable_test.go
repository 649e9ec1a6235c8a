package pgstore_test

import (
	"context"
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/internal/testkit/pgtest"
	"github.com/keybroker/keybroker/pgstore"
)

// closedPortURL returns a URL on a local port nothing listens on.
func closedPortURL(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	port := l.Addr().(*net.TCPAddr).Port
	require.NoError(t, l.Close())
	return "postgres://postgres@127.0.0.1:" + strconv.Itoa(port) + "/postgres?sslmode=disable&connect_timeout=2"
}

func TestStoreUnreachableIsUnavailable(t *testing.T) {
	t.Parallel()
	pool, err := pgstore.OpenPool(t.Context(), closedPortURL(t))
	require.NoError(t, err, "OpenPool must not need the server up")
	t.Cleanup(pool.Close)
	store, err := pgstore.New(t.Context(), pgstore.Config{Pool: pool})
	require.NoError(t, err)

	called := false
	err = store.InUserTx(t.Context(), "user-a", func(broker.Tx) error {
		called = true
		return nil
	})
	require.True(t, broker.IsUnavailable(err), "want *broker.UnavailableError, got %v", err)
	require.False(t, called)
	require.True(t, broker.IsUnavailable(store.Ping(t.Context())))
}

func TestStoreDeadlineIsUnavailable(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.migrate(t, "keybroker")
	store := e.store(t, "keybroker")
	// A held row lock makes the deadline certain to pass mid-query.
	lockHolder, err := e.admin.Begin(t.Context())
	require.NoError(t, err)
	defer func() { _ = lockHolder.Rollback(context.WithoutCancel(t.Context())) }()
	_, err = lockHolder.Exec(t.Context(), "INSERT INTO keybroker.encryption_vaults (user_id, wrapped_mk, wrap_iv) VALUES ('user-b', 'd3JhcA==', 'aXY=')")
	require.NoError(t, err)

	ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancel()
	err = store.InUserTx(ctx, "user-b", func(tx broker.Tx) error {
		_, err := tx.VaultInsert(ctx, &broker.Vault{UserID: "user-b", WrappedMK: ptr("eA=="), WrapIV: ptr("eA=="), FormatVersion: 1, KEKID: "k", RecoveryFormatVersion: 1})
		return err
	})
	require.True(t, broker.IsUnavailable(err), "want *broker.UnavailableError, got %v", err)
	require.ErrorIs(t, err, context.DeadlineExceeded)
}

func TestTerminatedConnectionIsUnavailable(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.migrate(t, "keybroker")
	// One connection, so the backend pid read before the transaction is
	// the one the transaction runs on.
	cfg, err := pgxpool.ParseConfig(e.runtime.URL)
	require.NoError(t, err)
	cfg.MaxConns = 1
	pool, err := pgxpool.NewWithConfig(t.Context(), cfg)
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	var pid int32
	require.NoError(t, pool.QueryRow(t.Context(), "SELECT pg_backend_pid()").Scan(&pid))

	store, err := pgstore.New(t.Context(), pgstore.Config{Pool: pool, Schema: "keybroker"})
	require.NoError(t, err)
	err = store.InUserTx(t.Context(), "user-a", func(tx broker.Tx) error {
		// An operator (or a failover) kills the session mid-transaction.
		var terminated bool
		require.NoError(t, e.admin.QueryRow(t.Context(), "SELECT pg_terminate_backend($1, 5000)", pid).Scan(&terminated))
		require.True(t, terminated)
		_, err := tx.VaultGet(t.Context(), false)
		return err
	})
	require.True(t, broker.IsUnavailable(err), "want *broker.UnavailableError, got %v", err)

	// The pool replaces the dead connection: the next transaction works.
	err = store.InUserTx(t.Context(), "user-a", func(tx broker.Tx) error {
		_, err := tx.VaultGet(t.Context(), false)
		return err
	})
	require.ErrorIs(t, err, broker.ErrNotFound)
	pgtest.Exec(t, e.admin, "SELECT 1") // the server itself is fine
}
