package broker_test

import (
	"bytes"
	"context"
	"fmt"
	mrand "math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/internal/testkit/pgtest"
	"github.com/keybroker/keybroker/kek"
)

// The re-wrap job beside users, killers and other runners: it never clobbers a change, resumes after a kill, and runs once at a time.

// hookKEK is a real KEK that calls a hook before each Wrap, so a test can
// act at a precise point of the job: between its read and its write.
type hookKEK struct {
	broker.KEK
	beforeWrap func(ctx context.Context, userID string)
}

func (h *hookKEK) Wrap(ctx context.Context, pt []byte, b map[string]string) ([]byte, error) {
	if h.beforeWrap != nil {
		h.beforeWrap(ctx, b[kek.BindingUserID])
	}
	return h.KEK.Wrap(ctx, pt, b)
}

// TestRewrapNeverClobbersUserChanges has users rotate, switch to
// zero-knowledge and replace their recovery wrap while the job holds their
// row in memory, between its read and its write, and others fetch keys
// all along: the job must lose every race it should and no fetch may fail.
func TestRewrapNeverClobbersUserChanges(t *testing.T) {
	t.Parallel()
	e := newRewrapEnv(t)
	old := localKEK(t, "env-v1")
	keys := e.seed(t, old, "user", 120, broker.FormatBound)
	const rotator, zk, recoverer = "user-000007", "user-000033", "user-000061"
	pgtest.Exec(t, e.admin, `UPDATE keybroker.encryption_vaults SET recovery_wrapped_mk = $1, recovery_iv = $2 WHERE user_id = $3`,
		b64(48, 1), b64(12, 1), zk)

	hooked := &hookKEK{KEK: localKEK(t, "env-v2")}
	ring := keyring(t, hooked, old)
	svc := e.service(t, ring)
	var rotated []byte
	var once sync.Map
	hookErrs := make(chan error, 3)
	hooked.beforeWrap = func(ctx context.Context, user string) {
		if _, done := once.LoadOrStore(user, true); done {
			return // the user's own request wraps too
		}
		switch user {
		case rotator:
			res, err := svc.Rotate(ctx, user, broker.RequestMeta{})
			if err == nil {
				rotated = res.MasterKey
			}
			hookErrs <- err
		case zk:
			hookErrs <- svc.EnableZeroKnowledge(ctx, user, nil, broker.RequestMeta{})
		case recoverer:
			hookErrs <- svc.SetRecoveryWrap(ctx, user, bytes.Repeat([]byte{9}, 48), bytes.Repeat([]byte{9}, 12), nil, broker.RequestMeta{})
		}
	}

	// Fetchers run until the job ends; a bounded number of rounds each.
	done := make(chan struct{})
	var fetches, failures atomic.Int64
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for round := 0; round < 200; round++ {
				user := fmt.Sprintf("user-%06d", 80+(w*10+round)%40)
				res, err := svc.Key(context.Background(), user, broker.RequestMeta{})
				if err != nil || !bytes.Equal(res.MasterKey, keys[user]) {
					failures.Add(1)
				}
				fetches.Add(1)
				select {
				case <-done:
					return
				default:
				}
			}
		}()
	}
	res, err := e.job(t, ring, func(c *broker.RewrapConfig) { c.BatchSize = 10 }).Run(t.Context())
	close(done)
	wg.Wait()
	require.NoError(t, err)
	for range 3 {
		require.NoError(t, <-hookErrs, "the user's request during the job")
	}
	require.Zero(t, failures.Load(), "every fetch during the job returns the user's key")
	require.Positive(t, fetches.Load())
	require.EqualValues(t, 118, res.Done, "all but the rotated and the zero-knowledge row")
	require.EqualValues(t, 2, res.Skipped)

	rows := e.rows(t)
	require.Zero(t, e.rewrapAudits(t)[rotator])
	require.Zero(t, e.rewrapAudits(t)[zk])
	require.True(t, rows[zk].ZeroKnowledge)
	require.Nil(t, rows[zk].WrappedMK, "the job must not put a server wrap back on a zero-knowledge row")
	require.Equal(t, b64(48, 9), *rows[recoverer].RecoveryWrappedMK, "the user's new recovery wrap survives the re-wrap")
	require.Equal(t, "env-v2", rows[recoverer].KEKID)

	delete(keys, zk)
	keys[rotator] = rotated
	requireKeysOpen(t, e.service(t, keyring(t, hooked.KEK)), keys)
}

// TestRewrapResumesAfterKills kills the job again and again at random
// points — its context cancelled, or every connection of the role cut
// from an admin session — between and inside batches, then lets it
// finish: every row must open and be moved exactly once.
func TestRewrapResumesAfterKills(t *testing.T) {
	t.Parallel()
	e := newRewrapEnv(t)
	old := localKEK(t, "env-v1")
	keys := e.seed(t, old, "user", 500, broker.FormatBound)
	for user, mk := range e.seed(t, old, "legacy", 100, broker.FormatLegacy) {
		keys[user] = mk
	}
	seed := time.Now().UnixNano()
	t.Logf("random seed %d", seed)
	rng := mrand.New(mrand.NewPCG(uint64(seed), 0))

	hooked := &hookKEK{KEK: localKEK(t, "env-v2")}
	ring := keyring(t, hooked, old)
	job := e.job(t, ring, func(c *broker.RewrapConfig) { c.BatchSize = 20 })

	// Each attempt is killed at a random wrap of its first three batches;
	// killed inside a batch, that batch is lost and redone.
	const kills = 25
	var killed int
	terminateErrs := make(chan error, kills)
	for attempt := 0; attempt < kills; attempt++ {
		ctx, cancel := context.WithCancel(t.Context())
		var wraps atomic.Int64
		killAt := int64(1 + rng.IntN(45))
		terminate := rng.IntN(2) == 0
		hooked.beforeWrap = func(context.Context, string) {
			if wraps.Add(1) != killAt {
				return
			}
			if terminate {
				terminateErrs <- e.terminate()
			} else {
				cancel()
			}
		}
		_, err := job.Run(ctx)
		cancel()
		if err != nil {
			killed++
		}
	}
	close(terminateErrs)
	for err := range terminateErrs {
		require.NoError(t, err)
	}
	hooked.beforeWrap = nil
	require.GreaterOrEqual(t, killed, 5, "attempts were killed mid-run")

	// Left alone, it finishes. The first runs may still draw pooled
	// connections the last kill cut (a store outage, as after a failover)
	// until the pool has replaced them all.
	var res *broker.RewrapResult
	var err error
	for range 10 {
		if res, err = job.Run(t.Context()); !broker.IsUnavailable(err) {
			break
		}
	}
	require.NoError(t, err, "the job finishes once left alone")
	require.True(t, res.Finished)
	require.Equal(t, res.Total, res.Done, "the last run moves what the killed ones left")
	e.requireMoved(t, keys, "env-v2")
	requireKeysOpen(t, e.service(t, keyring(t, hooked.KEK)), keys)
}

// TestRewrapOneRunner runs two jobs on one database, as two replicas
// would: while one holds the lock the other is refused, and when the
// holder's connection dies mid-run the other takes over and finishes.
func TestRewrapOneRunner(t *testing.T) {
	t.Parallel()
	e := newRewrapEnv(t)
	old := localKEK(t, "env-v1")
	keys := e.seed(t, old, "user", 200, broker.FormatBound)
	ring := keyring(t, localKEK(t, "env-v2"), old)

	replicaB := e.job(t, ring, func(c *broker.RewrapConfig) { c.Runner = "replica-b" })
	var batches int
	var busyErr error
	var stateDuring *broker.RewrapState
	replicaA := e.job(t, ring, func(c *broker.RewrapConfig) {
		c.Runner = "replica-a"
		c.Progress = func(p broker.RewrapProgress) {
			if p.Done == 0 {
				return
			}
			batches++
			switch batches {
			case 1:
				_, busyErr = replicaB.Run(t.Context())
				var err error
				stateDuring, err = e.store.RewrapState(t.Context())
				require.NoError(t, err)
			case 3:
				// Kill only the lock's connection, as a crashed replica's.
				pgtest.Exec(t, e.admin, `SELECT pg_terminate_backend(pid, 5000) FROM pg_locks
WHERE locktype = 'advisory' AND granted AND pid <> pg_backend_pid()
  AND database = (SELECT oid FROM pg_database WHERE datname = current_database())`)
			}
		}
	})
	_, err := replicaA.Run(t.Context())
	require.ErrorIs(t, err, broker.ErrRewrapLockLost)
	require.ErrorIs(t, busyErr, broker.ErrRewrapBusy)
	require.True(t, stateDuring.Running)
	require.Equal(t, "replica-a", stateDuring.Runner)
	require.EqualValues(t, 200, stateDuring.Total)
	moved := replicaA.Progress().Done
	require.Less(t, moved, int64(200))

	res, err := replicaB.Run(t.Context())
	require.NoError(t, err)
	require.Equal(t, int64(200)-moved, res.Done, "B moves exactly what A left")
	e.requireMoved(t, keys, "env-v2")
	state, err := e.store.RewrapState(t.Context())
	require.NoError(t, err)
	require.False(t, state.Running)
	require.Equal(t, "replica-b", state.Runner)
}

// TestRewrapTwoRunnersAtOnce starts two runners together: whatever the
// interleaving, one is refused or finds nothing, and each row moves once.
func TestRewrapTwoRunnersAtOnce(t *testing.T) {
	t.Parallel()
	e := newRewrapEnv(t)
	old := localKEK(t, "env-v1")
	keys := e.seed(t, old, "user", 200, broker.FormatBound)
	ring := keyring(t, localKEK(t, "env-v2"), old)
	results := make([]*broker.RewrapResult, 2)
	errs := make([]error, 2)
	var wg sync.WaitGroup
	for i := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i], errs[i] = e.job(t, ring).Run(context.Background())
		}()
	}
	wg.Wait()
	var done int64
	for i := range 2 {
		if errs[i] != nil {
			require.ErrorIs(t, errs[i], broker.ErrRewrapBusy)
			continue
		}
		done += results[i].Done
	}
	require.EqualValues(t, 200, done)
	e.requireMoved(t, keys, "env-v2")
}
