package broker_test

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/internal/testkit/apitest"
	"github.com/keybroker/keybroker/kek"
	"github.com/keybroker/keybroker/kekproviders/localkek"
	"github.com/keybroker/keybroker/sqlitestore"
)

// The runtime's loops are stepped by the test (RuntimeConfig.Wait): each
// pause is announced with its length and ends when the test says so, so
// no test sleeps or waits for a timer.

// stepper is a RuntimeConfig.Wait whose pauses the test ends. Pauses are
// told apart by their length: each loop of a test pauses for its own.
type stepper struct {
	mu     sync.Mutex
	queues map[time.Duration]chan pause
}

type pause struct {
	release chan bool // true: the pause is over; false: as if ctx ended
}

func newStepper() *stepper { return &stepper{queues: map[time.Duration]chan pause{}} }

func (s *stepper) queue(d time.Duration) chan pause {
	s.mu.Lock()
	defer s.mu.Unlock()
	q, ok := s.queues[d]
	if !ok {
		q = make(chan pause)
		s.queues[d] = q
	}
	return q
}

func (s *stepper) wait(ctx context.Context, d time.Duration) bool {
	p := pause{release: make(chan bool)}
	select {
	case s.queue(d) <- p:
	case <-ctx.Done():
		return false
	}
	select {
	case ok := <-p.release:
		return ok
	case <-ctx.Done():
		return false
	}
}

// next waits for a loop to pause for d, and ends that pause.
func (s *stepper) next(t *testing.T, d time.Duration) {
	t.Helper()
	select {
	case p := <-s.queue(d):
		p.release <- true
	case <-time.After(10 * time.Second):
		t.Fatalf("no loop paused for %s", d)
	}
}

// reached waits until a loop pauses for d, and leaves it paused.
func (s *stepper) reached(t *testing.T, d time.Duration) pause {
	t.Helper()
	select {
	case p := <-s.queue(d):
		return p
	case <-time.After(10 * time.Second):
		t.Fatalf("no loop paused for %s", d)
		return pause{}
	}
}

func randomLocal(t *testing.T, id string) *localkek.KEK {
	t.Helper()
	key := make([]byte, localkek.KeySize)
	rand.Read(key)
	k, err := localkek.New(id, key, false)
	require.NoError(t, err)
	return k
}

func openSQLite(t *testing.T) *sqlitestore.Store {
	t.Helper()
	store, err := sqlitestore.Open(t.Context(), sqlitestore.Config{Dir: t.TempDir()})
	require.NoError(t, err)
	t.Cleanup(func() { _ = store.Close() })
	return store
}

// initUsers gives n users a vault wrapped by kek.
func initUsers(t *testing.T, store broker.Store, k broker.KEK, n int) {
	t.Helper()
	ring, err := broker.NewKeyring(k)
	require.NoError(t, err)
	svc, err := broker.New(t.Context(), broker.Config{Store: store, Keyring: ring})
	require.NoError(t, err)
	for i := range n {
		_, err := svc.Init(t.Context(), fmt.Sprintf("user-%d", i), broker.RequestMeta{})
		require.NoError(t, err)
	}
}

func testLogger(buf *apitest.LogBuffer) *slog.Logger {
	return slog.New(slog.NewTextHandler(buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// refusingKEK wraps but cannot unwrap, like a KMS key whose decrypt
// grant is missing.
type refusingKEK struct{ broker.KEK }

func (refusingKEK) Unwrap(context.Context, []byte, map[string]string) ([]byte, error) {
	return nil, kek.Denied(errors.New("AccessDeniedException: not authorized to perform kms:Decrypt"))
}

// downKEK is a KMS key behind an outage until up is set.
type downKEK struct {
	broker.KEK
	up atomic.Bool
}

func (k *downKEK) Wrap(ctx context.Context, plaintext []byte, b map[string]string) ([]byte, error) {
	if !k.up.Load() {
		return nil, kek.Unavailable(errors.New("dial tcp: connection refused"))
	}
	return k.KEK.Wrap(ctx, plaintext, b)
}

func isClosed(c <-chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

func TestRuntimeStartUpKEKCheck(t *testing.T) {
	t.Parallel()
	good, other := randomLocal(t, "local-1"), randomLocal(t, "local-0")
	newRuntime := func(t *testing.T, ring *broker.Keyring, logs *apitest.LogBuffer, s *stepper) (*broker.Runtime, error) {
		cfg := broker.RuntimeConfig{Store: openSQLite(t), Keyring: ring, Logger: testLogger(logs)}
		if s != nil {
			cfg.Wait = s.wait
		}
		rt, err := broker.NewRuntime(t.Context(), cfg)
		if rt != nil {
			t.Cleanup(rt.Close)
		}
		return rt, err
	}

	t.Run("Passes", func(t *testing.T) {
		var logs apitest.LogBuffer
		ring, err := broker.NewKeyring(good)
		require.NoError(t, err)
		rt, err := newRuntime(t, ring, &logs, nil)
		require.NoError(t, err)
		require.True(t, isClosed(rt.KEKChecked()))
		require.Contains(t, logs.String(), "KEK check passed")
	})

	t.Run("OnlyTheActiveKEKCounts", func(t *testing.T) {
		// A decrypt-only KEK that fails does not stop the start (the
		// re-wrap job reports it).
		ring, err := broker.NewKeyring(good, refusingKEK{other})
		require.NoError(t, err)
		rt, err := newRuntime(t, ring, &apitest.LogBuffer{}, nil)
		require.NoError(t, err)
		require.True(t, isClosed(rt.KEKChecked()))
	})

	t.Run("MisconfiguredKEKRefusesTheStart", func(t *testing.T) {
		ring, err := broker.NewKeyring(refusingKEK{other}, good)
		require.NoError(t, err)
		_, err = newRuntime(t, ring, &apitest.LogBuffer{}, nil)
		var checkErr *broker.KEKCheckError
		require.ErrorAs(t, err, &checkErr)
		require.Equal(t, "denied", checkErr.Class)
		require.ErrorContains(t, err, `the active KEK "local-0" cannot wrap and unwrap`)
		require.ErrorContains(t, err, "kms:Decrypt")
	})

	t.Run("UnavailableKEKIsRetriedWithBackoffUntilItAnswers", func(t *testing.T) {
		kms := &downKEK{KEK: other}
		ring, err := broker.NewKeyring(kms)
		require.NoError(t, err)
		var logs apitest.LogBuffer
		s := newStepper()
		rt, err := newRuntime(t, ring, &logs, s)
		require.NoError(t, err, "an outage does not stop the start")
		require.False(t, isClosed(rt.KEKChecked()))
		require.Contains(t, logs.String(), "KEK unavailable at start")
		rt.Start(t.Context())
		// 1s, then doubling, capped at 30s.
		for _, d := range []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second, 16 * time.Second, 30 * time.Second} {
			s.next(t, d)
		}
		last := s.reached(t, 30*time.Second)
		require.False(t, isClosed(rt.KEKChecked()))
		require.Contains(t, logs.String(), "KEK check failed; retrying")
		kms.up.Store(true)
		last.release <- true
		select {
		case <-rt.KEKChecked():
		case <-time.After(10 * time.Second):
			t.Fatalf("the KEK check did not pass after the KEK came back\n%s", logs.String())
		}
	})
}

// TestRuntimeRefusesARetiredKEKWithRows: rows under a KEK the keyring no
// longer has would not open; the start is refused with their count.
func TestRuntimeRefusesARetiredKEKWithRows(t *testing.T) {
	t.Parallel()
	store := openSQLite(t)
	old, next := randomLocal(t, "old"), randomLocal(t, "next")
	initUsers(t, store, old, 3)
	ring, err := broker.NewKeyring(next)
	require.NoError(t, err)
	_, err = broker.NewRuntime(t.Context(), broker.RuntimeConfig{Store: store, Keyring: ring, Logger: slog.New(slog.DiscardHandler)})
	var retired *broker.RetiredKEKError
	require.ErrorAs(t, err, &retired)
	require.Equal(t, map[string]int64{"old": 3}, retired.Rows)

	ring, err = broker.NewKeyring(next, old)
	require.NoError(t, err)
	rt, err := broker.NewRuntime(t.Context(), broker.RuntimeConfig{Store: store, Keyring: ring, Logger: slog.New(slog.DiscardHandler)})
	require.NoError(t, err, "kept as a decrypt-only KEK it is covered")
	rt.Close()
}

// TestRuntimeRefusesARewrapScheduleThatCannotRun: a server does not start
// without the background job its configuration asks for.
func TestRuntimeRefusesARewrapScheduleThatCannotRun(t *testing.T) {
	t.Parallel()
	ring, err := broker.NewKeyring(randomLocal(t, "k"))
	require.NoError(t, err)
	for name, c := range map[string]struct {
		schedule broker.RewrapSchedule
		want     string
	}{
		"BatchTooLarge": {broker.RewrapSchedule{Enabled: true, Interval: time.Minute, BatchSize: broker.MaxRewrapBatchSize + 1}, "between 1 and 10000"},
		"NoInterval":    {broker.RewrapSchedule{Enabled: true, BatchSize: 10}, "Interval must be at least 1s"},
		"NegativeRate":  {broker.RewrapSchedule{Enabled: true, Interval: time.Minute, RowsPerSecond: -1}, "RowsPerSecond"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := broker.NewRuntime(t.Context(), broker.RuntimeConfig{Store: openSQLite(t), Keyring: ring,
				Rewrap: c.schedule, Logger: slog.New(slog.DiscardHandler)})
			require.ErrorContains(t, err, c.want)
		})
	}
	t.Run("DisabledIsNotChecked", func(t *testing.T) {
		rt, err := broker.NewRuntime(t.Context(), broker.RuntimeConfig{Store: openSQLite(t), Keyring: ring,
			Logger: slog.New(slog.DiscardHandler)})
		require.NoError(t, err)
		rt.Close()
	})
}

// TestRuntimeRunsTheRewrapSchedule: a run at Start, the next after the
// interval; Close stops the loop.
func TestRuntimeRunsTheRewrapSchedule(t *testing.T) {
	t.Parallel()
	store := openSQLite(t)
	old, next := randomLocal(t, "old"), randomLocal(t, "next")
	initUsers(t, store, old, 5)
	ring, err := broker.NewKeyring(next, old)
	require.NoError(t, err)
	type run struct {
		res *broker.RewrapResult
		err error
	}
	runs := make(chan run, 4)
	s := newStepper()
	var logs apitest.LogBuffer
	rt, err := broker.NewRuntime(t.Context(), broker.RuntimeConfig{Store: store, Keyring: ring, Logger: testLogger(&logs), Wait: s.wait,
		Rewrap:      broker.RewrapSchedule{Enabled: true, Interval: 7 * time.Second, BatchSize: 2},
		OnRewrapRun: func(res *broker.RewrapResult, err error) { runs <- run{res, err} }})
	require.NoError(t, err)
	require.Empty(t, runs, "nothing runs before Start")
	rt.Start(t.Context())
	first := <-runs
	require.NoError(t, first.err)
	require.EqualValues(t, 5, first.res.Done)
	require.Contains(t, logs.String(), "re-wrap job finished")
	s.next(t, 7*time.Second)
	second := <-runs
	require.NoError(t, second.err)
	require.EqualValues(t, 0, second.res.Done)
	s.reached(t, 7*time.Second)
	rt.Close()
	require.Empty(t, runs, "no run after Close")

	disabled, err := broker.NewRuntime(t.Context(), broker.RuntimeConfig{Store: store, Keyring: ring, Logger: testLogger(&logs)})
	require.NoError(t, err)
	disabled.Start(t.Context())
	disabled.Close()
	require.Contains(t, logs.String(), "re-wrap job disabled")
}

// flakyDataKeys is a data-key table that cannot be read while down is set.
type flakyDataKeys struct {
	broker.DataKeyStore
	down atomic.Bool
}

func (f *flakyDataKeys) DataKeyList(ctx context.Context) ([]broker.DataKey, error) {
	if f.down.Load() {
		return nil, &broker.UnavailableError{Dependency: broker.DependencyStore, Err: errors.New("down")}
	}
	return f.DataKeyStore.DataKeyList(ctx)
}

// TestRuntimeRefreshesTheKeyring: every 5 minutes once the data keys are
// loaded; every 5 seconds until they are, so that a replica that started
// during an outage becomes ready by itself.
func TestRuntimeRefreshesTheKeyring(t *testing.T) {
	t.Parallel()
	store := openSQLite(t)
	dataKeys := &flakyDataKeys{DataKeyStore: store}
	dataKeys.down.Store(true)
	remote := randomLocal(t, "remote")
	ring, err := broker.LoadKeyring(t.Context(), broker.KeyringConfig{Active: remote, Cached: []string{"remote"}, DataKeys: dataKeys,
		NewLocalKEK: newLocal, Logger: slog.New(slog.DiscardHandler)})
	require.NoError(t, err)
	require.Error(t, ring.Ready())
	s := newStepper()
	var logs apitest.LogBuffer
	rt, err := broker.NewRuntime(t.Context(), broker.RuntimeConfig{Store: store, Keyring: ring, Logger: testLogger(&logs), Wait: s.wait})
	require.NoError(t, err, "an unready keyring does not stop the start")
	require.False(t, isClosed(rt.KEKChecked()), "no data key, no wrap")
	require.Contains(t, logs.String(), "not checking for rows of retired KEKs")
	rt.Start(t.Context())
	t.Cleanup(rt.Close)

	s.next(t, 5*time.Second)
	again := s.reached(t, 5*time.Second) // still down: retried soon
	require.Contains(t, logs.String(), "keyring refresh failed")
	require.Error(t, ring.Ready())
	dataKeys.down.Store(false)
	again.release <- true
	s.reached(t, broker.KeyringRefreshInterval) // loaded: back to the long pause
	require.NoError(t, ring.Ready())
}

// TestRuntimeChecks: the store, each KEK with a status, the keyring.
func TestRuntimeChecks(t *testing.T) {
	t.Parallel()
	store := openSQLite(t)
	ring, err := broker.NewKeyring(randomLocal(t, "a"), randomLocal(t, "b"))
	require.NoError(t, err)
	rt, err := broker.NewRuntime(t.Context(), broker.RuntimeConfig{Store: store, Keyring: ring, Logger: slog.New(slog.DiscardHandler)})
	require.NoError(t, err)
	defer rt.Close()
	var names []string
	for _, c := range rt.Checks() {
		names = append(names, c.Name+":"+c.ID)
		require.NoError(t, c.Probe(t.Context()), c.Name)
	}
	require.Equal(t, []string{"store:", "kek:a", "kek:b", "keyring:"}, names)
	require.NoError(t, store.Close())
	require.Error(t, rt.Checks()[0].Probe(t.Context()), "a closed store is not ready")
}

// TestCachedKEKProbe: with the data keys loaded, an unreachable KMS keeps
// a cached-mode replica ready; a KMS that refuses does not.
// internal/faults runs the whole story against a stopped KMS.
func TestCachedKEKProbe(t *testing.T) {
	t.Parallel()
	k := randomLocal(t, "k")
	loaded, err := broker.NewKeyring(k)
	require.NoError(t, err)
	for name, c := range map[string]struct {
		status error
		ok     bool
	}{
		"Reachable":   {nil, true},
		"Unreachable": {kek.Unavailable(errors.New("connection refused")), true},
		"TimedOut":    {context.DeadlineExceeded, true},
		"Denied":      {kek.Denied(errors.New("key disabled")), false},
		"OtherError":  {errors.New("wrong key purpose"), false},
	} {
		t.Run(name, func(t *testing.T) {
			probe := broker.CachedKEKProbe(func(context.Context) error { return c.status }, loaded)
			err := probe(context.Background())
			if c.ok {
				require.NoError(t, err)
			} else {
				require.Error(t, err)
			}
		})
	}
	t.Run("UnreachableBeforeTheDataKeysLoad", func(t *testing.T) {
		dataKeys := &flakyDataKeys{DataKeyStore: openSQLite(t)}
		dataKeys.down.Store(true)
		unloaded, err := broker.LoadKeyring(context.Background(), broker.KeyringConfig{
			Active: k, Cached: []string{"k"}, DataKeys: dataKeys, Logger: slog.New(slog.DiscardHandler), NewLocalKEK: newLocal,
		})
		require.NoError(t, err)
		require.Error(t, unloaded.Ready())
		probe := broker.CachedKEKProbe(func(context.Context) error { return kek.Unavailable(errors.New("connection refused")) }, unloaded)
		require.Error(t, probe(context.Background()))
	})
}

// TestHangingKMSKeepsALoadedReplicaReady: a KMS that accepts the status
// read and never answers (a region in trouble, not a refused connection)
// is cut short before the readiness poll's own timeout, so a replica with
// its data keys loaded stays ready instead of being counted unreachable
// for as long as the call hangs.
func TestHangingKMSKeepsALoadedReplicaReady(t *testing.T) {
	t.Parallel()
	loaded, err := broker.NewKeyring(randomLocal(t, "k"))
	require.NoError(t, err)
	hang := func(ctx context.Context) error {
		<-ctx.Done()
		return ctx.Err()
	}
	probe := broker.CachedKEKProbe(broker.BoundedStatus(hang, time.Second), loaded)
	poll, cancel := context.WithTimeout(context.Background(), 3*time.Second) // the readiness poll's timeout
	defer cancel()
	require.NoError(t, probe(poll))
	require.NoError(t, poll.Err(), "answered before the poll gave up on it")
}

// TestThrottleProbeSpacesCalls: a cached KEK's status is asked of the KMS
// at most once per interval; in between the last answer stands.
func TestThrottleProbeSpacesCalls(t *testing.T) {
	t.Parallel()
	now := time.Unix(1_000_000, 0)
	calls := 0
	answer := error(nil)
	probe := broker.ThrottleProbe(func(context.Context) error { calls++; return answer }, time.Minute, func() time.Time { return now })
	require.NoError(t, probe(context.Background()))
	answer = errors.New("refused")
	for range 5 {
		now = now.Add(10 * time.Second)
		require.NoError(t, probe(context.Background()), "within the interval the last answer stands")
	}
	require.Equal(t, 1, calls)
	now = now.Add(15 * time.Second)
	require.Error(t, probe(context.Background()), "after the interval the KMS is asked again")
	require.Equal(t, 2, calls)
}

// TestRuntimeCountsRows: at Start, then every CountRowsEvery.
func TestRuntimeCountsRows(t *testing.T) {
	t.Parallel()
	store := openSQLite(t)
	k := randomLocal(t, "k")
	initUsers(t, store, k, 2)
	ring, err := broker.NewKeyring(k)
	require.NoError(t, err)
	s := newStepper()
	rt, err := broker.NewRuntime(t.Context(), broker.RuntimeConfig{Store: store, Keyring: ring, Logger: slog.New(slog.DiscardHandler),
		Wait: s.wait, CountRowsEvery: 11 * time.Second})
	require.NoError(t, err)
	defer rt.Close()
	require.Zero(t, rt.RowCounts().At, "nothing before Start")
	rt.Start(t.Context())
	first := rt.RowCounts()
	require.NotZero(t, first.At)
	require.Equal(t, []broker.KEKCount{{KEKID: "k", FormatVersion: broker.FormatBound, Wrapped: true, Rows: 2}}, first.Rows)
	initUsers(t, store, k, 3) // user-0…2: one more
	s.next(t, 11*time.Second)
	s.reached(t, 11*time.Second)
	require.EqualValues(t, 3, rt.RowCounts().Rows[0].Rows)
}
