package broker

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/keybroker/keybroker/kek"
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
	// onCall is KeyringConfig.OnKEKCall; nil when no one observes.
	onCall func(kek.Call)
	// configured is the active KEK and the decrypt-only ones the keyring
	// was made with: not the data keys.
	configured []KEK
}

type keyringState struct {
	active KEK
	byID   map[string]KEK
	local  []string // ids of the KEKs that unwrap locally (kek.LocalUnwrapper)
}

// NewKeyring builds a keyring from the active KEK and the decrypt-only
// ones. Ids must be non-empty and unique.
func NewKeyring(active KEK, decryptOnly ...KEK) (*Keyring, error) {
	st, err := newKeyringState(active, decryptOnly)
	if err != nil {
		return nil, err
	}
	k := &Keyring{configured: append([]KEK{active}, decryptOnly...)}
	k.state.Store(st)
	return k, nil
}

// Configured lists the KEKs the keyring was made with, the active one
// first: in cached envelope mode the remote KEKs, not their data keys.
func (k *Keyring) Configured() []KEK { return k.configured }

// IsCached reports whether the configured KEK id is in cached envelope
// mode (KeyringConfig.Cached).
func (k *Keyring) IsCached(id string) bool {
	return k.dataKeys != nil && k.dataKeys.isCached(id)
}

func newKeyringState(active KEK, decryptOnly []KEK) (*keyringState, error) {
	if active == nil {
		return nil, errors.New("broker: keyring: no active KEK")
	}
	st := &keyringState{active: active, byID: map[string]KEK{}}
	for _, k := range append([]KEK{active}, decryptOnly...) {
		id := k.ID()
		if id == "" {
			return nil, errors.New("broker: keyring: a KEK has an empty id")
		}
		if _, dup := st.byID[id]; dup {
			return nil, fmt.Errorf("broker: keyring: KEK id %q configured twice", id)
		}
		st.byID[id] = k
		if l, ok := k.(kek.LocalUnwrapper); ok && l.Local() {
			st.local = append(st.local, id)
		}
	}
	return st, nil
}

// CallObserver returns the keyring's KeyringConfig.OnKEKCall for the
// calls others make on of, a KEK of this keyring or one it was configured
// with (readiness probes, the start-up check), so that they are measured
// like the keyring's own. It returns nil when nothing observes, and for
// the stand-in of a data key not loaded yet, which calls no KEK.
func (k *Keyring) CallObserver(of KEK) func(kek.Call) {
	if _, standIn := of.(*unloadedKEK); standIn || k.onCall == nil {
		return nil
	}
	return k.onCall
}

// observed runs call, one call of op on the KEK of, and reports it to
// OnKEKCall. Every KEK call the keyring and the re-wrap job make goes
// through it.
func observed[T any](k *Keyring, of KEK, op string, call func() (T, error)) (T, error) {
	onCall := k.CallObserver(of)
	if onCall == nil {
		return call()
	}
	start := time.Now()
	out, err := call()
	onCall(kek.Call{KEKID: of.ID(), Op: op, Took: time.Since(start), Err: err})
	return out, err
}

// wrap is of.Wrap, observed.
func (k *Keyring) wrap(ctx context.Context, of KEK, plaintext []byte, binding map[string]string) ([]byte, error) {
	return observed(k, of, kek.OpWrap, func() ([]byte, error) { return of.Wrap(ctx, plaintext, binding) })
}

// unwrap is of.Unwrap, observed.
func (k *Keyring) unwrap(ctx context.Context, of KEK, ciphertext []byte, binding map[string]string) ([]byte, error) {
	return observed(k, of, kek.OpUnwrap, func() ([]byte, error) { return of.Unwrap(ctx, ciphertext, binding) })
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

// BindingContext is what a format-2 wrap of userID's master key under
// kekID is bound to. A wrap copied into another user's row, or relabelled
// with another KEK id or format, does not unwrap.
func BindingContext(userID, kekID string, format int) map[string]string {
	return map[string]string{
		kek.BindingUserID: userID,
		kek.BindingKEKID:  kekID,
		kek.BindingFormat: strconv.Itoa(format),
	}
}

// seal wraps mk for userID under the active KEK in the bound format and
// checks that the wrap opens again before anyone stores it. When the data
// keys were reloaded during the call, whose KEK may then have been
// destroyed under it, a failed seal is tried once more with the new
// active KEK.
func (k *Keyring) seal(ctx context.Context, userID string, mk []byte) (wrapped []byte, kekID string, err error) {
	st := k.state.Load()
	wrapped, kekID, err = k.sealWith(ctx, st.active, userID, mk)
	if err != nil && k.state.Load() != st {
		wrapped, kekID, err = k.sealWith(ctx, k.state.Load().active, userID, mk)
	}
	return wrapped, kekID, err
}

func (k *Keyring) sealWith(ctx context.Context, active KEK, userID string, mk []byte) (wrapped []byte, kekID string, err error) {
	binding := BindingContext(userID, active.ID(), FormatBound)
	wrapped, err = k.wrap(ctx, active, mk, binding)
	if err != nil {
		return nil, "", classifyKEKError(errors.New("wrap failed"), err)
	}
	back, err := k.unwrap(ctx, active, wrapped, binding)
	if err != nil {
		return nil, "", classifyKEKError(errors.New("fresh wrap does not unwrap"), err)
	}
	defer wipe(back)
	if !equalConstantTime(back, mk) {
		return nil, "", errors.New("broker: fresh wrap unwraps to a different key")
	}
	return wrapped, active.ID(), nil
}

// open unwraps a stored wrap of userID's master key.
func (k *Keyring) open(ctx context.Context, userID string, v *Vault) ([]byte, error) {
	if v.WrappedMK == nil {
		return nil, fmt.Errorf("%w: no server wrap", ErrUnwrapFailed)
	}
	opener, err := k.lookup(ctx, v.KEKID)
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
	mk, err := k.unwrap(ctx, opener, ciphertext, binding)
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
