package storetest

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/broker"
)

func testFormat1ClosedOnFreshStore(t *testing.T, h Harness) {
	st, err := h.Store.Format1State(t.Context())
	require.NoError(t, err)
	require.True(t, st.Closed, "a store that never held a format-1 row starts closed")
	require.False(t, st.ClosedAt.IsZero())
	require.NotEmpty(t, st.ClosedBy)
}

func testFormat1ClosesOnlyWithoutFormat1Rows(t *testing.T, h Harness) {
	require.NotNil(t, h.ReopenFormat1, "Harness.ReopenFormat1 is required")
	ctx := t.Context()
	h.ReopenFormat1(t)
	f1 := h.Store
	st, err := f1.Format1State(ctx)
	require.NoError(t, err)
	require.Equal(t, broker.Format1State{}, st)

	legacy := legacyVault(newUserID(t))
	insert(t, h, legacy)
	zk := zkVault(newUserID(t))
	zk.FormatVersion = broker.FormatLegacy // a zero-knowledge row the original service wrote
	insert(t, h, zk)
	st, err = f1.Format1Close(ctx, "runner-a")
	require.NoError(t, err)
	require.False(t, st.Closed, "a format-1 server wrap is left")

	upgraded := *legacy
	upgraded.FormatVersion, upgraded.WrapIV, upgraded.KEKID = broker.FormatBound, ptr(""), "kek-2024"
	require.NoError(t, update(h, ctx, &upgraded))
	before := time.Now().Add(-time.Minute)
	st, err = f1.Format1Close(ctx, "runner-a")
	require.NoError(t, err)
	require.True(t, st.Closed, "only a zero-knowledge format-1 row is left: no server wrap to open")
	require.Equal(t, "runner-a", st.ClosedBy)
	require.True(t, st.ClosedAt.After(before) && st.ClosedAt.Before(time.Now().Add(time.Minute)), "closed at %s", st.ClosedAt)

	again, err := f1.Format1Close(ctx, "runner-b")
	require.NoError(t, err)
	require.Equal(t, st.ClosedBy, again.ClosedBy, "the first closing stays recorded")
	require.True(t, st.ClosedAt.Equal(again.ClosedAt))

	// A format-1 row written afterwards does not reopen it.
	insert(t, h, legacyVault(newUserID(t)))
	require.NoError(t, update(h, ctx, legacyVault(legacy.UserID)))
	read, err := f1.Format1State(ctx)
	require.NoError(t, err)
	require.True(t, read.Closed)
	require.Equal(t, "runner-a", read.ClosedBy)
	require.True(t, st.ClosedAt.Equal(read.ClosedAt))
}
