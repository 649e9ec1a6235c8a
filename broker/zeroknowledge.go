package broker

import (
	"context"
	"errors"
	"fmt"
)

// Zero-knowledge mode: entering it (the server drops its wrap) and leaving it (the client hands the master key back).

// EnableZeroKnowledge drops the server's wrap so that only the recovery
// wrap remains. Idempotent. keyProof is optional (nil: none sent); a
// proof is checked and a wrong one refused with ErrKeyProofMismatch. It
// returns ErrNotFound when the user has no vault and
// ErrRecoveryWrapMissing without a recovery wrap. On a row without a key
// check value or proof verifier (the original service's rows, rows
// written before verifiers) it first unwraps the master key to record
// them, so that a later disable and recovery-wrap replacement can be
// verified.
func (s *Service) EnableZeroKnowledge(ctx context.Context, userID string, keyProof []byte, meta RequestMeta) error {
	if keyProof != nil && len(keyProof) != KeyProofSize {
		return fmt.Errorf("%w: keyProof must be %d bytes", ErrInvalidArgument, KeyProofSize)
	}
	return s.run(ctx, userID, meta, ActionZKEnable, func(o *op) error {
		v, err := o.tx.VaultGet(ctx, true)
		if errors.Is(err, ErrNotFound) {
			return o.refuse(ctx, ActionZKEnable, "no-vault", ErrNotFound)
		}
		if err != nil {
			return err
		}
		wrongProof := func() bool {
			hash, ok := currentProofHash(v)
			return keyProof != nil && ok && !keyProofMatches(keyProof, hash)
		}
		mismatch := func() error {
			return o.refuse(ctx, ActionZKEnable, "key-proof-mismatch", ErrKeyProofMismatch)
		}
		if v.ZeroKnowledge {
			if wrongProof() {
				return mismatch()
			}
			return o.audit(ctx, ActionZKEnable, OutcomeOK, "already-enabled")
		}
		if v.RecoveryWrappedMK == nil || v.RecoveryIV == nil {
			return o.refuse(ctx, ActionZKEnable, "no-recovery-wrap", ErrRecoveryWrapMissing)
		}
		if _, ok := currentProofHash(v); !ok {
			// The row is locked: openOrRefuse opens v itself.
			mk, _, err := o.openOrRefuse(ctx, v)
			if mk == nil {
				return err
			}
			recordKeyCheck(v, mk)
			wipe(mk)
		}
		if wrongProof() {
			return mismatch()
		}
		v.ZeroKnowledge = true
		v.WrappedMK, v.WrapIV = nil, nil
		if err := o.tx.VaultUpdate(ctx, v); err != nil {
			return err
		}
		return o.audit(ctx, ActionZKEnable, OutcomeOK, "")
	})
}

// DisableZeroKnowledge wraps the client-supplied master key with the
// active KEK again and leaves zero-knowledge mode. The key must be the
// vault's master key: a key whose check value differs is refused with
// ErrMasterKeyMismatch rather than silently orphaning the user's data.
// A vault without a key check value (the original service's) cannot
// check the key: its recovery state goes to the restore slot first
// (unless the slot holds one already), so that a wrong key and a later
// rotation or clear cannot lose the wrap the user can open. With
// zero-knowledge already off it only verifies the key (and records a
// missing key check value or proof verifier). It returns ErrNotFound when
// the user has no vault and ErrInvalidArgument for a key that is not 32
// bytes.
func (s *Service) DisableZeroKnowledge(ctx context.Context, userID string, mk []byte, meta RequestMeta) error {
	if len(mk) != MasterKeySize {
		return fmt.Errorf("%w: masterKey must be %d bytes", ErrInvalidArgument, MasterKeySize)
	}
	return s.sealedWrite(ctx, func() error { return s.disableZKOnce(ctx, userID, mk, meta) })
}

func (s *Service) disableZKOnce(ctx context.Context, userID string, mk []byte, meta RequestMeta) error {
	return s.run(ctx, userID, meta, ActionZKDisable, func(o *op) error {
		v, err := o.tx.VaultGet(ctx, true)
		if errors.Is(err, ErrNotFound) {
			return o.refuse(ctx, ActionZKDisable, "no-vault", ErrNotFound)
		}
		if err != nil {
			return err
		}
		mismatch := func() error {
			return o.refuse(ctx, ActionZKDisable, "master-key-mismatch", ErrMasterKeyMismatch)
		}
		if !v.ZeroKnowledge {
			if v.KeyCheck != nil {
				if !keyCheckMatches(mk, *v.KeyCheck) {
					return mismatch()
				}
			} else {
				stored, _, err := o.openOrRefuse(ctx, v) // locked: v itself
				if stored == nil {
					return err
				}
				same := equalConstantTime(stored, mk)
				wipe(stored)
				if !same {
					return mismatch()
				}
			}
			if recordKeyCheck(v, mk) {
				if err := o.tx.VaultUpdate(ctx, v); err != nil {
					return err
				}
			}
			return o.audit(ctx, ActionZKDisable, OutcomeOK, "already-disabled")
		}
		note := ""
		if v.KeyCheck == nil {
			note = s.keepRestorable(v, "unverifiable")
		} else if !keyCheckMatches(mk, *v.KeyCheck) {
			return mismatch()
		}
		wrapped, kekID, err := s.keyring.seal(ctx, userID, mk)
		if err != nil {
			return err
		}
		kcv := KeyCheckValue(mk)
		proof := keyProofVerifier(mk, kcv)
		encodeBoundWrap(v, wrapped, kekID)
		v.KeyCheck, v.KeyProof = &kcv, &proof
		v.ZeroKnowledge = false
		if err := o.tx.VaultUpdate(ctx, v); err != nil {
			return err
		}
		return o.audit(ctx, ActionZKDisable, OutcomeOK, note)
	})
}
