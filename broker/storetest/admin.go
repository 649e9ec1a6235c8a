package storetest

import (
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/broker"
)

// The admin reads and the erasure (broker.AdminStore).

// adminAt is a fixed clock reading with microsecond precision, which
// every store keeps.
var adminAt = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// seedVault writes a vault with every field set for userID.
func seedVault(t *testing.T, h Harness, userID string) *broker.Vault {
	t.Helper()
	v := fullVault(userID)
	insert(t, h, v)
	return v
}

// seedAudit writes n audit rows for userID; rows come in pairs that share
// a CreatedAt, so paging must order ties by id.
func seedAudit(t *testing.T, h Harness, userID string, n int) {
	t.Helper()
	err := h.Store.InUserTx(t.Context(), userID, func(tx broker.Tx) error {
		for i := range n {
			e := &broker.AuditEntry{
				ID: fmt.Sprintf("%s-%03d", userID, n-i), UserID: userID, Action: broker.ActionFetch,
				IPAddress: "192.0.2.1", UserAgent: "ua", Status: 200, CreatedAt: adminAt.Add(time.Duration(i/2) * time.Second),
			}
			if i%3 == 0 {
				e.IPAddress, e.UserAgent, e.Context = "", "", "note"
			}
			if err := tx.AuditInsert(t.Context(), e); err != nil {
				return err
			}
		}
		return nil
	})
	require.NoError(t, err)
}

func testMetaOfUnknownUser(t *testing.T, h Harness) {
	v, n, err := h.Store.VaultMeta(t.Context(), newUserID(t))
	require.NoError(t, err)
	require.Nil(t, v)
	require.Zero(t, n)
}

func testMetaReportsVault(t *testing.T, h Harness) {
	user, other := newUserID(t), newUserID(t)
	want := seedVault(t, h, user)
	seedAudit(t, h, user, 3)
	seedVault(t, h, other)
	seedAudit(t, h, other, 5)
	v, n, err := h.Store.VaultMeta(t.Context(), user)
	require.NoError(t, err)
	requireVaultEqual(t, want, v)
	require.EqualValues(t, 3, n, "only the user's own audit rows count")
}

func testAuditPages(t *testing.T, h Harness) {
	user, other := newUserID(t), newUserID(t)
	const total = 11
	seedAudit(t, h, user, total)
	seedAudit(t, h, other, 4)
	var got []broker.AuditEntry
	var after *broker.AuditCursor
	for range total + 1 { // bounded: one page per row at most
		page, err := h.Store.AuditPage(t.Context(), user, after, 3)
		require.NoError(t, err)
		require.LessOrEqual(t, len(page), 3)
		got = append(got, page...)
		if len(page) < 3 {
			break
		}
		last := page[len(page)-1]
		after = &broker.AuditCursor{CreatedAt: last.CreatedAt, ID: last.ID}
	}
	require.Len(t, got, total)
	seen := map[string]bool{}
	for i, e := range got {
		require.Equal(t, user, e.UserID)
		require.False(t, seen[e.ID], "row %s returned twice", e.ID)
		seen[e.ID] = true
		if i > 0 {
			prev := got[i-1]
			ordered := prev.CreatedAt.Before(e.CreatedAt) || (prev.CreatedAt.Equal(e.CreatedAt) && prev.ID < e.ID)
			require.True(t, ordered, "rows %s and %s out of order", prev.ID, e.ID)
		}
	}
	require.Equal(t, broker.ActionFetch, got[0].Action)
	require.Equal(t, 200, got[0].Status)
	// Row 0 of the seed had its optional fields empty.
	var sawEmpty, sawFull bool
	for _, e := range got {
		if e.IPAddress == "" && e.UserAgent == "" && e.Context == "note" {
			sawEmpty = true
		}
		if e.IPAddress == "192.0.2.1" && e.UserAgent == "ua" && e.Context == "" {
			sawFull = true
		}
	}
	require.True(t, sawEmpty && sawFull, "optional fields round-trip, absent ones as empty strings")
}

func testAuditByAction(t *testing.T, h Harness) {
	user, other := newUserID(t), newUserID(t)
	seedAudit(t, h, user, 4) // fetch rows: not selected
	write := func(userID, id string, action broker.Action, status int, at time.Time) {
		t.Helper()
		err := h.Store.InUserTx(t.Context(), userID, func(tx broker.Tx) error {
			return tx.AuditInsert(t.Context(), &broker.AuditEntry{ID: id, UserID: userID, Action: action, Status: status, Context: "c-" + id, CreatedAt: at})
		})
		require.NoError(t, err)
	}
	write(user, user+"-g1", broker.ActionMissionGrant, 200, adminAt.Add(time.Minute))
	write(user, user+"-g3", broker.ActionMissionGrant, 200, adminAt.Add(2*time.Minute))
	write(user, user+"-g2", broker.ActionMissionGrant, 200, adminAt.Add(2*time.Minute)) // a tie: ordered by id
	write(user, user+"-r1", broker.ActionMissionGrant, 409, adminAt.Add(3*time.Minute))
	write(other, other+"-g1", broker.ActionMissionGrant, 200, adminAt.Add(4*time.Minute))

	q := broker.AuditQuery{Action: broker.ActionMissionGrant, Status: 200, Limit: 10}
	got, err := h.Store.AuditByAction(t.Context(), user, q)
	require.NoError(t, err)
	var ids []string
	for _, e := range got {
		require.Equal(t, user, e.UserID)
		require.Equal(t, "c-"+e.ID, e.Context)
		require.True(t, e.CreatedAt.Equal(adminAt.Add(time.Minute)) || e.CreatedAt.Equal(adminAt.Add(2*time.Minute)), "%v", e.CreatedAt)
		ids = append(ids, e.ID)
	}
	require.Equal(t, []string{user + "-g3", user + "-g2", user + "-g1"}, ids, "newest first, of this action and status and user only")

	q.Limit = 2
	got, err = h.Store.AuditByAction(t.Context(), user, q)
	require.NoError(t, err)
	require.Len(t, got, 2)
	require.Equal(t, user+"-g3", got[0].ID)

	q.Status = 409
	got, err = h.Store.AuditByAction(t.Context(), user, q)
	require.NoError(t, err)
	require.Len(t, got, 1)
	require.Equal(t, user+"-r1", got[0].ID)

	got, err = h.Store.AuditByAction(t.Context(), newUserID(t), q)
	require.NoError(t, err)
	require.Empty(t, got)
	q.Limit = 0
	_, err = h.Store.AuditByAction(t.Context(), user, q)
	require.ErrorIs(t, err, broker.ErrInvalidArgument)
}

func testEraseDeletesOnlyThatUser(t *testing.T, h Harness) {
	user, other := newUserID(t), newUserID(t)
	seedVault(t, h, user)
	seedAudit(t, h, user, 4)
	seedVault(t, h, other)
	seedAudit(t, h, other, 2)

	res, err := h.Store.VaultErase(t.Context(), user, nil)
	require.NoError(t, err)
	require.Equal(t, broker.EraseResult{VaultDeleted: true, AuditRowsDeleted: 4}, res)

	v, n, err := h.Store.VaultMeta(t.Context(), user)
	require.NoError(t, err)
	require.Nil(t, v)
	require.Zero(t, n)
	err = h.Store.InUserTx(t.Context(), user, func(tx broker.Tx) error {
		_, err := tx.VaultGet(t.Context(), false)
		return err
	})
	require.ErrorIs(t, err, broker.ErrNotFound)

	v, n, err = h.Store.VaultMeta(t.Context(), other)
	require.NoError(t, err)
	require.NotNil(t, v, "another user's vault survives")
	require.EqualValues(t, 2, n, "another user's audit rows survive")
}

func testEraseIsIdempotent(t *testing.T, h Harness) {
	user := newUserID(t)
	seedVault(t, h, user)
	_, err := h.Store.VaultErase(t.Context(), user, nil)
	require.NoError(t, err)
	res, err := h.Store.VaultErase(t.Context(), user, nil)
	require.NoError(t, err)
	require.Equal(t, broker.EraseResult{}, res)
	res, err = h.Store.VaultErase(t.Context(), newUserID(t), nil)
	require.NoError(t, err)
	require.Equal(t, broker.EraseResult{}, res)
}

func testAdminEmptyUserID(t *testing.T, h Harness) {
	ctx := t.Context()
	_, _, err := h.Store.VaultMeta(ctx, "")
	require.ErrorIs(t, err, broker.ErrInvalidArgument)
	_, err = h.Store.AuditPage(ctx, "", nil, 10)
	require.ErrorIs(t, err, broker.ErrInvalidArgument)
	_, err = h.Store.AuditByAction(ctx, "", broker.AuditQuery{Action: broker.ActionMissionGrant, Status: 200, Limit: 1})
	require.ErrorIs(t, err, broker.ErrInvalidArgument)
	_, err = h.Store.VaultErase(ctx, "", nil)
	require.ErrorIs(t, err, broker.ErrInvalidArgument)
}
