package broker_test

import (
	"context"
	"errors"
	"log/slog"
	"maps"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/broker"
)

// rolloutRuntime starts a server runtime of one replica on e's store:
// the re-wrap job every second, announcements every heartbeat. The
// runtime stops (and leaves) at the end of the test; cancelling ctx stops
// its loops without leaving, as a killed process would.
func (e *rewrapEnv) rolloutRuntime(t *testing.T, ctx context.Context, ring *broker.Keyring, name string, heartbeat time.Duration,
	onRun func(*broker.RewrapResult, error), expectedReplicas ...int) *broker.Runtime {
	t.Helper()
	ro := broker.RolloutConfig{Heartbeat: heartbeat, Name: name, Version: "test"}
	if len(expectedReplicas) > 0 {
		ro.ExpectedReplicas = expectedReplicas[0]
	}
	rt, err := broker.NewRuntime(ctx, broker.RuntimeConfig{Store: e.store, Keyring: ring, Logger: slog.New(slog.DiscardHandler),
		Rewrap:      broker.RewrapSchedule{Enabled: true, Interval: broker.MinRewrapInterval, BatchSize: 25, Runner: name},
		Rollout:     ro,
		OnRewrapRun: onRun})
	require.NoError(t, err)
	t.Cleanup(rt.Close)
	rt.Start(ctx)
	return rt
}

// kekOf returns the configured KEK that wraps the user's row: the row's
// KEK id, or in cached envelope mode the KEK that wraps its data key.
func (e *rewrapEnv) kekOf(t *testing.T, user string) string {
	t.Helper()
	r, ok := e.rows(t)[user]
	require.True(t, ok, user)
	return e.wrapperOf(t, r.KEKID)
}

// wrapperOf is the configured KEK that opens rows under kekID.
func (e *rewrapEnv) wrapperOf(t *testing.T, kekID string) string {
	t.Helper()
	if !strings.HasPrefix(kekID, "dk-") {
		return kekID
	}
	var by string
	require.NoError(t, e.admin.QueryRow(t.Context(), `SELECT wrapped_by FROM keybroker.kek_data_keys WHERE id = $1`, kekID).Scan(&by))
	return by
}

// requireAllUnder checks that every row opens with kekID alone.
func (e *rewrapEnv) requireAllUnder(t *testing.T, kekID string) {
	t.Helper()
	for user, r := range e.rows(t) {
		require.Equal(t, kekID, e.wrapperOf(t, r.KEKID), "%s (kek_id %s)", user, r.KEKID)
	}
}

// allUnder reports whether every row opens with kekID alone.
func (e *rewrapEnv) allUnder(t *testing.T, kekID string) bool {
	t.Helper()
	for _, r := range e.rows(t) {
		if e.wrapperOf(t, r.KEKID) != kekID {
			return false
		}
	}
	return true
}

// The keyrings of the rollout tests: NewKeyring, as in the tests above;
// LoadKeyring with the data-key store, as serve loads a keyring of direct
// KEKs; and LoadKeyring in cached envelope mode. The loaded ones hold
// what the announcements say before their first load, as serve does.
const (
	ringNew    = "NewKeyring"
	ringLoaded = "Loaded"
	ringCached = "Cached"
)

func (e *rewrapEnv) rolloutRing(t *testing.T, kind string, active broker.KEK, decryptOnly ...broker.KEK) *broker.Keyring {
	t.Helper()
	if kind == ringNew {
		return keyring(t, active, decryptOnly...)
	}
	all := append([]broker.KEK{active}, decryptOnly...)
	ids := make([]string, len(all))
	for i, k := range all {
		ids[i] = k.ID()
	}
	hold, err := broker.RolloutHold(t.Context(), e.store, ids, 0)
	require.NoError(t, err)
	cfg := broker.KeyringConfig{Active: active, DecryptOnly: decryptOnly, DataKeys: e.store, NewLocalKEK: newLocal, Hold: hold,
		Logger: slog.New(slog.DiscardHandler)}
	if kind == ringCached {
		cfg.Cached = ids
	}
	ring, err := broker.LoadKeyring(t.Context(), cfg)
	require.NoError(t, err)
	require.NoError(t, ring.Ready())
	return ring
}

// TestOneStepRollingRotation is the rolling update of issue 21: the
// active KEK changes from A to B (A kept decrypt-only) in one step, and a
// replica of the old configuration, which knows only A, serves beside the
// first replica of the new one on the same database. While the old one
// lives, every fetch through it succeeds, the new replica makes new wraps
// under A, and its re-wrap job moves nothing; once the old replica is gone
// — killed, so that its announcement expires, or restarted with the new
// configuration — the rows move to B and new wraps use B.
func TestOneStepRollingRotation(t *testing.T) {
	t.Parallel()
	for _, c := range []struct{ ring, how string }{
		{ringNew, "OldReplicaKilled"}, {ringNew, "OldReplicaRestartedWithNewConfiguration"},
		{ringLoaded, "OldReplicaKilled"}, {ringLoaded, "OldReplicaRestartedWithNewConfiguration"},
		{ringCached, "OldReplicaKilled"}, {ringCached, "OldReplicaRestartedWithNewConfiguration"},
	} {
		how := c.how
		t.Run(c.ring+"/"+how, func(t *testing.T) {
			t.Parallel()
			e := newRewrapEnv(t)
			ctx := t.Context()
			kekA, kekB := localKEK(t, "kek-a"), localKEK(t, "kek-b")
			keys := e.seed(t, kekA, "user", 20, broker.FormatBound)

			// The old replica: its heartbeat is slow enough that a loaded
			// machine never lets its announcement lapse while it lives.
			oldRing := e.rolloutRing(t, c.ring, kekA)
			oldCtx, kill := context.WithCancel(ctx)
			defer kill()
			old := e.rolloutRuntime(t, oldCtx, oldRing, "old", 3*time.Second, nil)
			oldSvc := e.service(t, oldRing)
			require.Equal(t, "kek-a", old.Rollout().Writes)
			require.False(t, old.Rollout().Waiting)

			// Fetches through the old replica, all the time it lives.
			seeded := maps.Clone(keys)
			var fetched, failed atomic.Int64
			var firstFailure atomic.Value
			stopFetching := make(chan struct{})
			var fetching sync.WaitGroup
			fetching.Add(1)
			go func() {
				defer fetching.Done()
				for {
					for user, want := range seeded {
						select {
						case <-stopFetching:
							return
						default:
						}
						res, err := oldSvc.Key(ctx, user, broker.RequestMeta{})
						fetched.Add(1)
						if err != nil || string(res.MasterKey) != string(want) {
							failed.Add(1)
							firstFailure.CompareAndSwap(nil, errors.Join(errors.New(user), err))
						}
					}
				}
			}()

			// The first replica of the new configuration.
			runs := make(chan error, 1000)
			newRing := e.rolloutRing(t, c.ring, kekB, kekA)
			fresh := e.rolloutRuntime(t, ctx, newRing, "new", 100*time.Millisecond, func(_ *broker.RewrapResult, err error) {
				select {
				case runs <- err:
				default:
				}
			})
			newSvc := e.service(t, newRing)
			st := fresh.Rollout()
			require.NotNil(t, st)
			require.True(t, st.Waiting, st.Reason)
			require.Equal(t, "kek-b", st.Configured)
			require.Equal(t, "kek-a", st.Writes)
			require.Equal(t, 1, st.Blocking)
			require.Equal(t, []string{"old"}, st.BlockedBy)

			// New wraps through the new replica go under A, and the old
			// replica opens them.
			_, err := newSvc.Init(ctx, "fresh-1", broker.RequestMeta{})
			require.NoError(t, err)
			require.Equal(t, "kek-a", e.kekOf(t, "fresh-1"))
			rotated, err := newSvc.Rotate(ctx, "fresh-1", broker.RequestMeta{})
			require.NoError(t, err)
			require.Equal(t, "kek-a", e.wrapperOf(t, rotated.KEKID))
			res, err := oldSvc.Key(ctx, "fresh-1", broker.RequestMeta{})
			require.NoError(t, err)
			require.Equal(t, rotated.MasterKey, res.MasterKey)
			keys["fresh-1"] = res.MasterKey

			// The re-wrap job of the new replica waits, run after run.
			for waited := 0; waited < 2; {
				select {
				case err := <-runs:
					require.ErrorIs(t, err, broker.ErrRolloutWaiting)
					waited++
				case <-time.After(time.Minute):
					t.Fatal("the re-wrap job of the new replica never ran")
				}
			}
			e.requireAllUnder(t, "kek-a") // no row moves to B while the old replica lives
			var dataKeysMoved int
			require.NoError(t, e.admin.QueryRow(ctx, `SELECT count(*) FROM keybroker.kek_data_keys WHERE updated_at <> created_at`).Scan(&dataKeysMoved))
			require.Zero(t, dataKeysMoved, "no data key ever moved to B, not even for a moment")
			close(stopFetching)
			fetching.Wait()
			require.Zero(t, failed.Load(), "fetches through the old replica failed: %v", firstFailure.Load())
			require.Positive(t, fetched.Load())

			// The old replica goes.
			switch how {
			case "OldReplicaKilled":
				kill() // no leave: its announcement expires
			default:
				old.Close()
				e.rolloutRuntime(t, ctx, e.rolloutRing(t, c.ring, kekB, kekA), "old restarted", 2*time.Second, nil)
			}
			require.Eventually(t, func() bool { return e.allUnder(t, "kek-b") }, time.Minute, 50*time.Millisecond, "every row moves to B")
			require.Eventually(t, func() bool { return !fresh.Rollout().Waiting }, time.Minute, 20*time.Millisecond,
				"the new replica sees the old one gone")
			st = fresh.Rollout()
			require.Equal(t, "kek-b", st.Writes)
			_, err = newSvc.Init(ctx, "fresh-2", broker.RequestMeta{})
			require.NoError(t, err)
			require.Equal(t, "kek-b", e.kekOf(t, "fresh-2"))
			requireKeysOpen(t, newSvc, keys)
		})
	}
}

// TestRolloutDecision: a replica configured with kek-b (kek-a and kek-old
// decrypt-only) writes under kek-b only when every other live replica
// opens it and, with an expected replica count, enough of them announce
// or one already writes under kek-b; otherwise under a KEK every live
// replica opens, the one they write under first.
func TestRolloutDecision(t *testing.T) {
	t.Parallel()
	held := []string{"kek-b", "kek-a", "kek-old"}
	me := broker.Replica{ID: "me", KEKIDs: held}
	replica := func(id, writes string, opens ...string) broker.Replica {
		return broker.Replica{ID: id, Name: id + "-host", WritesKEK: writes, KEKIDs: opens}
	}
	for _, c := range []struct {
		name     string
		live     []broker.Replica
		expected int
		writes   string
		waiting  bool
		blocking int
	}{
		{"alone", []broker.Replica{me}, 0, "kek-b", false, 0},
		{"every replica opens kek-b", []broker.Replica{me, replica("r2", "kek-a", "kek-a", "kek-b")}, 0, "kek-b", false, 0},
		{"an old replica", []broker.Replica{me, replica("old", "kek-a", "kek-a")}, 0, "kek-a", true, 1},
		{"the KEK the others write under comes first",
			[]broker.Replica{me, replica("old", "kek-old", "kek-a", "kek-old")}, 0, "kek-old", true, 1},
		{"a rollback: kek-b no longer everywhere", []broker.Replica{me, replica("new", "kek-b", "kek-a", "kek-b"),
			replica("back", "kek-a", "kek-a")}, 0, "kek-a", true, 1},
		{"no KEK all of them open", []broker.Replica{me, replica("other", "kek-x", "kek-x")}, 0, "kek-b", false, 1},
		{"fewer than expected announce", []broker.Replica{me, replica("r2", "kek-a", "kek-a", "kek-b")}, 3, "kek-a", true, 0},
		{"as many as expected", []broker.Replica{me, replica("r2", "kek-a", "kek-a", "kek-b"), replica("r3", "kek-a", "kek-b", "kek-a")},
			3, "kek-b", false, 0},
		{"fewer than expected, but the rollout is done", []broker.Replica{me, replica("r2", "kek-b", "kek-a", "kek-b")}, 3, "kek-b", false, 0},
	} {
		t.Run(c.name, func(t *testing.T) {
			st := broker.RolloutDecision("kek-b", held, "me", c.live, c.expected)
			require.Equal(t, "kek-b", st.Configured)
			require.Equal(t, c.writes, st.Writes, st.Reason)
			require.Equal(t, c.waiting, st.Waiting, st.Reason)
			require.Equal(t, c.blocking, st.Blocking)
			require.Len(t, st.BlockedBy, c.blocking)
			require.Equal(t, len(c.live), st.Replicas)
			if c.waiting || c.blocking > 0 {
				require.NotEmpty(t, st.Reason)
			}
		})
	}
}

// TestRolloutFromThePreviousReleaseWaitsForTheExpectedCount: a replica of
// the previous release announces nothing, so only the expected replica
// count (KEYBROKER_ROLLOUT_REPLICAS) keeps the first replica of the new
// configuration from moving rows its KEK-A-only neighbour cannot open.
// With 2 expected and 1 announcing, it writes under A and its re-wrap
// job waits while every fetch through the previous release succeeds; once
// the previous release's replica is replaced by a second new one, the rows
// move to B.
func TestRolloutFromThePreviousReleaseWaitsForTheExpectedCount(t *testing.T) {
	t.Parallel()
	e := newRewrapEnv(t)
	ctx := t.Context()
	kekA, kekB := localKEK(t, "kek-a"), localKEK(t, "kek-b")
	keys := e.seed(t, kekA, "user", 10, broker.FormatBound)
	previous := e.service(t, keyring(t, kekA)) // no runtime: it announces nothing

	runs := make(chan error, 1000)
	first := e.rolloutRuntime(t, ctx, keyring(t, kekB, kekA), "new-1", 100*time.Millisecond, func(_ *broker.RewrapResult, err error) {
		select {
		case runs <- err:
		default:
		}
	}, 2)
	st := first.Rollout()
	require.True(t, st.Waiting, st.Reason)
	require.Equal(t, "kek-a", st.Writes)
	require.Zero(t, st.Blocking, "the previous release is invisible")
	require.Contains(t, st.Reason, "1 of 2 expected replicas announce kek-b")
	for waited := 0; waited < 2; {
		select {
		case err := <-runs:
			require.ErrorIs(t, err, broker.ErrRolloutWaiting)
			waited++
		case <-time.After(time.Minute):
			t.Fatal("the re-wrap job never ran")
		}
	}
	requireKeysOpen(t, previous, keys)
	for user, r := range e.rows(t) {
		require.Equal(t, "kek-a", r.KEKID, user)
	}

	// The previous release's replica is replaced by a second new one.
	e.rolloutRuntime(t, ctx, keyring(t, kekB, kekA), "new-2", 100*time.Millisecond, nil, 2)
	require.Eventually(t, func() bool {
		for _, r := range e.rows(t) {
			if r.KEKID != "kek-b" {
				return false
			}
		}
		return true
	}, time.Minute, 50*time.Millisecond, "every row moves to B")
	require.Eventually(t, func() bool { return !first.Rollout().Waiting }, time.Minute, 20*time.Millisecond)
	require.Equal(t, "kek-b", first.Rollout().Writes)
}
