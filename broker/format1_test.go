package broker_test

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/internal/testkit/pgtest"
	"github.com/keybroker/keybroker/pgstore"
)

// closingStore is the real PostgreSQL store that runs a hook once, right
// after its first VaultFetch (the read is done, the key not yet opened),
// and counts how often the format-1 state is read.
type closingStore struct {
	*pgstore.Store
	once        sync.Once
	afterFetch  func()
	stateReads  atomic.Int64
	fetchesSeen atomic.Int64
}

func (c *closingStore) VaultFetch(ctx context.Context, b *broker.FetchBatch) error {
	err := c.Store.VaultFetch(ctx, b)
	c.fetchesSeen.Add(int64(len(b.Fetches)))
	c.once.Do(c.afterFetch)
	return err
}

func (c *closingStore) Format1State(ctx context.Context) (broker.Format1State, error) {
	c.stateReads.Add(1)
	return c.Store.Format1State(ctx)
}

// TestFormat1ClosingUnderAFetch: a fetch reads a user's format-1 row, and
// before it opens it the re-wrap job upgrades that row — the last one —
// and closes format 1. The fetch must not fail: it reads the row again
// and opens the format-2 wrap. Fetches of format-2 rows never ask whether
// format 1 is closed.
func TestFormat1ClosingUnderAFetch(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	e := newFetchEnv(t)
	pgtest.ReopenFormat1(t, e.pool, "keybroker") // the schema held the original service's rows
	mk := make([]byte, 32)
	rand.Read(mk)
	wrapped, err := e.kek.Wrap(ctx, mk, nil)
	require.NoError(t, err)
	pgtest.Exec(t, e.pool, `INSERT INTO keybroker.encryption_vaults (user_id, wrapped_mk, wrap_iv, format_version, kek_id) VALUES ('legacy', $1, $2, 1, 'k1')`,
		base64.StdEncoding.EncodeToString(wrapped[12:]), base64.StdEncoding.EncodeToString(wrapped[:12]))
	ring, err := broker.NewKeyring(e.kek)
	require.NoError(t, err)

	var closed *broker.RewrapResult
	store := &closingStore{Store: e.store}
	store.afterFetch = func() {
		job, err := broker.NewRewrapJob(broker.RewrapConfig{Store: e.store, Keyring: ring})
		require.NoError(t, err)
		closed, err = job.Run(ctx)
		require.NoError(t, err)
	}
	svc, err := broker.New(ctx, broker.Config{Store: store, Keyring: ring})
	require.NoError(t, err)

	res, err := svc.Key(ctx, "legacy", broker.RequestMeta{})
	require.NoError(t, err)
	require.NotNil(t, closed)
	require.True(t, closed.Format1ClosedNow, "the job closed format 1 between the read and the open")
	require.EqualValues(t, 1, closed.Done)
	require.Equal(t, mk, res.MasterKey)
	require.Equal(t, broker.FormatBound, res.FormatVersion, "the row as stored now")
	require.Equal(t, []string{"fetch 200 ", "kek_rewrap 200 k1/1>k1/2"}, e.audits(t, "legacy"), "the fetch stands: no failed_fetch")

	reads := store.stateReads.Load()
	require.Positive(t, reads)
	for range 5 {
		res, err := svc.Key(ctx, "legacy", broker.RequestMeta{})
		require.NoError(t, err)
		require.Equal(t, mk, res.MasterKey)
	}
	require.Equal(t, reads, store.stateReads.Load(), "a format-2 fetch does not ask about format 1")
	require.EqualValues(t, 6, store.fetchesSeen.Load(), "every fetch took the one-round-trip path")
}
