package broker

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"strconv"
)

// Keyring holds the active KEK, which makes every new wrap, and any
// number of decrypt-only KEKs kept so rows they wrapped still open
// during a rotation.
type Keyring struct {
	active KEK
	byID   map[string]KEK
}

// NewKeyring builds a keyring from the active KEK and the decrypt-only
// ones. Ids must be non-empty and unique.
func NewKeyring(active KEK, decryptOnly ...KEK) (*Keyring, error) {
	if active == nil {
		return nil, errors.New("broker: keyring: no active KEK")
	}
	k := &Keyring{active: active, byID: map[string]KEK{}}
	for _, kek := range append([]KEK{active}, decryptOnly...) {
		id := kek.ID()
		if id == "" {
			return nil, errors.New("broker: keyring: a KEK has an empty id")
		}
		if _, dup := k.byID[id]; dup {
			return nil, fmt.Errorf("broker: keyring: KEK id %q configured twice", id)
		}
		k.byID[id] = kek
	}
	return k, nil
}

// ActiveID is the id of the KEK that makes new wraps.
func (k *Keyring) ActiveID() string { return k.active.ID() }

// IDs lists every configured KEK id, the active one first.
func (k *Keyring) IDs() []string {
	ids := []string{k.active.ID()}
	for id := range k.byID {
		if id != k.active.ID() {
			ids = append(ids, id)
		}
	}
	return ids
}

// Lookup returns the KEK with the given id, or ErrUnknownKEK.
func (k *Keyring) Lookup(id string) (KEK, error) {
	kek, ok := k.byID[id]
	if !ok {
		return nil, fmt.Errorf("%w %q", ErrUnknownKEK, id)
	}
	return kek, nil
}

// Binding keys of the format-2 binding context. Local providers encode the
// map canonically as AES-GCM AAD; AWS KMS sends it as EncryptionContext.
const (
	BindingUserID = "user_id"
	BindingKEKID  = "kek_id"
	BindingFormat = "format"
)

// BindingContext is what a format-2 wrap of userID's master key under
// kekID is bound to. A wrap copied into another user's row, or relabelled
// with another KEK id or format, does not unwrap.
func BindingContext(userID, kekID string, format int) map[string]string {
	return map[string]string{
		BindingUserID: userID,
		BindingKEKID:  kekID,
		BindingFormat: strconv.Itoa(format),
	}
}

// seal wraps mk for userID under the active KEK in the bound format and
// checks that the wrap opens again before anyone stores it.
func (k *Keyring) seal(ctx context.Context, userID string, mk []byte) (wrapped []byte, kekID string, err error) {
	kek := k.active
	binding := BindingContext(userID, kek.ID(), FormatBound)
	wrapped, err = kek.Wrap(ctx, mk, binding)
	if err != nil {
		return nil, "", classifyKEKError(errors.New("wrap failed"), err)
	}
	back, err := kek.Unwrap(ctx, wrapped, binding)
	if err != nil {
		return nil, "", classifyKEKError(errors.New("fresh wrap does not unwrap"), err)
	}
	defer wipe(back)
	if !equalConstantTime(back, mk) {
		return nil, "", errors.New("broker: fresh wrap unwraps to a different key")
	}
	return wrapped, kek.ID(), nil
}

// open unwraps a stored wrap of userID's master key.
func (k *Keyring) open(ctx context.Context, userID string, v *Vault) ([]byte, error) {
	if v.WrappedMK == nil {
		return nil, fmt.Errorf("%w: no server wrap", ErrUnwrapFailed)
	}
	kek, err := k.Lookup(v.KEKID)
	if err != nil {
		return nil, err
	}
	ciphertext, err := decodeStoredWrap(v)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrUnwrapFailed, err)
	}
	var binding map[string]string
	switch v.FormatVersion {
	case FormatLegacy:
		binding = nil
	case FormatBound:
		binding = BindingContext(userID, v.KEKID, FormatBound)
	default:
		return nil, fmt.Errorf("%w: unknown format_version %d", ErrUnwrapFailed, v.FormatVersion)
	}
	mk, err := kek.Unwrap(ctx, ciphertext, binding)
	if err != nil {
		return nil, classifyKEKError(ErrUnwrapFailed, err)
	}
	if len(mk) != MasterKeySize {
		wipe(mk)
		return nil, fmt.Errorf("%w: unwrapped %d bytes", ErrUnwrapFailed, len(mk))
	}
	return mk, nil
}

// newMasterKey returns 32 fresh random bytes.
func newMasterKey() []byte {
	mk := make([]byte, MasterKeySize)
	rand.Read(mk) // never fails (crypto/rand, Go ≥ 1.24)
	return mk
}
