package broker

import (
	"context"
	"errors"
	"log/slog"
	"time"
)

// This file holds the operator's side of the restore slot. The server
// fills the slot (Vault.Restorable) before it accepts a change it cannot
// verify that could lose the last recovery wrap the user can open: a
// zero-knowledge recovery-wrap replacement without a checkable proof, a
// zero-knowledge disable with a key it cannot check. It fills it only
// when it is empty, so the wrap kept is the one from before the first
// such change, whatever followed. Only the operator empties it, by
// restoring or discarding it (or erasure, which deletes the row).

// RestoreResult reports what a restore or discard did.
type RestoreResult struct {
	// RecoverySetAt is when the kept wrap had been set (nil when
	// unknown); TakenAt is when the server kept it.
	RecoverySetAt *time.Time
	TakenAt       time.Time
	// ServerWrapDropped reports that the vault was in standard mode and
	// its server wrap — of a key the server could not verify, or of one
	// minted since — is gone: the vault is in zero-knowledge mode again.
	ServerWrapDropped bool
}

// RestoreRecoveryWrap puts the vault's restorable recovery wrap back, with
// the key check value and proof verifier that belonged to it, in
// zero-knowledge mode: a server wrap, if any, is dropped, and the restore
// slot is emptied. It writes a recovery_restore audit row in the same
// transaction. It returns ErrNotFound when the user has no vault and
// ErrNoRestorableWrap when the slot is empty (both audited).
func (s *Service) RestoreRecoveryWrap(ctx context.Context, userID string, meta RequestMeta) (*RestoreResult, error) {
	return s.changeRestorable(ctx, userID, meta, ActionRecoveryRestore, func(v *Vault) {
		r := v.Restorable
		wrapped, iv := r.WrappedMK, r.IV
		v.RecoveryWrappedMK, v.RecoveryIV = &wrapped, &iv
		v.RecoveryFormatVersion, v.RecoverySetAt = r.FormatVersion, r.SetAt
		v.KeyCheck, v.KeyProof = r.KeyCheck, r.KeyProof
		v.WrappedMK, v.WrapIV, v.ZeroKnowledge = nil, nil, true
	})
}

// DiscardRestorableRecoveryWrap empties the vault's restore slot, for
// when the operator has made sure the kept wrap is not needed. It writes
// a recovery_discard audit row in the same transaction. It returns
// ErrNotFound when the user has no vault and ErrNoRestorableWrap when the
// slot is empty (both audited).
func (s *Service) DiscardRestorableRecoveryWrap(ctx context.Context, userID string, meta RequestMeta) (*RestoreResult, error) {
	return s.changeRestorable(ctx, userID, meta, ActionRecoveryDiscard, func(*Vault) {})
}

// changeRestorable runs change on the vault of a non-empty restore slot,
// then empties the slot.
func (s *Service) changeRestorable(ctx context.Context, userID string, meta RequestMeta, action Action, change func(v *Vault)) (*RestoreResult, error) {
	var res *RestoreResult
	err := s.run(ctx, userID, meta, action, func(o *op) error {
		v, err := o.tx.VaultGet(ctx, true)
		if errors.Is(err, ErrNotFound) {
			return o.refuse(ctx, action, "no-vault", ErrNotFound)
		}
		if err != nil {
			return err
		}
		if v.Restorable == nil {
			return o.refuse(ctx, action, "nothing-restorable", ErrNoRestorableWrap)
		}
		res = &RestoreResult{RecoverySetAt: v.Restorable.SetAt, TakenAt: v.Restorable.TakenAt}
		hadServerWrap := v.WrappedMK != nil
		change(v)
		note := ""
		if hadServerWrap && v.WrappedMK == nil {
			res.ServerWrapDropped, note = true, "server-wrap-dropped"
		}
		v.Restorable = nil
		if err := o.tx.VaultUpdate(ctx, v); err != nil {
			return err
		}
		return o.audit(ctx, action, OutcomeOK, note)
	})
	if err != nil {
		return nil, err
	}
	return res, nil
}

// RestoreRecoveryWrap is Service.RestoreRecoveryWrap for the operator's
// command line, which has the store but no KEK: restoring opens nothing.
func RestoreRecoveryWrap(ctx context.Context, store Store, userID string, meta RequestMeta) (*RestoreResult, error) {
	if store == nil {
		return nil, errors.New("broker: RestoreRecoveryWrap: nil store")
	}
	return storeOnly(store).RestoreRecoveryWrap(ctx, userID, meta)
}

// DiscardRestorableRecoveryWrap is Service.DiscardRestorableRecoveryWrap
// for the operator's command line.
func DiscardRestorableRecoveryWrap(ctx context.Context, store Store, userID string, meta RequestMeta) (*RestoreResult, error) {
	if store == nil {
		return nil, errors.New("broker: DiscardRestorableRecoveryWrap: nil store")
	}
	return storeOnly(store).DiscardRestorableRecoveryWrap(ctx, userID, meta)
}

// storeOnly is a Service without a keyring, for the operations that open
// no wrap.
func storeOnly(store Store) *Service {
	return &Service{store: store, log: slog.Default(), now: time.Now, recoveryProof: RecoveryProofRequired}
}
