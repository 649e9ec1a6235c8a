//go:build cgo

package pkcs11

import (
	"context"
	"errors"
	"fmt"

	cryptoki "github.com/miekg/pkcs11"

	"github.com/keybroker/keybroker/kek"
)

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
