package broker

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"strconv"
	"sync/atomic"
)

// Keyring holds the active KEK, which makes every new wrap, and any
// number of decrypt-only KEKs kept so rows they wrapped still open
// during a rotation. In cached envelope mode (see LoadKeyring) the active
// KEK is a local data key wrapped by a remote KEK, and the set of data
// keys can grow at run time; the state is swapped atomically.
type Keyring struct {
	state atomic.Pointer[keyringState]
	// dataKeys is non-nil in cached envelope mode.
	dataKeys *dataKeySource
}

type keyringState struct {
	active KEK
	byID   map[string]KEK
	local  []string // ids of the LocalKEKs
}

// LocalKEK is an optional KEK ability: Local reports that Unwrap makes no
// network call, so it fails only for a wrap that does not authenticate.
// The fetch path records such a fetch in the commit of its read.
type LocalKEK interface {
	Local() bool
}

// KEKDestroyer is an optional KEK ability: Destroy zeroes the key
// material the KEK holds, after the calls in flight, and every later call
// fails. It reports whether the memory was overwritten rather than only
// dropped. The keyring destroys a data key's local KEK once the data key
// is no longer loaded.
type KEKDestroyer interface {
	Destroy() bool
}

// NewKeyring builds a keyring from the active KEK and the decrypt-only
// ones. Ids must be non-empty and unique.
func NewKeyring(active KEK, decryptOnly ...KEK) (*Keyring, error) {
	st, err := newKeyringState(active, decryptOnly)
	if err != nil {
		return nil, err
	}
	k := &Keyring{}
	k.state.Store(st)
	return k, nil
}

func newKeyringState(active KEK, decryptOnly []KEK) (*keyringState, error) {
	if active == nil {
		return nil, errors.New("broker: keyring: no active KEK")
	}
	st := &keyringState{active: active, byID: map[string]KEK{}}
	for _, kek := range append([]KEK{active}, decryptOnly...) {
		id := kek.ID()
		if id == "" {
			return nil, errors.New("broker: keyring: a KEK has an empty id")
		}
		if _, dup := st.byID[id]; dup {
			return nil, fmt.Errorf("broker: keyring: KEK id %q configured twice", id)
		}
		st.byID[id] = kek
		if l, ok := kek.(LocalKEK); ok && l.Local() {
			st.local = append(st.local, id)
		}
	}
	return st, nil
}

// ActiveID is the id of the KEK that makes new wraps.
func (k *Keyring) ActiveID() string { return k.state.Load().active.ID() }

// IDs lists every KEK id the keyring can open, the active one first.
func (k *Keyring) IDs() []string {
	st := k.state.Load()
	ids := []string{st.active.ID()}
	for id := range st.byID {
		if id != st.active.ID() {
			ids = append(ids, id)
		}
	}
	return ids
}

// localIDs lists the ids of the KEKs that unwrap locally. The slice is
// shared: callers do not modify it.
func (k *Keyring) localIDs() []string { return k.state.Load().local }

// Lookup returns the KEK with the given id, or ErrUnknownKEK.
func (k *Keyring) Lookup(id string) (KEK, error) {
	kek, ok := k.state.Load().byID[id]
	if !ok {
		return nil, fmt.Errorf("%w %q", ErrUnknownKEK, id)
	}
	return kek, nil
}

// lookup is Lookup that, in envelope mode, reloads the data keys once
// (rate-limited) when the id is unknown: another replica may have made a
// new data key.
func (k *Keyring) lookup(ctx context.Context, id string) (KEK, error) {
	kek, err := k.Lookup(id)
	if err == nil || k.dataKeys == nil {
		return kek, err
	}
	if k.dataKeys.refreshOnMiss(ctx) {
		return k.Lookup(id)
	}
	return nil, err
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
// checks that the wrap opens again before anyone stores it. When the data
// keys were reloaded during the call, whose KEK may then have been
// destroyed under it, a failed seal is tried once more with the new
// active KEK.
func (k *Keyring) seal(ctx context.Context, userID string, mk []byte) (wrapped []byte, kekID string, err error) {
	st := k.state.Load()
	wrapped, kekID, err = sealWith(ctx, st.active, userID, mk)
	if err != nil && k.state.Load() != st {
		wrapped, kekID, err = sealWith(ctx, k.state.Load().active, userID, mk)
	}
	return wrapped, kekID, err
}

func sealWith(ctx context.Context, kek KEK, userID string, mk []byte) (wrapped []byte, kekID string, err error) {
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
	kek, err := k.lookup(ctx, v.KEKID)
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
