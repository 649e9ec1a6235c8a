package storetest

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/broker"
)

// RunAuditRetention is the contract of broker.AuditKeeper, on a store of
// its own (newHarness is called with empty set): after an upkeep pass as
// of now, rows of the next days can be written; a pass without retention
// removes nothing; a pass with a retention removes rows older than
// now-retention-1 day (PostgreSQL drops whole days) and never a row newer
// than now-retention; the status names the oldest and newest rows and the
// last run.
func RunAuditRetention(t *testing.T, newHarness NewHarness) {
	run(t, newHarness, []subtest{
		{"RetentionRemovesOnlyExpiredRows", true, testAuditRetention},
		{"NoRetentionKeepsEverything", true, testAuditNoRetention},
		{"RowsOfAnyTimeAreKept", true, testAuditAnyTime},
	})
}

func auditAt(t *testing.T, h Harness, userID, id string, at time.Time) {
	t.Helper()
	require.NoError(t, h.Store.InUserTx(t.Context(), userID, func(tx broker.Tx) error {
		return tx.AuditInsert(t.Context(), &broker.AuditEntry{ID: id, UserID: userID, Action: broker.ActionFetch, Status: 200, CreatedAt: at})
	}))
}

func auditIDs(t *testing.T, h Harness, userID string) []string {
	t.Helper()
	rows, err := h.AuditRows(t.Context(), userID)
	require.NoError(t, err)
	ids := []string{}
	for _, r := range rows {
		ids = append(ids, r.ID)
	}
	return ids
}

func upkeep(t *testing.T, h Harness, now time.Time, retention time.Duration) *broker.AuditUpkeepResult {
	t.Helper()
	keeper, ok := h.Store.(broker.AuditKeeper)
	require.True(t, ok, "the store is a broker.AuditKeeper")
	res, err := keeper.AuditUpkeep(t.Context(), broker.AuditUpkeepParams{Now: now, Retention: retention, Runner: "contract"})
	require.NoError(t, err)
	require.False(t, res.Busy)
	return res
}

func testAuditRetention(t *testing.T, h Harness) {
	base := time.Now().UTC().Round(time.Microsecond)
	upkeep(t, h, base, 0)
	const user = "retention-user"
	auditAt(t, h, user, "early", base.Add(-time.Hour))
	auditAt(t, h, user, "mid", base.AddDate(0, 0, 5))

	later := base.AddDate(0, 0, 20)
	upkeep(t, h, later, 0)
	require.Equal(t, []string{"early", "mid"}, auditIDs(t, h, user), "no retention, nothing removed")
	// Written after the pass of day 20: the partitions of days 20 to 30
	// exist, and the retention's edge is day 10.
	const retention = 10 * 24 * time.Hour
	auditAt(t, h, user, "edge", later.Add(-retention).Add(time.Hour))
	auditAt(t, h, user, "late", later.Add(-time.Hour))
	auditAt(t, h, "other-user", "ahead", later.AddDate(0, 0, 6))

	res := upkeep(t, h, later, retention)
	require.Equal(t, []string{"edge", "late"}, auditIDs(t, h, user), "rows older than the retention go, newer ones stay")
	require.Equal(t, []string{"ahead"}, auditIDs(t, h, "other-user"))
	st, err := h.Store.(broker.AuditKeeper).AuditStatus(t.Context())
	require.NoError(t, err)
	if !st.RowsEstimated {
		require.EqualValues(t, 2, res.Deleted)
		require.EqualValues(t, 3, st.Rows)
		require.EqualValues(t, 2, st.Deleted)
	}
	require.NotNil(t, st.Oldest)
	require.True(t, later.Add(-retention).Add(time.Hour).Equal(*st.Oldest), "oldest %v", st.Oldest)
	require.NotNil(t, st.Newest)
	require.True(t, later.AddDate(0, 0, 6).Equal(*st.Newest), "newest %v", st.Newest)
	require.NotNil(t, st.LastRun)
	require.Equal(t, "contract", st.LastRunner)
	require.Empty(t, st.LastError)

	// A second pass finds nothing more to remove.
	res = upkeep(t, h, later, retention)
	require.Empty(t, res.Dropped)
	require.Zero(t, res.Deleted)
}

func testAuditNoRetention(t *testing.T, h Harness) {
	base := time.Now().UTC().Round(time.Microsecond)
	upkeep(t, h, base, 0)
	const user = "keep-user"
	auditAt(t, h, user, "a", base.AddDate(-1, 0, 0))
	auditAt(t, h, user, "b", base.AddDate(0, 0, 1))
	res := upkeep(t, h, base.AddDate(0, 0, 1), 0)
	require.Empty(t, res.Dropped)
	require.Zero(t, res.Deleted)
	require.Equal(t, []string{"a", "b"}, auditIDs(t, h, user))
}

// testAuditAnyTime: rows far ahead of or behind the upkeep's days (a
// clock off by months) are written and read like any other, and stay
// when a later pass creates their day.
func testAuditAnyTime(t *testing.T, h Harness) {
	base := time.Now().UTC().Round(time.Microsecond)
	upkeep(t, h, base, 0)
	const user = "clock-user"
	auditAt(t, h, user, "past", base.AddDate(-2, 0, 0))
	auditAt(t, h, user, "ahead", base.AddDate(0, 0, 60))
	auditAt(t, h, user, "far", base.AddDate(3, 0, 0))
	upkeep(t, h, base.AddDate(0, 0, 59), 0)
	require.Equal(t, []string{"past", "ahead", "far"}, auditIDs(t, h, user))
	st, err := h.Store.(broker.AuditKeeper).AuditStatus(t.Context())
	require.NoError(t, err)
	require.True(t, base.AddDate(-2, 0, 0).Equal(*st.Oldest), "oldest %v", st.Oldest)
	require.True(t, base.AddDate(3, 0, 0).Equal(*st.Newest), "newest %v", st.Newest)
}
