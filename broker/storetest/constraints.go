package storetest

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/broker"
)

// requireRejected asserts that writing bad over the valid stored row fails
// with an error naming constraint, both as an update and as an insert of
// a fresh user, and that nothing changed.
func requireRejected(t *testing.T, h Harness, stored *broker.Vault, bad func(v *broker.Vault), constraint string) {
	t.Helper()
	ctx := t.Context()
	insert(t, h, stored)

	v := normalized(stored)
	bad(&v)
	err := h.Store.InUserTx(ctx, stored.UserID, func(tx broker.Tx) error {
		if err := tx.VaultUpdate(ctx, &v); err != nil {
			return err
		}
		return tx.AuditInsert(ctx, auditEntry(stored.UserID, "bad-update", at(7, 0)))
	})
	require.Error(t, err)
	require.ErrorContains(t, err, constraint)
	require.NotErrorIs(t, err, broker.ErrNotFound)
	require.False(t, broker.IsUnavailable(err), "a constraint violation is a bug, not an outage: %v", err)
	requireVaultEqual(t, stored, get(t, h, stored.UserID))
	require.Empty(t, auditRows(t, h, stored.UserID), "the audit row of a failed change must roll back with it")

	fresh := normalized(stored)
	fresh.UserID = newUserID(t)
	bad(&fresh)
	err = h.Store.InUserTx(ctx, fresh.UserID, func(tx broker.Tx) error {
		_, err := tx.VaultInsert(ctx, &fresh)
		return err
	})
	require.ErrorContains(t, err, constraint)
	require.Nil(t, get(t, h, fresh.UserID))
}

func testConstraintZKWithServerWrapRejected(t *testing.T, h Harness) {
	// Zero-knowledge while the server still holds its wrap.
	requireRejected(t, h, fullVault(newUserID(t)), func(v *broker.Vault) {
		v.ZeroKnowledge = true
	}, "encryption_vaults_zk_consistency")
}

func testConstraintWrapIVPair(t *testing.T, h Harness) {
	t.Run("ServerWrapWithoutIV", func(t *testing.T) {
		requireRejected(t, h, fullVault(newUserID(t)), func(v *broker.Vault) {
			v.WrapIV = nil
		}, "encryption_vaults_wrap_iv_pair")
	})
	t.Run("ServerIVWithoutWrap", func(t *testing.T) {
		requireRejected(t, h, fullVault(newUserID(t)), func(v *broker.Vault) {
			v.WrappedMK = nil
		}, "encryption_vaults_wrap_iv_pair")
	})
	t.Run("RecoveryWrapWithoutIV", func(t *testing.T) {
		requireRejected(t, h, fullVault(newUserID(t)), func(v *broker.Vault) {
			v.RecoveryIV = nil
		}, "encryption_vaults_wrap_iv_pair")
	})
}

func testConstraintHasWrap(t *testing.T, h Harness) {
	// No wrap at all: the user would be locked out of their key.
	requireRejected(t, h, fullVault(newUserID(t)), func(v *broker.Vault) {
		v.WrappedMK, v.WrapIV, v.RecoveryWrappedMK, v.RecoveryIV = nil, nil, nil, nil
	}, "encryption_vaults_has_wrap")
}

func testConstraintFormatVersionKnown(t *testing.T, h Harness) {
	requireRejected(t, h, fullVault(newUserID(t)), func(v *broker.Vault) {
		v.FormatVersion = 3
	}, "encryption_vaults_format_version_known")
}
