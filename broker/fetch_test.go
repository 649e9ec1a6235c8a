package broker_test

import (
	"context"
	"crypto/rand"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/internal/testkit/pgtest"
	"github.com/keybroker/keybroker/kekproviders/localkek"
	"github.com/keybroker/keybroker/migrations"
	"github.com/keybroker/keybroker/pgstore"
)

// countingStore is the real PostgreSQL store with a count of its group
// commits.
type countingStore struct {
	*pgstore.Store
	commits, fetches atomic.Int64
}

func (c *countingStore) VaultFetch(ctx context.Context, b *broker.FetchBatch) error {
	c.commits.Add(1)
	c.fetches.Add(int64(len(b.Fetches)))
	return c.Store.VaultFetch(ctx, b)
}

// TestConcurrentFetchesShareCommits: every fetch gets its own durable
// audit row, and under concurrency the fetches share round trips and
// commits.
func TestConcurrentFetchesShareCommits(t *testing.T) {
	ctx := context.Background()
	e := newFetchEnv(t)
	pool := e.pool
	store := &countingStore{Store: e.store}
	ring, err := broker.NewKeyring(e.kek)
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
	require.EqualValues(t, users*fetchesPerUser, store.fetches.Load(), "every fetch takes the one-round-trip path")
	require.Less(t, store.commits.Load(), int64(users*fetchesPerUser), "concurrent fetches share commits")

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

// fetchEnv is a Service on the real PostgreSQL store with a local KEK.
type fetchEnv struct {
	pool  *pgxpool.Pool
	store *pgstore.Store
	kek   *localkek.KEK
}

func newFetchEnv(t *testing.T) *fetchEnv {
	t.Helper()
	ctx := context.Background()
	dbURL := pgtest.NewDatabase(t)
	pool := pgtest.NewPool(t, dbURL)
	_, err := migrations.Apply(ctx, pool, "keybroker")
	require.NoError(t, err)
	pg, err := pgstore.New(ctx, pgstore.Config{Pool: pool, Schema: "keybroker"})
	require.NoError(t, err)
	key := make([]byte, 32)
	rand.Read(key)
	kek, err := localkek.New("k1", key, false)
	require.NoError(t, err)
	return &fetchEnv{pool: pool, store: pg, kek: kek}
}

// audits lists userID's audit rows as "action status context", oldest
// first.
func (e *fetchEnv) audits(t *testing.T, userID string) []string {
	t.Helper()
	rows, err := e.pool.Query(context.Background(), `SELECT action || ' ' || status || ' ' || coalesce(context, '')
FROM keybroker.encryption_vault_audit WHERE user_id = $1 ORDER BY created_at, id`, userID)
	require.NoError(t, err)
	out, err := pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(t, err)
	return out
}

// gatedStore holds the first VaultFetch until released (closing entered
// as it starts waiting), and records the size and outcome of every call.
type gatedStore struct {
	*pgstore.Store
	entered chan struct{}
	release chan struct{}
	once    sync.Once
	mu      sync.Mutex
	calls   []string
}

func (g *gatedStore) VaultFetch(ctx context.Context, b *broker.FetchBatch) error {
	g.once.Do(func() {
		close(g.entered)
		<-g.release
	})
	err := g.Store.VaultFetch(ctx, b)
	g.mu.Lock()
	g.calls = append(g.calls, fmt.Sprintf("%d fetches: ok=%t", len(b.Fetches), err == nil))
	g.mu.Unlock()
	return err
}

// TestFetchFailingABatchFailsAlone: a fetch that fails the transaction of
// its batch (here a user id PostgreSQL refuses as text) does not take the
// others down: the store names it, it fails alone, and the others run
// again as one batch — each read and recorded once, with one store call
// more per failing fetch, never one call per fetch.
func TestFetchFailingABatchFailsAlone(t *testing.T) {
	e := newFetchEnv(t)
	ctx := context.Background()
	store := &gatedStore{Store: e.store, entered: make(chan struct{}), release: make(chan struct{})}
	ring, err := broker.NewKeyring(e.kek)
	require.NoError(t, err)
	var mu sync.Mutex
	var retries []bool
	svc, err := broker.New(ctx, broker.Config{Store: store, Keyring: ring, AuditCommitters: 1, OnGroupCommit: func(c broker.GroupCommit) {
		mu.Lock()
		retries = append(retries, c.Retry)
		mu.Unlock()
	}})
	require.NoError(t, err)
	const good = 5
	bad := []string{"bad\x00one", "bad\x00two"}
	keys := map[string][]byte{}
	for u := range good + 1 {
		res, err := svc.Init(ctx, fmt.Sprintf("user-%d", u), broker.RequestMeta{})
		require.NoError(t, err)
		keys[fmt.Sprintf("user-%d", u)] = res.MasterKey
	}

	// user-0's fetch holds the only commit slot; the next ones queue.
	type result struct {
		user string
		err  error
	}
	results := make(chan result, good+1+len(bad))
	fetch := func(user string) {
		res, err := svc.Key(ctx, user, broker.RequestMeta{})
		if err == nil && string(res.MasterKey) != string(keys[user]) {
			err = fmt.Errorf("%s got another key", user)
		}
		results <- result{user, err}
	}
	go fetch("user-0")
	select {
	case <-store.entered:
	case <-time.After(10 * time.Second):
		t.Fatal("user-0's fetch never reached the store")
	}
	for u := 1; u <= good; u++ {
		go fetch(fmt.Sprintf("user-%d", u))
	}
	for _, user := range bad {
		go fetch(user)
	}
	require.Eventually(t, func() bool { return svc.PendingFetches() == good+len(bad) }, 10*time.Second, time.Millisecond)
	close(store.release)

	for range good + 1 + len(bad) {
		r := <-results
		if strings.HasPrefix(r.user, "bad") {
			require.Error(t, r.err)
			require.False(t, broker.IsUnavailable(r.err), "its own error, not an outage")
			continue
		}
		require.NoError(t, r.err, r.user)
		require.Equal(t, []string{"init 201 created", "fetch 200 "}, e.audits(t, r.user), "%s: recorded once", r.user)
	}
	n := good + len(bad)
	require.Equal(t, []string{
		"1 fetches: ok=true",
		fmt.Sprintf("%d fetches: ok=false", n),
		fmt.Sprintf("%d fetches: ok=false", n-1),
		fmt.Sprintf("%d fetches: ok=true", n-2),
	}, store.calls, "each bad fetch is split off, then the good ones commit once")
	mu.Lock()
	defer mu.Unlock()
	require.Equal(t, []bool{false, false, true, true}, retries, "the observer sees the splits")
}

// remoteKEK is a KEK that does not say it unwraps locally, as a remote
// KMS in cache=off mode.
type remoteKEK struct{ broker.KEK }

// TestFetchRecordsWhatHappened: the audit trail of each fetch path says
// what happened — a local KEK is recorded in the read's commit, a remote
// one after its unwrap, and a local wrap that does not authenticate is
// recorded as the fetch and then as the failure that voids it.
func TestFetchRecordsWhatHappened(t *testing.T) {
	e := newFetchEnv(t)
	ctx := context.Background()
	remote := &remoteKEK{e.kek}
	remote2, err := localkek.New("k2", make32(), false)
	require.NoError(t, err)

	local, err := broker.NewKeyring(e.kek)
	require.NoError(t, err)
	svc, err := broker.New(ctx, broker.Config{Store: e.store, Keyring: local})
	require.NoError(t, err)
	_, err = svc.Init(ctx, "alice", broker.RequestMeta{})
	require.NoError(t, err)
	_, err = svc.Key(ctx, "alice", broker.RequestMeta{})
	require.NoError(t, err)
	require.Equal(t, []string{"init 201 created", "fetch 200 "}, e.audits(t, "alice"))

	// The same rows through a keyring whose KEK is remote: nothing is
	// recorded until the unwrap is done.
	viaRemote, err := broker.NewKeyring(remote)
	require.NoError(t, err)
	rsvc, err := broker.New(ctx, broker.Config{Store: e.store, Keyring: viaRemote})
	require.NoError(t, err)
	_, err = rsvc.Key(ctx, "alice", broker.RequestMeta{})
	require.NoError(t, err)
	require.Equal(t, []string{"init 201 created", "fetch 200 ", "fetch 200 "}, e.audits(t, "alice"))

	// A remote wrap that does not open: only its failure is recorded.
	wrongRemote, err := broker.NewKeyring(&remoteKEK{remote2}, remote)
	require.NoError(t, err)
	_, err = svc.Init(ctx, "bob", broker.RequestMeta{})
	require.NoError(t, err)
	relabel(t, e, "bob", "k2")
	wsvc, err := broker.New(ctx, broker.Config{Store: e.store, Keyring: wrongRemote})
	require.NoError(t, err)
	_, err = wsvc.Key(ctx, "bob", broker.RequestMeta{})
	require.ErrorIs(t, err, broker.ErrUnwrapFailed)
	require.Equal(t, []string{"init 201 created", "failed_fetch 500 unwrap-failed"}, e.audits(t, "bob"))

	// A local wrap that does not open: recorded as a fetch in the read's
	// commit, then as the failure, which names the fetch row it voids.
	_, err = svc.Init(ctx, "carol", broker.RequestMeta{})
	require.NoError(t, err)
	tamper(t, e, "carol")
	_, err = svc.Key(ctx, "carol", broker.RequestMeta{})
	require.ErrorIs(t, err, broker.ErrUnwrapFailed)
	carol := e.audits(t, "carol")
	require.Len(t, carol, 3)
	require.Equal(t, []string{"init 201 created", "fetch 200 "}, carol[:2])
	require.Regexp(t, `^failed_fetch 500 unwrap-failed;voids:\S+$`, carol[2])
	var voided int
	require.NoError(t, e.pool.QueryRow(ctx, `SELECT count(*) FROM keybroker.encryption_vault_audit
WHERE user_id = 'carol' AND action = 'fetch' AND id = split_part($1, ';voids:', 2)`, carol[2]).Scan(&voided))
	require.Equal(t, 1, voided, "the failure names the fetch row")

	// No vault, and zero-knowledge, are recorded in the read's commit.
	_, err = svc.Key(ctx, "nobody", broker.RequestMeta{})
	require.ErrorIs(t, err, broker.ErrNotFound)
	require.Equal(t, []string{"failed_fetch 404 not-initialised"}, e.audits(t, "nobody"))
}

func make32() []byte {
	key := make([]byte, 32)
	rand.Read(key)
	return key
}

// relabel sets userID's kek_id as the database owner would.
func relabel(t *testing.T, e *fetchEnv, userID, kekID string) {
	t.Helper()
	_, err := e.pool.Exec(context.Background(), `UPDATE keybroker.encryption_vaults SET kek_id = $2 WHERE user_id = $1`, userID, kekID)
	require.NoError(t, err)
}

// tamper flips a bit of userID's stored wrap.
func tamper(t *testing.T, e *fetchEnv, userID string) {
	t.Helper()
	_, err := e.pool.Exec(context.Background(), `UPDATE keybroker.encryption_vaults
SET wrapped_mk = translate(wrapped_mk, 'ABCDEFGHabcdefgh', 'BCDEFGHAbcdefgha') WHERE user_id = $1`, userID)
	require.NoError(t, err)
}
