package broker_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/internal/apitest"
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
