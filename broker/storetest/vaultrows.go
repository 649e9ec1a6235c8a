package storetest

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/broker"
)

func testGetMissingIsNotFound(t *testing.T, h Harness) {
	userID := newUserID(t)
	for _, forUpdate := range []bool{false, true} {
		err := h.Store.InUserTx(t.Context(), userID, func(tx broker.Tx) error {
			v, err := tx.VaultGet(t.Context(), forUpdate)
			require.Nil(t, v)
			return err
		})
		require.ErrorIs(t, err, broker.ErrNotFound, "forUpdate=%v", forUpdate)
		require.False(t, broker.IsUnavailable(err))
	}
}

func testRoundTripEveryField(t *testing.T, h Harness) {
	want := fullVault(newUserID(t))
	insert(t, h, want)
	requireVaultEqual(t, want, get(t, h, want.UserID))
}

func testRoundTripNilPointers(t *testing.T, h Harness) {
	want := legacyVault(newUserID(t))
	insert(t, h, want)
	got := get(t, h, want.UserID)
	requireVaultEqual(t, want, got)
	require.Nil(t, got.KeyCheck)
	require.Nil(t, got.RotatedAt)
	require.Nil(t, got.RecoveryWrappedMK)
	require.Nil(t, got.RecoveryIV)
	require.Nil(t, got.RecoverySetAt)
	require.Nil(t, got.KeyProof)
	require.Nil(t, got.Restorable)
}

func testRoundTripRestorableNilFields(t *testing.T, h Harness) {
	want := zkVault(newUserID(t))
	want.KeyCheck, want.KeyProof = nil, nil
	want.Restorable.SetAt, want.Restorable.KeyCheck, want.Restorable.KeyProof = nil, nil, nil
	insert(t, h, want)
	got := get(t, h, want.UserID)
	requireVaultEqual(t, want, got)
	require.NotNil(t, got.Restorable)
	require.Nil(t, got.Restorable.SetAt)
	require.Nil(t, got.Restorable.KeyCheck)
	require.Nil(t, got.Restorable.KeyProof)

	// Emptying the slot is an update like any other.
	want.Restorable = nil
	require.NoError(t, update(h, t.Context(), want))
	require.Nil(t, get(t, h, want.UserID).Restorable)
}

func testRoundTripZeroKnowledge(t *testing.T, h Harness) {
	want := zkVault(newUserID(t))
	insert(t, h, want)
	got := get(t, h, want.UserID)
	requireVaultEqual(t, want, got)
	require.Nil(t, got.WrappedMK)
	require.Nil(t, got.WrapIV)
	require.True(t, got.ZeroKnowledge)
}

func testInsertConflictReportsFalse(t *testing.T, h Harness) {
	first := fullVault(newUserID(t))
	insert(t, h, first)

	second := legacyVault(first.UserID)
	err := h.Store.InUserTx(t.Context(), first.UserID, func(tx broker.Tx) error {
		inserted, err := tx.VaultInsert(t.Context(), second)
		require.NoError(t, err)
		require.False(t, inserted)
		// The domain reads the existing row after losing; the transaction
		// must still be usable.
		v, err := tx.VaultGet(t.Context(), false)
		require.NoError(t, err)
		requireVaultEqual(t, first, v)
		return nil
	})
	require.NoError(t, err)
	requireVaultEqual(t, first, get(t, h, first.UserID))
}

func testUpdateOverwritesEveryField(t *testing.T, h Harness) {
	before := fullVault(newUserID(t))
	insert(t, h, before)

	after := &broker.Vault{
		UserID:                before.UserID,
		WrappedMK:             ptr("bmV3LXdyYXA="),
		WrapIV:                ptr("bmV3LWl2"),
		FormatVersion:         broker.FormatLegacy,
		KEKID:                 "kek-2025",
		KeyCheck:              nil,
		CreatedAt:             at(10, 999999),
		RotatedAt:             nil,
		RecoveryWrappedMK:     nil,
		RecoveryIV:            nil,
		RecoveryFormatVersion: 2,
		RecoverySetAt:         nil,
		ZeroKnowledge:         false,
	}
	require.NoError(t, update(h, t.Context(), after))
	requireVaultEqual(t, after, get(t, h, before.UserID))

	// And back from nil to set, through the zero-knowledge transition.
	zk := zkVault(before.UserID)
	require.NoError(t, update(h, t.Context(), zk))
	requireVaultEqual(t, zk, get(t, h, before.UserID))
}

func testUpdateMissingIsNotFound(t *testing.T, h Harness) {
	v := fullVault(newUserID(t))
	err := update(h, t.Context(), v)
	require.ErrorIs(t, err, broker.ErrNotFound)
	require.Nil(t, get(t, h, v.UserID), "an update must never create a row")
}

func testEmptyUserRefused(t *testing.T, h Harness) {
	called := false
	err := h.Store.InUserTx(t.Context(), "", func(tx broker.Tx) error {
		called = true
		return nil
	})
	require.Error(t, err)
	require.False(t, called, "fn must not run without a user scope")
}
