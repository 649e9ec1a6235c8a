// Package admintest is the contract every broker.AdminStore passes, run
// by each store's tests beside broker/storetest:
//   - VaultMeta reports the vault exactly as stored (nil when none) and
//     counts only the user's own audit rows;
//   - AuditPage walks every row of the user once, in (CreatedAt, ID)
//     order, ties in CreatedAt included, and never another user's row;
//   - VaultErase deletes the user's vault and audit rows and nothing of
//     any other user, reports what it deleted, and is idempotent.
package admintest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/broker"
)

// Run runs the contract on store, which must implement broker.AdminStore.
// Subtests run in parallel on distinct user ids, so one store serves all.
func Run(t *testing.T, store broker.Store) {
	admin, ok := store.(broker.AdminStore)
	require.True(t, ok, "%T does not implement broker.AdminStore", store)
	tests := []struct {
		name string
		fn   func(t *testing.T, s broker.Store, a broker.AdminStore)
	}{
		{"MetaOfUnknownUserIsNil", testMetaOfUnknownUser},
		{"MetaReportsVaultAndOwnAuditRows", testMetaReportsVault},
		{"AuditPagesWalkEveryRowOnce", testAuditPages},
		{"EraseDeletesOnlyThatUser", testEraseDeletesOnlyThatUser},
		{"EraseIsIdempotent", testEraseIsIdempotent},
		{"EmptyUserIDIsRefused", testEmptyUserID},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tc.fn(t, store, admin)
		})
	}
}

func newUser(prefix string) string {
	var b [6]byte
	rand.Read(b[:])
	return prefix + "-" + hex.EncodeToString(b[:])
}

// at is a fixed clock reading with microsecond precision, which every
// store keeps.
var at = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

func seedVault(t *testing.T, s broker.Store, userID string) *broker.Vault {
	t.Helper()
	wrapped, iv, kcv := "d3JhcHBlZA==", "", "a2N2"
	rotated := at.Add(time.Hour)
	v := &broker.Vault{
		UserID: userID, WrappedMK: &wrapped, WrapIV: &iv, FormatVersion: broker.FormatBound, KEKID: "kek-a",
		KeyCheck: &kcv, CreatedAt: at, RotatedAt: &rotated, RecoveryFormatVersion: 1,
	}
	err := s.InUserTx(context.Background(), userID, func(tx broker.Tx) error {
		_, err := tx.VaultInsert(context.Background(), v)
		return err
	})
	require.NoError(t, err)
	return v
}

// seedAudit writes n audit rows for userID; rows come in pairs that share
// a CreatedAt, so paging must order ties by id.
func seedAudit(t *testing.T, s broker.Store, userID string, n int) {
	t.Helper()
	err := s.InUserTx(context.Background(), userID, func(tx broker.Tx) error {
		for i := range n {
			e := &broker.AuditEntry{
				ID: fmt.Sprintf("%s-%03d", userID, n-i), UserID: userID, Action: broker.ActionFetch,
				IPAddress: "192.0.2.1", UserAgent: "ua", Status: 200, CreatedAt: at.Add(time.Duration(i/2) * time.Second),
			}
			if i%3 == 0 {
				e.IPAddress, e.UserAgent, e.Context = "", "", "note"
			}
			if err := tx.AuditInsert(context.Background(), e); err != nil {
				return err
			}
		}
		return nil
	})
	require.NoError(t, err)
}

func testMetaOfUnknownUser(t *testing.T, _ broker.Store, a broker.AdminStore) {
	v, n, err := a.VaultMeta(context.Background(), newUser("nobody"))
	require.NoError(t, err)
	require.Nil(t, v)
	require.Zero(t, n)
}

func testMetaReportsVault(t *testing.T, s broker.Store, a broker.AdminStore) {
	user, other := newUser("meta"), newUser("meta-other")
	want := seedVault(t, s, user)
	seedAudit(t, s, user, 3)
	seedVault(t, s, other)
	seedAudit(t, s, other, 5)
	v, n, err := a.VaultMeta(context.Background(), user)
	require.NoError(t, err)
	require.NotNil(t, v)
	require.Equal(t, user, v.UserID)
	require.Equal(t, want.KEKID, v.KEKID)
	require.Equal(t, want.FormatVersion, v.FormatVersion)
	require.True(t, want.CreatedAt.Equal(v.CreatedAt))
	require.NotNil(t, v.RotatedAt)
	require.True(t, want.RotatedAt.Equal(*v.RotatedAt))
	require.EqualValues(t, 3, n, "only the user's own audit rows count")
}

func testAuditPages(t *testing.T, s broker.Store, a broker.AdminStore) {
	user, other := newUser("pages"), newUser("pages-other")
	const total = 11
	seedAudit(t, s, user, total)
	seedAudit(t, s, other, 4)
	var got []broker.AuditEntry
	var after *broker.AuditCursor
	for range total + 1 { // bounded: one page per row at most
		page, err := a.AuditPage(context.Background(), user, after, 3)
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

func testEraseDeletesOnlyThatUser(t *testing.T, s broker.Store, a broker.AdminStore) {
	user, other := newUser("erase"), newUser("erase-other")
	seedVault(t, s, user)
	seedAudit(t, s, user, 4)
	seedVault(t, s, other)
	seedAudit(t, s, other, 2)

	res, err := a.VaultErase(context.Background(), user)
	require.NoError(t, err)
	require.Equal(t, broker.EraseResult{VaultDeleted: true, AuditRowsDeleted: 4}, res)

	v, n, err := a.VaultMeta(context.Background(), user)
	require.NoError(t, err)
	require.Nil(t, v)
	require.Zero(t, n)
	err = s.InUserTx(context.Background(), user, func(tx broker.Tx) error {
		_, err := tx.VaultGet(context.Background(), false)
		return err
	})
	require.ErrorIs(t, err, broker.ErrNotFound)

	v, n, err = a.VaultMeta(context.Background(), other)
	require.NoError(t, err)
	require.NotNil(t, v, "another user's vault survives")
	require.EqualValues(t, 2, n, "another user's audit rows survive")
}

func testEraseIsIdempotent(t *testing.T, s broker.Store, a broker.AdminStore) {
	user := newUser("erase-twice")
	seedVault(t, s, user)
	_, err := a.VaultErase(context.Background(), user)
	require.NoError(t, err)
	res, err := a.VaultErase(context.Background(), user)
	require.NoError(t, err)
	require.Equal(t, broker.EraseResult{}, res)
	res, err = a.VaultErase(context.Background(), newUser("never-existed"))
	require.NoError(t, err)
	require.Equal(t, broker.EraseResult{}, res)
}

func testEmptyUserID(t *testing.T, _ broker.Store, a broker.AdminStore) {
	ctx := context.Background()
	_, _, err := a.VaultMeta(ctx, "")
	require.ErrorIs(t, err, broker.ErrInvalidArgument)
	_, err = a.AuditPage(ctx, "", nil, 10)
	require.ErrorIs(t, err, broker.ErrInvalidArgument)
	_, err = a.VaultErase(ctx, "")
	require.ErrorIs(t, err, broker.ErrInvalidArgument)
}
