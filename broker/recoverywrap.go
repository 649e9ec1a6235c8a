package broker

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
)

// The recovery wrap: the client-built wrap of the master key under the user's recovery code, and what guards its replacement.

// RecoveryWrapSize and RecoveryIVSize are the lengths the browser's
// AES-256-GCM recovery wrap of a 32-byte master key has.
const (
	RecoveryWrapSize = MasterKeySize + 16
	RecoveryIVSize   = LegacyIVSize
)

// SetRecoveryWrap stores (or replaces) the client-built recovery wrap.
// keyProof is the client's key possession proof (KeyProof), nil when it
// sent none; a proof the server can check must be right.
//
// In zero-knowledge mode the recovery wrap is the only wrap of the master
// key, so a bearer token alone must not replace it:
//   - on a vault with a current proof verifier the proof is required
//     (ErrKeyProofRequired), unless the policy is RecoveryProofOptional,
//     which accepts the replacement after keeping the replaced wrap
//     restorable;
//   - on a vault without one (rows of the original service, rows that
//     went zero-knowledge before verifiers existed) nothing can be
//     checked, so the replaced wrap goes to the restore slot first,
//     unless the slot holds one already: the first wrap survives any
//     number of such replacements.
//
// In standard mode no proof is needed: the server holds a wrap, and a
// token yields the master key anyway. A proof sent there is checked
// against the verifier or, on a vault without one, against the master
// key unwrapped, whose verifier is then recorded.
//
// It returns ErrNotFound when the user has no vault, ErrInvalidArgument
// for wrong lengths, ErrKeyProofRequired or ErrKeyProofMismatch (audited;
// nothing changed), and the unwrap errors of Key when a proof is checked
// against the unwrapped key.
func (s *Service) SetRecoveryWrap(ctx context.Context, userID string, wrappedMK, iv, keyProof []byte, meta RequestMeta) error {
	if len(wrappedMK) != RecoveryWrapSize || len(iv) != RecoveryIVSize {
		return fmt.Errorf("%w: recovery wrap must be %d bytes and its IV %d bytes", ErrInvalidArgument, RecoveryWrapSize, RecoveryIVSize)
	}
	if keyProof != nil && len(keyProof) != KeyProofSize {
		return fmt.Errorf("%w: keyProof must be %d bytes", ErrInvalidArgument, KeyProofSize)
	}
	return s.run(ctx, userID, meta, ActionRecoverySet, func(o *op) error {
		v, err := o.tx.VaultGet(ctx, true)
		if errors.Is(err, ErrNotFound) {
			return o.refuse(ctx, ActionRecoverySet, "no-vault", ErrNotFound)
		}
		if err != nil {
			return err
		}
		note, proceed, err := o.admitRecoveryReplacement(ctx, v, keyProof)
		if !proceed {
			return err
		}
		w, i, now := base64.StdEncoding.EncodeToString(wrappedMK), base64.StdEncoding.EncodeToString(iv), s.now()
		v.RecoveryWrappedMK, v.RecoveryIV, v.RecoverySetAt = &w, &i, &now
		v.RecoveryFormatVersion = 1
		if err := o.tx.VaultUpdate(ctx, v); err != nil {
			return err
		}
		return o.audit(ctx, ActionRecoverySet, OutcomeOK, note)
	})
}

// admitRecoveryReplacement decides whether v's recovery wrap may be
// replaced by a caller who sent keyProof (nil: none), as SetRecoveryWrap
// describes, and prepares v for it: a kept restorable wrap, a recorded
// verifier. It returns the audit note of the replacement, or proceed
// false once the refusal is recorded (err is then the transaction's).
func (o *op) admitRecoveryReplacement(ctx context.Context, v *Vault, keyProof []byte) (note string, proceed bool, err error) {
	refuse := func(note string, reason error) (string, bool, error) {
		return "", false, o.refuse(ctx, ActionRecoverySet, note, reason)
	}
	hash, verifiable := currentProofHash(v)
	switch {
	case keyProof != nil && verifiable:
		if !keyProofMatches(keyProof, hash) {
			return refuse("key-proof-mismatch", ErrKeyProofMismatch)
		}
		return "key-proof", true, nil
	case keyProof != nil && !v.ZeroKnowledge:
		// A standard vault from before verifiers: the server wrap opens
		// to the key the proof must belong to.
		mk, _, err := o.openOrRefuse(ctx, v) // locked: v itself
		if mk == nil {
			return "", false, err
		}
		defer wipe(mk)
		expected := KeyProof(mk)
		same := equalConstantTime(expected, keyProof)
		wipe(expected)
		if !same {
			return refuse("key-proof-mismatch", ErrKeyProofMismatch)
		}
		recordKeyCheck(v, mk)
		return "key-proof", true, nil
	case !v.ZeroKnowledge:
		return "", true, nil
	case keyProof == nil && verifiable:
		if o.s.recoveryProof != RecoveryProofOptional {
			return refuse("key-proof-required", ErrKeyProofRequired)
		}
		return o.s.keepRestorable(v, "unproven"), true, nil
	default:
		// Zero-knowledge without a verifier: whatever was sent, nothing
		// can be checked.
		return o.s.keepRestorable(v, "unverifiable"), true, nil
	}
}

// keepRestorable copies v's recovery state into its restore slot, unless
// the slot holds one already, before a change the server cannot verify.
// It returns the audit note: reason and what happened to the slot.
func (s *Service) keepRestorable(v *Vault, reason string) string {
	if v.Restorable != nil {
		return reason + ";restorable-held"
	}
	if v.RecoveryWrappedMK == nil || v.RecoveryIV == nil {
		return reason
	}
	v.Restorable = &RestorableRecovery{
		WrappedMK:     *v.RecoveryWrappedMK,
		IV:            *v.RecoveryIV,
		FormatVersion: v.RecoveryFormatVersion,
		SetAt:         v.RecoverySetAt,
		KeyCheck:      v.KeyCheck,
		KeyProof:      v.KeyProof,
		TakenAt:       s.now(),
	}
	return reason + ";restorable-kept"
}

// recordKeyCheck records, from mk — a key v is known to wrap — the key
// check value v lacks and the proof verifier v lacks (or has stale). It
// records no verifier when v's key check value is not mk's: such a row
// is damaged, and a verifier would only hide it. It reports whether v
// changed.
func recordKeyCheck(v *Vault, mk []byte) bool {
	changed := false
	if v.KeyCheck == nil {
		kcv := KeyCheckValue(mk)
		v.KeyCheck, changed = &kcv, true
	} else if !keyCheckMatches(mk, *v.KeyCheck) {
		return false
	}
	if _, ok := currentProofHash(v); !ok {
		proof := keyProofVerifier(mk, *v.KeyCheck)
		v.KeyProof, changed = &proof, true
	}
	return changed
}

// ClearRecoveryWrap removes the recovery wrap. It returns ErrNotFound
// when the user has no vault and ErrZKActive in zero-knowledge mode.
func (s *Service) ClearRecoveryWrap(ctx context.Context, userID string, meta RequestMeta) error {
	return s.run(ctx, userID, meta, ActionRecoveryClear, func(o *op) error {
		v, err := o.tx.VaultGet(ctx, true)
		if errors.Is(err, ErrNotFound) {
			return o.refuse(ctx, ActionRecoveryClear, "no-vault", ErrNotFound)
		}
		if err != nil {
			return err
		}
		if v.ZeroKnowledge {
			return o.refuse(ctx, ActionRecoveryClear, "zk-active", ErrZKActive)
		}
		v.RecoveryWrappedMK, v.RecoveryIV, v.RecoverySetAt = nil, nil, nil
		if err := o.tx.VaultUpdate(ctx, v); err != nil {
			return err
		}
		return o.audit(ctx, ActionRecoveryClear, OutcomeOK, "")
	})
}
