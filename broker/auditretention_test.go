package broker_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/internal/testkit/apitest"
)

// TestRuntimeAuditUpkeep: a server's runtime runs the audit upkeep at
// Start and then every AuditSchedule.Every: with a retention, a row past
// it goes and a recent one stays, the totals reach AuditUpkeepStats, and
// the next run comes after the pause.
func TestRuntimeAuditUpkeep(t *testing.T) {
	t.Parallel()
	store := openSQLite(t)
	now := time.Now()
	for id, at := range map[string]time.Time{"old": now.AddDate(0, 0, -40), "recent": now.AddDate(0, 0, -1)} {
		require.NoError(t, store.InUserTx(t.Context(), "u", func(tx broker.Tx) error {
			return tx.AuditInsert(t.Context(), &broker.AuditEntry{ID: id, UserID: "u", Action: broker.ActionFetch, Status: 200, CreatedAt: at})
		}))
	}
	ring, err := broker.NewKeyring(randomLocal(t, "k"))
	require.NoError(t, err)
	type run struct {
		res *broker.AuditUpkeepResult
		err error
	}
	runs := make(chan run, 4)
	s := newStepper()
	var logs apitest.LogBuffer
	const every = 13 * time.Second
	rt, err := broker.NewRuntime(t.Context(), broker.RuntimeConfig{Store: store, Keyring: ring, Logger: testLogger(&logs), Wait: s.wait,
		Audit: broker.AuditSchedule{Retention: 30 * 24 * time.Hour, Every: every,
			OnRun: func(res *broker.AuditUpkeepResult, err error) { runs <- run{res, err} }}})
	require.NoError(t, err)
	rt.Start(t.Context())
	t.Cleanup(rt.Close)
	first := <-runs
	require.NoError(t, first.err)
	require.EqualValues(t, 1, first.res.Deleted)
	st, err := store.AuditStatus(t.Context())
	require.NoError(t, err)
	require.EqualValues(t, 1, st.Rows, "the recent row stays")
	require.EqualValues(t, 1, rt.AuditUpkeepStats().Deleted)
	require.EqualValues(t, 1, rt.AuditUpkeepStats().Runs)

	s.next(t, every)
	second := <-runs
	require.NoError(t, second.err)
	require.Zero(t, second.res.Deleted)
	require.EqualValues(t, 2, rt.AuditUpkeepStats().Runs)
}

// TestRuntimeRefusesShortAuditRetention: a retention under a day (other
// than 0) stops the start rather than drop more than meant.
func TestRuntimeRefusesShortAuditRetention(t *testing.T) {
	t.Parallel()
	ring, err := broker.NewKeyring(randomLocal(t, "k"))
	require.NoError(t, err)
	_, err = broker.NewRuntime(t.Context(), broker.RuntimeConfig{Store: openSQLite(t), Keyring: ring,
		Audit: broker.AuditSchedule{Retention: time.Hour}})
	require.ErrorContains(t, err, "must be 0 or at least 24h0m0s")
}

// TestRetentionDropIsMarkedAndVerifies: the runtime's upkeep records a
// retention mark under the audit key before it drops sealed rows, so
// audit verify takes the drop for retention, not for a database writer
// deleting rows. Without the mark the sealed rows gone past the
// retention would be reported deleted.
func TestRetentionDropIsMarkedAndVerifies(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	store := openSQLite(t)
	ring, err := broker.NewKeyring(randomLocal(t, "k"))
	require.NoError(t, err)
	seal := &broker.AuditSeal{}
	const sealEvery = 7 * time.Minute
	past := time.Now().AddDate(0, 0, -40)
	// Forty days ago: rows written and sealed (the clock an hour on, so
	// they have settled).
	sealed := make(chan struct{})
	old, err := broker.NewRuntime(ctx, broker.RuntimeConfig{Store: store, Keyring: ring, AuditSeal: seal, AuditSealEvery: sealEvery,
		Now: func() time.Time { return past.Add(time.Hour) },
		Wait: func(_ context.Context, d time.Duration) bool {
			if d == sealEvery {
				close(sealed)
			}
			return false
		}})
	require.NoError(t, err)
	svc, err := broker.New(ctx, broker.Config{Store: store, Keyring: ring, AuditSeal: seal, Now: func() time.Time { return past }})
	require.NoError(t, err)
	_, err = svc.Init(ctx, "alice", broker.RequestMeta{})
	require.NoError(t, err)
	_, err = svc.Key(ctx, "alice", broker.RequestMeta{})
	require.NoError(t, err)
	old.Start(ctx)
	<-sealed
	old.Close()

	// Today, with a 30-day retention: the upkeep drops them.
	runs := make(chan error, 1)
	rt, err := broker.NewRuntime(ctx, broker.RuntimeConfig{Store: store, Keyring: ring, AuditSeal: seal, AuditSealEvery: sealEvery,
		Wait:  func(context.Context, time.Duration) bool { return false },
		Audit: broker.AuditSchedule{Retention: 30 * 24 * time.Hour, OnRun: func(_ *broker.AuditUpkeepResult, err error) { runs <- err }}})
	require.NoError(t, err)
	rt.Start(ctx)
	require.NoError(t, <-runs)
	rt.Close()
	st, err := store.AuditStatus(ctx)
	require.NoError(t, err)
	require.Zero(t, st.Rows, "the rows past the retention are gone")

	report, err := broker.VerifyAudit(ctx, store, seal.Key(), broker.VerifyOptions{})
	require.NoError(t, err)
	require.Empty(t, report.Findings, "a drop past the retention is recorded, not tampering")
}
