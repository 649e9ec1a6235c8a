package broker_test

import (
	"context"
	"crypto/rand"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/internal/pgtest"
	"github.com/keybroker/keybroker/kekproviders/localkek"
	"github.com/keybroker/keybroker/migrations"
	"github.com/keybroker/keybroker/pgstore"
)

// countingStore is the real PostgreSQL store with a count of its group
// commits.
type countingStore struct {
	*pgstore.Store
	appends, rows atomic.Int64
}

func (c *countingStore) AuditAppend(ctx context.Context, entries []*broker.AuditEntry) error {
	c.appends.Add(1)
	c.rows.Add(int64(len(entries)))
	return c.Store.AuditAppend(ctx, entries)
}

// TestConcurrentFetchesShareAuditCommits: every fetch gets its own durable
// audit row, and under concurrency the rows share commits.
func TestConcurrentFetchesShareAuditCommits(t *testing.T) {
	ctx := context.Background()
	dbURL := pgtest.NewDatabase(t)
	pool := pgtest.NewPool(t, dbURL)
	_, err := migrations.Apply(ctx, pool, "keybroker")
	require.NoError(t, err)
	pg, err := pgstore.New(ctx, pgstore.Config{Pool: pool, Schema: "keybroker"})
	require.NoError(t, err)
	store := &countingStore{Store: pg}

	key := make([]byte, 32)
	rand.Read(key)
	kek, err := localkek.New("k1", key, false)
	require.NoError(t, err)
	ring, err := broker.NewKeyring(kek)
	require.NoError(t, err)
	svc, err := broker.New(ctx, broker.Config{Store: store, Keyring: ring, AuditCommitters: 1})
	require.NoError(t, err)

	const users, fetchesPerUser = 8, 40
	keys := map[string][]byte{}
	for u := range users {
		res, err := svc.Init(ctx, fmt.Sprintf("user-%d", u), broker.RequestMeta{})
		require.NoError(t, err)
		keys[fmt.Sprintf("user-%d", u)] = res.MasterKey
	}

	var wg sync.WaitGroup
	errs := make(chan error, users*fetchesPerUser)
	for u := range users {
		user := fmt.Sprintf("user-%d", u)
		for range fetchesPerUser {
			wg.Add(1)
			go func() {
				defer wg.Done()
				res, err := svc.Key(ctx, user, broker.RequestMeta{IPAddress: "127.0.0.1"})
				if err == nil && string(res.MasterKey) != string(keys[user]) {
					err = fmt.Errorf("%s got another key", user)
				}
				errs <- err
			}()
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	require.EqualValues(t, users*fetchesPerUser, store.rows.Load(), "one audit row per fetch")
	require.Less(t, store.appends.Load(), int64(users*fetchesPerUser), "concurrent fetches share commits")

	var fetchRows int
	require.NoError(t, pool.QueryRow(ctx, "SELECT count(*) FROM "+pgx.Identifier{"keybroker", "encryption_vault_audit"}.Sanitize()+" WHERE action = 'fetch'").Scan(&fetchRows))
	require.Equal(t, users*fetchesPerUser, fetchRows, "every row is durable")

	// A missing vault is audited on the same path.
	_, err = svc.Key(ctx, "nobody", broker.RequestMeta{})
	require.ErrorIs(t, err, broker.ErrNotFound)
	var failed int
	require.NoError(t, pool.QueryRow(ctx, "SELECT count(*) FROM keybroker.encryption_vault_audit WHERE user_id = 'nobody' AND action = 'failed_fetch' AND status = 404").Scan(&failed))
	require.Equal(t, 1, failed)
}
