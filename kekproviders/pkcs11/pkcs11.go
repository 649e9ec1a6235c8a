//go:build cgo

package pkcs11

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	cryptoki "github.com/miekg/pkcs11"

	"github.com/keybroker/keybroker/kek"
	"github.com/keybroker/keybroker/kekproviders/internal/binding"
)

// Supported reports whether this binary was built with PKCS#11 support
// (cgo): it was.
const Supported = true

const (
	ivSize   = 12
	tagSize  = 16
	keyBytes = 32
)

// ErrClosed is returned by every call on a KEK after Close.
var ErrClosed = errors.New("the PKCS#11 KEK is closed")

// The abilities a PKCS#11 KEK claims. It has no Rewrapper: a token key
// has no versions a ciphertext names; a new key is a new KEK id, moved to
// by the re-wrap job (docs/rotation.md).
var (
	_ kek.KEK           = (*KEK)(nil)
	_ kek.StatusChecker = (*KEK)(nil)
)

// KEK is an AES-256 key inside a PKCS#11 token. It is safe for
// concurrent use: PKCS#11 sessions are not, so each call takes a session
// of its own from a small pool (Config.MaxSessions), opened and logged in
// on demand.
type KEK struct {
	id      string
	sel     Selector
	timeout time.Duration
	mod     *module
	p       *cryptoki.Ctx
	// slot, label and serial are the token's, as found when opened: a
	// call that loses its key checks the token is still the same one.
	slot          uint
	label, serial string

	// slots holds one token per call in flight, at most MaxSessions, so
	// no more sessions are ever open than that.
	slots chan struct{}
	// calls counts the goroutines running a call; Close waits for them.
	calls sync.WaitGroup

	mu     sync.Mutex
	closed bool
	idle   []cryptoki.SessionHandle
	key    cryptoki.ObjectHandle
	// canary is a wrap made by the key at open (and after the key was
	// found again): when a decrypt fails with the module's own generic
	// code for a tag mismatch, the canary opening proves the token works
	// and the wrap was at fault.
	canary []byte
	// tagFailure is what this module answers to a GCM tag mismatch when
	// that is not one of the standard codes (SoftHSM: CKR_GENERAL_ERROR);
	// zero when it is standard.
	tagFailure cryptoki.Error

	// loginMu makes logins one at a time, so that a wrong PIN is tried
	// once, not once per session being opened.
	loginMu sync.Mutex
	pin     []byte
	// pinErr is the token's refusal of the PIN. Once set, no login is
	// tried again: each wrong try counts towards locking the token.
	pinErr   error
	logins   atomic.Int32 // login attempts (tests count them)
	sessions atomic.Int32 // sessions open (tests count them)

	// refindMu makes one call at a time look the key up again.
	refindMu sync.Mutex

	// beforeCall, when set (tests), runs in the call's goroutine with a
	// session taken, before the token is asked: a token that hangs.
	beforeCall func()
}

// Open opens the KEK (see New) as a kek.KEK.
func Open(ctx context.Context, cfg Config) (kek.KEK, error) {
	k, err := New(ctx, cfg)
	if err != nil {
		return nil, err
	}
	return k, nil
}

// New loads the module, finds the token and the key, logs in with the PIN
// and checks the key: an AES-256 token object that is sensitive, not
// extractable and allowed to encrypt and decrypt. It then runs a
// self-test inside the token: a wrap opens under its binding and not
// under another. Opening is bounded by ctx and by three times
// Config.Timeout. A wrong PIN, a key that is missing or may not encrypt
// and decrypt are reported as denied, a token that does not answer as
// unavailable (kek.Classify); an unfit key or URI as a plain error.
func New(ctx context.Context, cfg Config) (*KEK, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("pkcs11 %s: open: %w", cfg.ID, err)
	}
	src, err := cfg.validate()
	if err != nil {
		return nil, err
	}
	pin, err := readPIN(src)
	if err != nil {
		return nil, err
	}
	type opened struct {
		k   *KEK
		err error
	}
	done := make(chan opened, 1)
	go func() {
		k, err := open(cfg, pin)
		done <- opened{k, err}
	}()
	openCtx, cancel := context.WithTimeout(ctx, 3*cfg.Timeout)
	defer cancel()
	select {
	case o := <-done:
		return o.k, o.err
	case <-openCtx.Done():
		// The module still has the call; close what it opens once it
		// returns.
		go func() {
			if o := <-done; o.k != nil {
				o.k.Close()
			}
		}()
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("pkcs11 %s: open %s: %w", cfg.ID, cfg.Selector, err)
		}
		return nil, kek.Unavailable(fmt.Errorf("pkcs11 %s: open %s: no answer from the module within %s: %w", cfg.ID, cfg.Selector, 3*cfg.Timeout, context.DeadlineExceeded))
	}
}

func open(cfg Config, pin []byte) (*KEK, error) {
	mod, err := loadModule(cfg.ModulePath)
	if err != nil {
		clear(pin)
		return nil, fmt.Errorf("pkcs11 %s: %w", cfg.ID, err)
	}
	k := &KEK{
		id:      cfg.ID,
		sel:     cfg.Selector,
		timeout: cfg.Timeout,
		mod:     mod,
		p:       mod.ctx,
		slots:   make(chan struct{}, cfg.MaxSessions),
		pin:     pin,
	}
	if err := k.openToken(); err != nil {
		k.closeNow()
		return nil, classify(fmt.Errorf("pkcs11 %s: open %s: %w", cfg.ID, cfg.Selector, err))
	}
	return k, nil
}

func (k *KEK) openToken() error {
	slot, info, err := k.findToken()
	if err != nil {
		return err
	}
	k.slot, k.label, k.serial = slot, info.Label, info.SerialNumber
	s, err := k.session()
	if err != nil {
		return err
	}
	key, err := k.findKey(s)
	if err == nil {
		err = k.selfTest(s, key)
	}
	k.release(s, err == nil)
	return err
}

// findToken returns the one slot whose token matches the selector.
func (k *KEK) findToken() (uint, cryptoki.TokenInfo, error) {
	slots, err := k.p.GetSlotList(true)
	if err != nil {
		return 0, cryptoki.TokenInfo{}, classify(fmt.Errorf("C_GetSlotList: %w", err))
	}
	type found struct {
		slot uint
		info cryptoki.TokenInfo
	}
	var matches []found
	var seen []string
	for _, slot := range slots {
		info, err := k.p.GetTokenInfo(slot)
		if err != nil || info.Flags&cryptoki.CKF_TOKEN_INITIALIZED == 0 {
			continue
		}
		seen = append(seen, fmt.Sprintf("token=%q serial=%q (slot-id=%d)", info.Label, info.SerialNumber, slot))
		if k.sel.matches(slot, info) {
			matches = append(matches, found{slot, info})
		}
	}
	switch len(matches) {
	case 1:
		return matches[0].slot, matches[0].info, nil
	case 0:
		if len(seen) == 0 {
			return 0, cryptoki.TokenInfo{}, kek.Unavailable(fmt.Errorf("the module %s sees no initialized token", k.mod.path))
		}
		return 0, cryptoki.TokenInfo{}, fmt.Errorf("no token matches %s; the module sees: %s", k.sel, strings.Join(seen, ", "))
	default:
		return 0, cryptoki.TokenInfo{}, fmt.Errorf("%d tokens match %s (%s): add serial= or slot-id= to the URI", len(matches), k.sel, strings.Join(seen, ", "))
	}
}

func (s Selector) matches(slot uint, info cryptoki.TokenInfo) bool {
	return (s.SlotID == nil || *s.SlotID == slot) &&
		(s.TokenLabel == "" || s.TokenLabel == info.Label) &&
		(s.Manufacturer == "" || s.Manufacturer == info.ManufacturerID) &&
		(s.Model == "" || s.Model == info.Model) &&
		(s.Serial == "" || s.Serial == info.SerialNumber)
}

// findKey finds the one secret key the selector names and checks it.
func (k *KEK) findKey(s cryptoki.SessionHandle) (cryptoki.ObjectHandle, error) {
	template := []*cryptoki.Attribute{cryptoki.NewAttribute(cryptoki.CKA_CLASS, cryptoki.CKO_SECRET_KEY)}
	if k.sel.Object != "" {
		template = append(template, cryptoki.NewAttribute(cryptoki.CKA_LABEL, k.sel.Object))
	}
	if k.sel.ObjectID != nil {
		template = append(template, cryptoki.NewAttribute(cryptoki.CKA_ID, k.sel.ObjectID))
	}
	if err := k.p.FindObjectsInit(s, template); err != nil {
		return 0, classify(errorf("find the key: C_FindObjectsInit", err))
	}
	handles, _, err := k.p.FindObjects(s, 2)
	if ferr := k.p.FindObjectsFinal(s); err == nil {
		err = ferr
	}
	if err != nil {
		return 0, classify(errorf("find the key: C_FindObjects", err))
	}
	switch len(handles) {
	case 0:
		return 0, kek.Denied(fmt.Errorf("no secret key %s on the token (or the PIN's user may not see it)", k.sel))
	case 1:
	default:
		return 0, fmt.Errorf("more than one secret key matches %s: add id= (the key's CKA_ID) to the URI", k.sel)
	}
	key := handles[0]
	return key, k.checkKey(s, key)
}

// checkKey refuses a key that is not a non-extractable AES-256 token key
// allowed to encrypt and decrypt.
func (k *KEK) checkKey(s cryptoki.SessionHandle, key cryptoki.ObjectHandle) error {
	keyType, err := k.ulongAttr(s, key, cryptoki.CKA_KEY_TYPE)
	if err != nil {
		return err
	}
	if keyType != cryptoki.CKK_AES {
		return fmt.Errorf("the key is not an AES key (CKA_KEY_TYPE 0x%X)", keyType)
	}
	size, err := k.ulongAttr(s, key, cryptoki.CKA_VALUE_LEN)
	if err != nil {
		return err
	}
	if size != keyBytes {
		return fmt.Errorf("the key is AES-%d: keybroker's KEKs are AES-256 (CKA_VALUE_LEN 32)", size*8)
	}
	flags := map[uint]bool{}
	for _, typ := range []uint{cryptoki.CKA_TOKEN, cryptoki.CKA_SENSITIVE, cryptoki.CKA_EXTRACTABLE, cryptoki.CKA_ENCRYPT, cryptoki.CKA_DECRYPT} {
		if flags[typ], err = k.boolAttr(s, key, typ); err != nil {
			return err
		}
	}
	if !flags[cryptoki.CKA_TOKEN] {
		return fmt.Errorf("the key is a session object, gone with its session: generate it with CKA_TOKEN=true")
	}
	if flags[cryptoki.CKA_EXTRACTABLE] || !flags[cryptoki.CKA_SENSITIVE] {
		return fmt.Errorf("the key can leave the token (CKA_EXTRACTABLE=%t, CKA_SENSITIVE=%t): a KEK must be generated inside the token with CKA_SENSITIVE=true and CKA_EXTRACTABLE=false, so that no one can read it out; generate a new key that way (docs/providers.md#pkcs11-hardware-security-modules)",
			flags[cryptoki.CKA_EXTRACTABLE], flags[cryptoki.CKA_SENSITIVE])
	}
	if !flags[cryptoki.CKA_ENCRYPT] || !flags[cryptoki.CKA_DECRYPT] {
		return kek.Denied(fmt.Errorf("the key may not encrypt and decrypt (CKA_ENCRYPT=%t, CKA_DECRYPT=%t)", flags[cryptoki.CKA_ENCRYPT], flags[cryptoki.CKA_DECRYPT]))
	}
	return nil
}

func (k *KEK) attr(s cryptoki.SessionHandle, obj cryptoki.ObjectHandle, typ uint) ([]byte, error) {
	attrs, err := k.p.GetAttributeValue(s, obj, []*cryptoki.Attribute{cryptoki.NewAttribute(typ, nil)})
	if err != nil {
		return nil, classify(errorf(fmt.Sprintf("read attribute 0x%X of the key", typ), err))
	}
	return attrs[0].Value, nil
}

func (k *KEK) boolAttr(s cryptoki.SessionHandle, obj cryptoki.ObjectHandle, typ uint) (bool, error) {
	v, err := k.attr(s, obj, typ)
	if err != nil {
		return false, err
	}
	if len(v) != 1 {
		return false, fmt.Errorf("the key's attribute 0x%X is %d bytes, not a CK_BBOOL", typ, len(v))
	}
	return v[0] != 0, nil
}

func (k *KEK) ulongAttr(s cryptoki.SessionHandle, obj cryptoki.ObjectHandle, typ uint) (uint64, error) {
	v, err := k.attr(s, obj, typ)
	if err != nil {
		return 0, err
	}
	switch len(v) {
	case 8:
		return binary.NativeEndian.Uint64(v), nil
	case 4:
		return uint64(binary.NativeEndian.Uint32(v)), nil
	default:
		return 0, fmt.Errorf("the key's attribute 0x%X is %d bytes, not a CK_ULONG", typ, len(v))
	}
}

// selfTestBinding is the binding of the self-test's wraps.
func (k *KEK) selfTestBinding(user string) []byte {
	return binding.AAD(map[string]string{
		kek.BindingUserID: user,
		kek.BindingKEKID:  k.id,
		kek.BindingFormat: "2",
	})
}

// selfTest makes a wrap with key and checks that the token opens it under
// its binding, returns the same bytes, and refuses it under another
// binding. It learns the module's answer to a tag mismatch and keeps the
// wrap as the canary; then key is the KEK's key.
func (k *KEK) selfTest(s cryptoki.SessionHandle, key cryptoki.ObjectHandle) error {
	plaintext := make([]byte, keyBytes)
	rand.Read(plaintext)
	aad := k.selfTestBinding("keybroker:pkcs11-self-test")
	wrapped, err := k.encrypt(s, key, plaintext, aad)
	if rv, ok := rvOf(err); ok && rv == cryptoki.CKR_MECHANISM_INVALID {
		return fmt.Errorf("self-test: the token does not offer CKM_AES_GCM, which keybroker needs (pkcs11-tool --list-mechanisms shows a token's mechanisms): %w", err)
	}
	if err != nil {
		return classify(errorf("self-test: wrap", err))
	}
	back, err := k.decrypt(s, key, wrapped, aad)
	if err != nil {
		return classify(errorf("self-test: unwrap", err))
	}
	if subtle.ConstantTimeCompare(back, plaintext) != 1 {
		return fmt.Errorf("self-test: the token's AES-GCM decrypt returned other bytes than it encrypted")
	}
	_, err = k.decrypt(s, key, wrapped, k.selfTestBinding("keybroker:pkcs11-self-test-other"))
	if err == nil {
		return fmt.Errorf("self-test: the token opened a wrap under another binding: its CKM_AES_GCM ignores the additional authenticated data; it cannot bind wraps to their rows")
	}
	rv, ok := rvOf(err)
	if !ok {
		return errorf("self-test: unwrap under another binding", err)
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	k.key, k.canary = key, wrapped
	if !tagMismatchRVs[rv] {
		k.tagFailure = rv
	}
	return nil
}

func gcm(iv, aad []byte) (*cryptoki.GCMParams, []*cryptoki.Mechanism) {
	params := cryptoki.NewGCMParams(iv, aad, tagSize*8)
	return params, []*cryptoki.Mechanism{cryptoki.NewMechanism(cryptoki.CKM_AES_GCM, params)}
}

// encrypt is one C_EncryptInit and C_Encrypt with CKM_AES_GCM: a random
// IV, the binding as AAD, a 128-bit tag. It returns IV ‖ ciphertext ‖ tag
// with the IV the token reports having used (a token may generate its
// own and write it back).
func (k *KEK) encrypt(s cryptoki.SessionHandle, key cryptoki.ObjectHandle, plaintext, aad []byte) ([]byte, error) {
	iv := make([]byte, ivSize)
	rand.Read(iv)
	params, mech := gcm(iv, aad)
	defer params.Free()
	if err := k.p.EncryptInit(s, mech, key); err != nil {
		return nil, err
	}
	sealed, err := k.p.Encrypt(s, plaintext)
	if err != nil {
		return nil, err
	}
	used := params.IV()
	if len(used) != ivSize || len(sealed) != len(plaintext)+tagSize {
		return nil, fmt.Errorf("the token's AES-GCM answer has a %d-byte IV and %d bytes for %d: want a %d-byte IV and a %d-byte tag",
			len(used), len(sealed), len(plaintext), ivSize, tagSize)
	}
	out := make([]byte, 0, ivSize+len(sealed))
	return append(append(out, used...), sealed...), nil
}

// decrypt opens IV ‖ ciphertext ‖ tag; the caller checked its length.
func (k *KEK) decrypt(s cryptoki.SessionHandle, key cryptoki.ObjectHandle, wrapped, aad []byte) ([]byte, error) {
	params, mech := gcm(wrapped[:ivSize], aad)
	defer params.Free()
	if err := k.p.DecryptInit(s, mech, key); err != nil {
		return nil, err
	}
	return k.p.Decrypt(s, wrapped[ivSize:])
}

// ID returns the KEK id.
func (k *KEK) ID() string { return k.id }

// Wrap encrypts plaintext inside the token, bound to b. Errors: the
// context's; kek.Unavailable when the token is gone, failing or does not
// answer within the timeout; kek.Denied when it refuses (the PIN, a key
// no longer allowed to encrypt, a deleted key); ErrClosed after Close.
func (k *KEK) Wrap(ctx context.Context, plaintext []byte, b map[string]string) ([]byte, error) {
	input := bytes.Clone(plaintext) // the caller may wipe its copy once we return
	aad := binding.AAD(b)
	var out []byte
	err := k.call(ctx, "wrap", func(s cryptoki.SessionHandle, key cryptoki.ObjectHandle) error {
		var err error
		out, err = k.encrypt(s, key, input, aad)
		return err
	}, func() { clear(input) })
	if err != nil {
		return nil, err
	}
	return out, nil
}

// Unwrap decrypts a wrap made by Wrap with the same binding inside the
// token. A wrap that does not open (corrupt, another key's, another
// binding) is kek.ErrInvalidCiphertext; other errors as for Wrap.
func (k *KEK) Unwrap(ctx context.Context, ciphertext []byte, b map[string]string) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("pkcs11 %s: unwrap: %w", k.id, err)
	}
	if len(ciphertext) < ivSize+tagSize {
		return nil, fmt.Errorf("pkcs11 %s: unwrap: %w: %d bytes is too short", k.id, kek.ErrInvalidCiphertext, len(ciphertext))
	}
	input := bytes.Clone(ciphertext)
	aad := binding.AAD(b)
	var out []byte
	err := k.call(ctx, "unwrap", func(s cryptoki.SessionHandle, key cryptoki.ObjectHandle) error {
		plaintext, err := k.decrypt(s, key, input, aad)
		if err != nil {
			return k.decryptFailed(s, key, err)
		}
		out = plaintext
		return nil
	}, nil)
	if err != nil {
		return nil, err
	}
	return out, nil
}

// errBadWrap marks a decrypt that the token refused because the wrap
// does not authenticate.
type errBadWrap struct{ err error }

func (e errBadWrap) Error() string { return e.err.Error() }
func (e errBadWrap) Unwrap() error { return e.err }

// decryptFailed tells a wrap that does not open from a token that does
// not work. A standard tag-mismatch code says so itself. The module's own
// code for it, when that is a generic one (a general error), is believed
// only once the canary still opens on the same session.
func (k *KEK) decryptFailed(s cryptoki.SessionHandle, key cryptoki.ObjectHandle, err error) error {
	rv, ok := rvOf(err)
	if !ok {
		return err
	}
	if tagMismatchRVs[rv] {
		return errBadWrap{err}
	}
	k.mu.Lock()
	tagFailure, canary := k.tagFailure, k.canary
	k.mu.Unlock()
	if tagFailure == 0 || rv != tagFailure {
		return err
	}
	if _, cerr := k.decrypt(s, key, canary, k.selfTestBinding("keybroker:pkcs11-self-test")); cerr != nil {
		// The token fails even on a wrap it made: not the data's fault.
		return fmt.Errorf("%w (and the self-test wrap no longer opens: %v)", err, cerr)
	}
	return errBadWrap{err}
}

// Status reports whether the key can be used: the token answers, the
// key is still there and still allowed to encrypt and decrypt (denied
// otherwise).
func (k *KEK) Status(ctx context.Context) error {
	return k.call(ctx, "status", func(s cryptoki.SessionHandle, key cryptoki.ObjectHandle) error {
		for _, typ := range []uint{cryptoki.CKA_ENCRYPT, cryptoki.CKA_DECRYPT} {
			v, err := k.p.GetAttributeValue(s, key, []*cryptoki.Attribute{cryptoki.NewAttribute(typ, nil)})
			if err != nil {
				return err
			}
			if len(v[0].Value) != 1 || v[0].Value[0] == 0 {
				return kek.Denied(fmt.Errorf("the key %s may no longer encrypt and decrypt (CKA_ENCRYPT or CKA_DECRYPT is false)", k.sel))
			}
		}
		return nil
	}, nil)
}

// op is one call to the token with a session and the key's handle. It
// returns the module's error as it is; call classifies it.
type op func(s cryptoki.SessionHandle, key cryptoki.ObjectHandle) error

// call runs fn in a goroutine of its own, bounded by ctx and the per-call
// timeout: a PKCS#11 call cannot be interrupted, so a caller whose time
// is up returns and leaves the goroutine to finish and give the session
// back. Waiting for a free session counts towards the timeout. after,
// when not nil, runs in that goroutine once the call is over.
func (k *KEK) call(ctx context.Context, name string, fn op, after func()) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("pkcs11 %s: %s: %w", k.id, name, err)
	}
	callCtx, cancel := context.WithTimeout(ctx, k.timeout)
	defer cancel()
	select {
	case k.slots <- struct{}{}:
	case <-callCtx.Done():
		return k.doneErr(ctx, name, fmt.Sprintf("waiting for one of %d sessions, all busy", cap(k.slots)))
	}
	k.mu.Lock()
	if k.closed {
		k.mu.Unlock()
		<-k.slots
		return fmt.Errorf("pkcs11 %s: %s: %w", k.id, name, ErrClosed)
	}
	k.calls.Add(1)
	k.mu.Unlock()
	done := make(chan error, 1)
	go func() {
		defer k.calls.Done()
		defer func() { <-k.slots }()
		err := k.run(name, fn)
		if after != nil {
			after()
		}
		done <- err
	}()
	select {
	case err := <-done:
		return err
	case <-callCtx.Done():
		return k.doneErr(ctx, name, "no answer from the token")
	}
}

// doneErr is the error of a call whose time ran out: the caller's own
// deadline or cancellation as its context error, the per-call timeout as
// an outage.
func (k *KEK) doneErr(parent context.Context, name, what string) error {
	if err := parent.Err(); err != nil {
		return fmt.Errorf("pkcs11 %s: %s: %s: %w", k.id, name, what, err)
	}
	return kek.Unavailable(fmt.Errorf("pkcs11 %s: %s: %s within %s: %w", k.id, name, what, k.timeout, context.DeadlineExceeded))
}

// run makes the call, retrying it on a new session when the session was
// lost (a token reset or reconnect), and after finding the key again when
// its handle went stale — each at most once. Both happen in a row when a
// token reset logs the application out, which invalidates the handles of
// private objects.
func (k *KEK) run(name string, fn op) error {
	var sessionRenewed, keyRefound bool
	for {
		err := k.attempt(fn)
		var retry *retryError
		if !errors.As(err, &retry) {
			return k.finish(name, err)
		}
		if retry.refind {
			if keyRefound {
				return k.finish(name, retry.err)
			}
			keyRefound = true
			if err := k.refind(retry.key); err != nil {
				return k.finish(name, err)
			}
			continue
		}
		if sessionRenewed {
			return k.finish(name, retry.err)
		}
		sessionRenewed = true
	}
}

// finish classifies err and names the call in it.
func (k *KEK) finish(name string, err error) error {
	if err == nil {
		return nil
	}
	var bad errBadWrap
	if errors.As(err, &bad) {
		return fmt.Errorf("pkcs11 %s: %s: %w (%v)", k.id, name, kek.ErrInvalidCiphertext, bad.err)
	}
	return classify(fmt.Errorf("pkcs11 %s: %s: %w", k.id, name, err))
}

// retryError asks run to try once more.
type retryError struct {
	err    error
	refind bool                  // find the key again first
	key    cryptoki.ObjectHandle // the handle that went stale
}

func (e *retryError) Error() string { return e.err.Error() }
func (e *retryError) Unwrap() error { return e.err }

// attempt runs fn once on a session from the pool and decides what
// becomes of the session: back to the pool unless the error says it is
// lost or the token is failing.
func (k *KEK) attempt(fn op) error {
	s, err := k.session()
	if err != nil {
		return err
	}
	if k.beforeCall != nil {
		k.beforeCall()
	}
	k.mu.Lock()
	key := k.key
	k.mu.Unlock()
	err = fn(s, key)
	rv, isRV := rvOf(err)
	var bad errBadWrap
	switch {
	case err == nil, errors.As(err, &bad):
		k.release(s, true)
		return err
	case isRV && sessionLostRVs[rv]:
		// A token reset or a reconnect closes every session: the idle
		// ones are as dead as this one, and the retry must not take them.
		k.release(s, false)
		k.dropIdle()
		return &retryError{err: err}
	case isRV && handleLostRVs[rv]:
		k.release(s, true)
		return &retryError{err: err, refind: true, key: key}
	case isRV && outageRVs[rv]:
		k.release(s, false)
		return err
	default:
		k.release(s, true)
		return err
	}
}

// refind looks the key up again after its handle went stale. The token
// being gone, or another token in its slot, is an outage; the token
// without the key is a refusal (someone deleted it).
func (k *KEK) refind(stale cryptoki.ObjectHandle) error {
	k.refindMu.Lock()
	defer k.refindMu.Unlock()
	k.mu.Lock()
	current := k.key
	k.mu.Unlock()
	if current != stale {
		return nil // another call found it already
	}
	info, err := k.p.GetTokenInfo(k.slot)
	if err != nil {
		return kek.Unavailable(fmt.Errorf("the key's handle is no longer valid and the token %q is not there (C_GetTokenInfo: %w)", k.label, err))
	}
	if info.Label != k.label || info.SerialNumber != k.serial {
		return kek.Unavailable(fmt.Errorf("slot %d now holds token %q (serial %q), not %q (serial %q)", k.slot, info.Label, info.SerialNumber, k.label, k.serial))
	}
	s, err := k.session()
	if err != nil {
		return err
	}
	key, err := k.findKey(s)
	if err == nil {
		err = k.selfTest(s, key)
	}
	rv, isRV := rvOf(err)
	k.release(s, !(isRV && (outageRVs[rv] || sessionLostRVs[rv])))
	return err
}

// session takes an idle session or opens one, logged in.
func (k *KEK) session() (cryptoki.SessionHandle, error) {
	k.mu.Lock()
	if n := len(k.idle); n > 0 {
		s := k.idle[n-1]
		k.idle = k.idle[:n-1]
		k.mu.Unlock()
		return s, nil
	}
	k.mu.Unlock()
	// A read-only session: encrypting and decrypting with a token key
	// needs no more.
	s, err := k.p.OpenSession(k.slot, cryptoki.CKF_SERIAL_SESSION)
	if err != nil {
		return 0, classify(fmt.Errorf("open a session on token %q: %w", k.label, err))
	}
	k.sessions.Add(1)
	if err := k.login(s); err != nil {
		k.closeSession(s)
		return 0, err
	}
	return s, nil
}

// login logs the application in as the token's user unless it is
// already: the login state is the application's, shared by all its
// sessions with the token. A refused PIN is never tried again.
func (k *KEK) login(s cryptoki.SessionHandle) error {
	loggedIn := func() (bool, error) {
		info, err := k.p.GetSessionInfo(s)
		if err != nil {
			return false, classify(fmt.Errorf("C_GetSessionInfo: %w", err))
		}
		return info.State == cryptoki.CKS_RO_USER_FUNCTIONS || info.State == cryptoki.CKS_RW_USER_FUNCTIONS, nil
	}
	if ok, err := loggedIn(); ok || err != nil {
		return err
	}
	k.loginMu.Lock()
	defer k.loginMu.Unlock()
	if k.pinErr != nil {
		return k.pinErr
	}
	if ok, err := loggedIn(); ok || err != nil {
		return err // another session logged in meanwhile
	}
	k.logins.Add(1)
	err := k.p.Login(s, cryptoki.CKU_USER, string(k.pin))
	rv, isRV := rvOf(err)
	switch {
	case err == nil, isRV && rv == cryptoki.CKR_USER_ALREADY_LOGGED_IN:
		return nil
	case isRV && pinRVs[rv]:
		k.pinErr = kek.Denied(fmt.Errorf("token %q refused the PIN (%w); keybroker will not try it again, since wrong tries lock the token: fix the PIN and restart", k.label, err))
		return k.pinErr
	default:
		return classify(fmt.Errorf("log in to token %q: %w", k.label, err))
	}
}

// release gives a session back to the pool, or closes it when it is not
// to be reused or the KEK is closed.
func (k *KEK) release(s cryptoki.SessionHandle, keep bool) {
	k.mu.Lock()
	if keep && !k.closed {
		k.idle = append(k.idle, s)
		k.mu.Unlock()
		return
	}
	k.mu.Unlock()
	k.closeSession(s)
}

func (k *KEK) closeSession(s cryptoki.SessionHandle) {
	k.sessions.Add(-1)
	_ = k.p.CloseSession(s) // a lost session may refuse; nothing to do
}

// errorf names what failed in err.
// dropIdle closes the idle sessions.
func (k *KEK) dropIdle() {
	k.mu.Lock()
	idle := k.idle
	k.idle = nil
	k.mu.Unlock()
	for _, s := range idle {
		k.closeSession(s)
	}
}

func errorf(what string, err error) error {
	return fmt.Errorf("%s: %w", what, err)
}

// closeWait is the least time Close waits for the calls in flight.
const closeWait = 5 * time.Second

// Close waits for the calls in flight (at most one timeout, and at least
// closeWait: a token that hangs keeps its sessions), closes the sessions,
// forgets the PIN and releases the module, which the last KEK over it
// finalizes. Later calls fail with ErrClosed.
func (k *KEK) Close() error {
	k.mu.Lock()
	if k.closed {
		k.mu.Unlock()
		return nil
	}
	k.closed = true
	k.mu.Unlock()
	finished := make(chan struct{})
	go func() {
		k.calls.Wait()
		close(finished)
	}()
	select {
	case <-finished:
	case <-time.After(max(k.timeout, closeWait)):
		return fmt.Errorf("pkcs11 %s: close: calls are still in the token after %s; its sessions and the module stay open", k.id, max(k.timeout, closeWait))
	}
	k.closeNow()
	return nil
}

// closeNow closes the idle sessions, wipes the PIN and releases the
// module; no call may be in flight.
func (k *KEK) closeNow() {
	k.mu.Lock()
	k.closed = true
	k.mu.Unlock()
	k.dropIdle()
	k.loginMu.Lock()
	clear(k.pin)
	k.pin = nil
	k.loginMu.Unlock()
	k.mod.release()
}
