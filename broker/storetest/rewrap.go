package storetest

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/broker"
)

// The re-wrap job's store methods, on an empty store: they read across
// users.

// seedRewrapRows writes u1..u5 with a server wrap (KEK id and format as
// listed) and u6 in zero-knowledge mode, whose KEK id is a leftover.
func seedRewrapRows(t *testing.T, h Harness) {
	t.Helper()
	for _, row := range []struct {
		user, kek string
		format    int
	}{{"u1", "old", 2}, {"u2", "new", 2}, {"u3", "new", 1}, {"u4", "old", 2}, {"u5", "old", 1}} {
		v := legacyVault(row.user)
		v.WrappedMK, v.WrapIV, v.FormatVersion, v.KEKID = ptr("d3JhcC0"+row.user), ptr(""), row.format, row.kek
		insert(t, h, v)
	}
	zk := zkVault("u6")
	zk.KEKID = "old"
	insert(t, h, zk)
}

func testRewrapCandidates(t *testing.T, h Harness) {
	ctx := t.Context()
	seedRewrapRows(t, h)
	q := broker.RewrapQuery{ActiveKEKID: "new", Limit: 2}
	page, err := h.Store.RewrapCandidates(ctx, q)
	require.NoError(t, err)
	require.Equal(t, []string{"u1", "u3"}, page, "another KEK, or format 1 on the active one")
	q.After = page[1]
	page, err = h.Store.RewrapCandidates(ctx, q)
	require.NoError(t, err)
	require.Equal(t, []string{"u4", "u5"}, page, "zero-knowledge u6 is never a candidate")
	q.After = page[1]
	page, err = h.Store.RewrapCandidates(ctx, q)
	require.NoError(t, err)
	require.Empty(t, page)

	onActive, err := h.Store.RewrapCandidates(ctx, broker.RewrapQuery{ActiveKEKID: "new", OnActiveKEK: true, Limit: 10})
	require.NoError(t, err)
	require.Equal(t, []string{"u2"}, onActive)

	legacy, err := h.Store.RewrapCandidates(ctx, broker.RewrapQuery{ActiveKEKID: "new", LegacyOnly: true, Limit: 1})
	require.NoError(t, err)
	require.Equal(t, []string{"u3"}, legacy, "format 1 on the active KEK id too")
	legacy, err = h.Store.RewrapCandidates(ctx, broker.RewrapQuery{ActiveKEKID: "new", LegacyOnly: true, After: "u3", Limit: 10})
	require.NoError(t, err)
	require.Equal(t, []string{"u5"}, legacy)
}

func testRewrapKEKCounts(t *testing.T, h Harness) {
	counts, err := h.Store.KEKCounts(t.Context())
	require.NoError(t, err)
	require.Empty(t, counts, "an empty store")
	seedRewrapRows(t, h)
	counts, err = h.Store.KEKCounts(t.Context())
	require.NoError(t, err)
	require.Equal(t, []broker.KEKCount{
		{KEKID: "new", FormatVersion: 1, Wrapped: true, Rows: 1},
		{KEKID: "new", FormatVersion: 2, Wrapped: true, Rows: 1},
		{KEKID: "old", FormatVersion: 1, Wrapped: true, Rows: 1},
		{KEKID: "old", FormatVersion: 2, Wrapped: false, ZeroKnowledge: true, Rows: 1},
		{KEKID: "old", FormatVersion: 2, Wrapped: true, Rows: 2},
	}, counts)
}

func testRewrapReadAndSwap(t *testing.T, h Harness) {
	ctx := t.Context()
	seedRewrapRows(t, h)
	read, err := h.Store.RewrapRead(ctx, []string{"u1", "u4", "nobody"})
	require.NoError(t, err)
	require.Len(t, read, 2, "users without a vault are left out")
	byUser := map[string]*broker.Vault{}
	for _, v := range read {
		byUser[v.UserID] = v
	}
	requireVaultEqual(t, get(t, h, "u1"), byUser["u1"])

	// A user request changes u4's wrap after the read.
	rotated := get(t, h, "u4")
	rotated.WrappedMK, rotated.KEKID = ptr("cm90YXRlZA=="), "new"
	require.NoError(t, update(h, ctx, rotated))

	swap := func(v *broker.Vault) broker.RewrapSwap {
		next := *v
		next.WrappedMK, next.WrapIV, next.KEKID, next.KeyCheck = ptr("bmV3LXdyYXA="), ptr(""), "new", ptr("Y2hlY2s=")
		next.RecoveryWrappedMK, next.RecoveryIV = ptr("bm90LXdyaXR0ZW4="), ptr("bm90LXdyaXR0ZW4=") // not a wrap column
		return broker.RewrapSwap{Old: v, New: &next, Audit: &broker.AuditEntry{ID: newUserID(t), UserID: v.UserID,
			Action: broker.ActionKEKRewrap, Context: "old/2>new/2", Status: 200, CreatedAt: at(20, 0)}}
	}
	applied, err := h.Store.RewrapApply(ctx, []broker.RewrapSwap{swap(byUser["u1"]), swap(byUser["u4"])})
	require.NoError(t, err)
	require.Equal(t, []bool{true, false}, applied)

	want := *byUser["u1"]
	want.WrappedMK, want.WrapIV, want.KEKID, want.KeyCheck = ptr("bmV3LXdyYXA="), ptr(""), "new", ptr("Y2hlY2s=")
	requireVaultEqual(t, &want, get(t, h, "u1"))
	requireVaultEqual(t, rotated, get(t, h, "u4"))
	rows := auditRows(t, h, "u1")
	require.Len(t, rows, 1)
	require.Equal(t, broker.ActionKEKRewrap, rows[0].Action)
	require.Equal(t, "old/2>new/2", rows[0].Context)
	require.Empty(t, auditRows(t, h, "u4"), "no audit row for a swap that missed")

	// A key check value the row has is kept.
	moved := get(t, h, "u1")
	again := swap(moved)
	again.New.KEKID, again.New.KeyCheck = "newer", ptr("b3RoZXI=")
	applied, err = h.Store.RewrapApply(ctx, []broker.RewrapSwap{again})
	require.NoError(t, err)
	require.Equal(t, []bool{true}, applied)
	require.Equal(t, "Y2hlY2s=", *get(t, h, "u1").KeyCheck)

	// The index followed, in the same transactions.
	counts, err := h.Store.KEKCounts(ctx)
	require.NoError(t, err)
	var onOld int64
	for _, c := range counts {
		if c.KEKID == "old" && c.Wrapped {
			onOld += c.Rows
		}
	}
	require.EqualValues(t, 1, onOld, "only u5 is left on the old KEK")
}

func testRewrapBatchesRefuseEmptyUserIDs(t *testing.T, h Harness) {
	ctx := t.Context()
	_, err := h.Store.RewrapRead(ctx, []string{newUserID(t), ""})
	require.ErrorIs(t, err, broker.ErrInvalidArgument)

	v := fullVault(newUserID(t))
	insert(t, h, v)
	next := *v
	next.KEKID = "kek-2025"
	for name, sw := range map[string]broker.RewrapSwap{
		"EmptyUser":    {Old: legacyVault(""), New: legacyVault(""), Audit: auditEntry("", "", at(21, 0))},
		"MixedUsers":   {Old: v, New: fullVault(newUserID(t)), Audit: auditEntry(v.UserID, "", at(21, 0))},
		"AuditOfOther": {Old: v, New: &next, Audit: auditEntry(newUserID(t), "", at(21, 0))},
	} {
		_, err := h.Store.RewrapApply(ctx, []broker.RewrapSwap{sw})
		require.ErrorIs(t, err, broker.ErrInvalidArgument, name)
	}
	requireVaultEqual(t, v, get(t, h, v.UserID))
}

// testRewrapLock takes the job's lock as two replicas would, on a store
// that has one (an optional ability: a single-node store has none).
func testRewrapLock(t *testing.T, h Harness) {
	locker, ok := h.Store.(broker.RewrapLocker)
	if !ok {
		t.Skipf("%T has no RewrapLocker (an optional ability of stores that replicas share)", h.Store)
	}
	ctx := t.Context()
	state, err := locker.RewrapState(ctx)
	require.NoError(t, err)
	require.Equal(t, broker.RewrapState{}, *state, "never ran")

	lease, err := locker.RewrapLock(ctx, "replica-a")
	require.NoError(t, err)
	require.NoError(t, lease.Held(ctx))
	_, err = locker.RewrapLock(ctx, "replica-b")
	require.ErrorIs(t, err, broker.ErrRewrapBusy)

	started := time.Now().UTC().Truncate(time.Microsecond)
	require.NoError(t, lease.Report(ctx, broker.RewrapProgress{ActiveKEKID: "new", Total: 10, Done: 4, StartedAt: started,
		UpdatedAt: started.Add(time.Second), RowsPerSecond: 4}))
	state, err = locker.RewrapState(ctx)
	require.NoError(t, err)
	require.True(t, state.Running)
	require.Equal(t, "replica-a", state.Runner)
	require.EqualValues(t, 10, state.Total)
	require.EqualValues(t, 4, state.Done)
	require.InDelta(t, 4, state.RowsPerSecond, 0.001)
	require.False(t, state.Finished)

	require.NoError(t, lease.Release(ctx, broker.RewrapProgress{ActiveKEKID: "new", Total: 10, Done: 10, Finished: true,
		StartedAt: started, UpdatedAt: started.Add(2 * time.Second)}))
	require.Error(t, lease.Held(ctx), "a released lease is not held")
	state, err = locker.RewrapState(ctx)
	require.NoError(t, err)
	require.False(t, state.Running)
	require.True(t, state.Finished)
	require.Equal(t, "replica-a", state.Runner)

	next, err := locker.RewrapLock(ctx, "replica-b")
	require.NoError(t, err, "released explicitly, the lock is free at once")
	require.NoError(t, next.Release(ctx, broker.RewrapProgress{}))
}
