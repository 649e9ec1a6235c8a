package sqlitestore_test

import (
	"crypto/rand"
	"fmt"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/kekproviders/localkek"
	"github.com/keybroker/keybroker/sqlitestore"
)

func newService(t *testing.T, store broker.Store) *broker.Service {
	t.Helper()
	key := make([]byte, 32)
	_, _ = rand.Read(key)
	kek, err := localkek.New("env-v1", key, false)
	require.NoError(t, err)
	ring, err := broker.NewKeyring(kek)
	require.NoError(t, err)
	svc, err := broker.New(t.Context(), broker.Config{Store: store, Keyring: ring})
	require.NoError(t, err)
	return svc
}

// TestConcurrentInitOneKey: a login storm's first requests all ask to
// init the same user at once. One key is minted, everyone gets it.
func TestConcurrentInitOneKey(t *testing.T) {
	t.Parallel()
	const racers = 40
	store := openStore(t, t.TempDir())
	svc := newService(t, store)

	keys := make([][]byte, racers)
	errs := make([]error, racers)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range racers {
		wg.Go(func() {
			<-start
			res, err := svc.Init(t.Context(), "alice", broker.RequestMeta{})
			errs[i] = err
			if err == nil {
				keys[i] = res.MasterKey
			}
		})
	}
	close(start)
	wg.Wait()

	for i := range racers {
		require.NoError(t, errs[i], "racer %d", i)
		require.Len(t, keys[i], broker.MasterKeySize)
		require.Equal(t, keys[0], keys[i], "racer %d got another key", i)
	}
	raw := rawDB(t, store.Path())
	var rows, created, existing int
	require.NoError(t, raw.QueryRow(`SELECT count(*) FROM encryption_vaults WHERE user_id = 'alice'`).Scan(&rows))
	require.Equal(t, 1, rows)
	require.NoError(t, raw.QueryRow(`SELECT count(*) FROM encryption_vault_audit WHERE user_id = 'alice' AND action = 'init' AND status = 201`).Scan(&created))
	require.NoError(t, raw.QueryRow(`SELECT count(*) FROM encryption_vault_audit WHERE user_id = 'alice' AND action = 'init' AND status = 200`).Scan(&existing))
	require.Equal(t, 1, created, "exactly one init created the vault")
	require.Equal(t, racers-1, existing, "every other init is audited as already-exists")
}

// TestManyUsersTwoStores: many users at once through two stores on the
// same directory, as two processes would be. Within a store transactions
// queue; across stores SQLite's busy timeout makes them wait. Nobody sees
// SQLITE_BUSY.
func TestManyUsersTwoStores(t *testing.T) {
	t.Parallel()
	const users, fetches = 30, 3
	dir := t.TempDir()
	stores := []*sqlitestore.Store{openStore(t, dir), openStore(t, dir)}
	svcs := []*broker.Service{newService(t, stores[0]), newService(t, stores[1])}

	errs := make(chan error, users*(fetches+1))
	start := make(chan struct{})
	var wg sync.WaitGroup
	for u := range users {
		wg.Go(func() {
			// Each user lives behind one KEK, so one service per user.
			svc := svcs[u%2]
			user := fmt.Sprintf("user-%02d", u)
			<-start
			first, err := svc.Init(t.Context(), user, broker.RequestMeta{})
			errs <- err
			if err != nil {
				return
			}
			for range fetches {
				res, err := svc.Key(t.Context(), user, broker.RequestMeta{})
				if err == nil && string(res.MasterKey) != string(first.MasterKey) {
					err = fmt.Errorf("%s: key changed between fetches", user)
				}
				errs <- err
			}
		})
	}
	close(start)
	wg.Wait()
	close(errs)
	n := 0
	for err := range errs {
		require.NoError(t, err)
		n++
	}
	require.Equal(t, users*(fetches+1), n)

	raw := rawDB(t, stores[0].Path())
	var vaults, audits int
	require.NoError(t, raw.QueryRow(`SELECT count(*) FROM encryption_vaults`).Scan(&vaults))
	require.NoError(t, raw.QueryRow(`SELECT count(*) FROM encryption_vault_audit`).Scan(&audits))
	require.Equal(t, users, vaults)
	require.Equal(t, users*(fetches+1), audits, "every request's audit row is durable")
}
