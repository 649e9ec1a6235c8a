package sqlitestore_test

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/sqlitestore"
)

func insertVault(t *testing.T, s *sqlitestore.Store, user string) {
	t.Helper()
	require.NoError(t, s.InUserTx(t.Context(), user, func(tx broker.Tx) error {
		_, err := tx.VaultInsert(t.Context(), &broker.Vault{UserID: user, WrappedMK: ptr("d3JhcA=="), WrapIV: ptr(""),
			FormatVersion: broker.FormatBound, KEKID: "k", CreatedAt: time.Now(), RecoveryFormatVersion: 1})
		return err
	}))
}

// TestVaultReadDoesNotWaitForWriters: the hot path's read runs while
// another process holds the write lock (WAL), where a transaction would
// wait for it.
func TestVaultReadDoesNotWaitForWriters(t *testing.T) {
	t.Parallel()
	s, err := sqlitestore.Open(t.Context(), sqlitestore.Config{Dir: t.TempDir(), BusyTimeout: 20 * time.Millisecond})
	require.NoError(t, err)
	t.Cleanup(func() { _ = s.Close() })
	insertVault(t, s, "alice")

	holder, err := rawDB(t, s.Path()).Conn(t.Context())
	require.NoError(t, err)
	defer holder.Close()
	_, err = holder.ExecContext(t.Context(), `BEGIN IMMEDIATE`)
	require.NoError(t, err)
	_, err = holder.ExecContext(t.Context(), `UPDATE encryption_vaults SET kek_id = 'uncommitted'`)
	require.NoError(t, err)

	v, err := s.VaultRead(t.Context(), "alice")
	require.NoError(t, err)
	require.Equal(t, "k", v.KEKID, "the read sees the last commit, not the writer's work")
	require.True(t, broker.IsUnavailable(s.AuditAppend(t.Context(), []*broker.AuditEntry{
		{ID: "a1", UserID: "alice", Action: broker.ActionFetch, Status: 200, CreatedAt: time.Now()},
	})), "a write does wait, and gives up after the busy timeout")
	_, err = holder.ExecContext(t.Context(), `ROLLBACK`)
	require.NoError(t, err)
}

// TestFetchStormThroughService: many concurrent fetches through the
// domain's group commit; every fetch returns the key and has its row.
func TestFetchStormThroughService(t *testing.T) {
	t.Parallel()
	const users, fetches = 10, 20
	s := openStore(t, t.TempDir())
	svc := newService(t, s)
	keys := map[string][]byte{}
	for u := range users {
		user := fmt.Sprintf("user-%d", u)
		res, err := svc.Init(t.Context(), user, broker.RequestMeta{})
		require.NoError(t, err)
		keys[user] = res.MasterKey
	}
	errs := make(chan error, users*fetches)
	var wg sync.WaitGroup
	for u := range users {
		user := fmt.Sprintf("user-%d", u)
		for range fetches {
			wg.Go(func() {
				res, err := svc.Key(t.Context(), user, broker.RequestMeta{IPAddress: "203.0.113.9"})
				if err == nil && string(res.MasterKey) != string(keys[user]) {
					err = fmt.Errorf("%s got another key", user)
				}
				errs <- err
			})
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	var n int
	require.NoError(t, rawDB(t, s.Path()).QueryRow(`SELECT count(*) FROM encryption_vault_audit WHERE action = 'fetch' AND ip_address = '203.0.113.9'`).Scan(&n))
	require.Equal(t, users*fetches, n, "every fetch's audit row is durable before it returns")
}

func TestClosedStoreFastPathIsUnavailable(t *testing.T) {
	t.Parallel()
	s, err := sqlitestore.Open(t.Context(), sqlitestore.Config{Dir: t.TempDir()})
	require.NoError(t, err)
	require.NoError(t, s.Close())
	_, err = s.VaultRead(t.Context(), "alice")
	require.ErrorIs(t, err, sqlitestore.ErrClosed)
	require.True(t, broker.IsUnavailable(err))
	err = s.AuditAppend(t.Context(), []*broker.AuditEntry{{ID: "x", UserID: "alice", Action: broker.ActionFetch, Status: 200}})
	require.ErrorIs(t, err, sqlitestore.ErrClosed)
	require.True(t, broker.IsUnavailable(err))
}
