//go:build cgo

package pkcs11

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
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
	_ io.Closer         = (*KEK)(nil)
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
