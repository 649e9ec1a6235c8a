//go:build cgo

package pkcs11_test

import (
	"bytes"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/kekproviders/kektest"
	"github.com/keybroker/keybroker/kekproviders/pkcs11"
)

// TestLostSessionsAreReopened: a token reset (or a reconnect to a network
// HSM) closes every session and the login with them; the next call opens
// a new session, logs in again and succeeds.
func TestLostSessionsAreReopened(t *testing.T) {
	t.Parallel()
	tok := tokenWithKey(t)
	k := openURI(t, tok.URI("kek", "hsm-reset"))
	ctx := kektest.Context(t, opTimeout)
	b := kektest.Binding("alice", k.ID())
	wrapped, err := k.Wrap(ctx, randomBytes(32), b)
	require.NoError(t, err)
	tok.CloseAllSessions(t)
	_, err = k.Unwrap(ctx, wrapped, b)
	require.NoError(t, err)
	require.Equal(t, 2, pkcs11.Logins(k), "logged in again on the new session")
}

// TestDeletedKeyIsDenied: the key deleted from a token that is still
// there is a refusal (an operator must act), not an outage; a key made
// again under the same label is found again, and the old wraps do not
// open under it.
func TestDeletedKeyIsDenied(t *testing.T) {
	t.Parallel()
	tok := tokenWithKey(t)
	k := openURI(t, tok.URI("kek", "hsm-deleted"))
	ctx := kektest.Context(t, opTimeout)
	b := kektest.Binding("alice", k.ID())
	wrapped, err := k.Wrap(ctx, randomBytes(32), b)
	require.NoError(t, err)

	tok.DeleteKey(t, "kek")
	_, err = k.Unwrap(ctx, wrapped, b)
	kektest.RequireDenied(t, err)
	require.ErrorContains(t, err, "no secret key")
	kektest.RequireDenied(t, k.Status(ctx))

	tok.GenerateKey(t, "kek")
	_, err = k.Unwrap(ctx, wrapped, b)
	kektest.RequireBadData(t, err)
	fresh, err := k.Wrap(ctx, randomBytes(32), b)
	require.NoError(t, err)
	_, err = k.Unwrap(ctx, fresh, b)
	require.NoError(t, err)
}

// TestSessionsAreBounded: many concurrent calls share at most
// MaxSessions sessions, and Close closes them all.
func TestSessionsAreBounded(t *testing.T) {
	t.Parallel()
	tok := tokenWithKey(t)
	cfg := config(tok, "kek", "hsm-bounded")
	cfg.MaxSessions = 2
	k, err := pkcs11.New(kektest.Context(t, opTimeout), cfg)
	require.NoError(t, err)
	var most atomic.Int32
	pkcs11.SetBeforeCall(k, func() {
		n := int32(pkcs11.Sessions(k))
		for {
			m := most.Load()
			if n <= m || most.CompareAndSwap(m, n) {
				return
			}
		}
	})
	ctx := kektest.Context(t, opTimeout)
	var wg sync.WaitGroup
	errs := make(chan error, 32)
	for i := range 32 {
		wg.Go(func() {
			b := kektest.Binding(fmt.Sprintf("user-%d", i), k.ID())
			wrapped, err := k.Wrap(ctx, randomBytes(32), b)
			if err == nil {
				_, err = k.Unwrap(ctx, wrapped, b)
			}
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	require.Positive(t, most.Load())
	require.LessOrEqual(t, most.Load(), int32(2), "sessions open at once")
	require.NoError(t, k.Close())
	require.Zero(t, pkcs11.Sessions(k), "sessions left open after Close")
}

// TestCloseWaitsAndRefuses: Close waits for a call in the token, then
// every call fails with ErrClosed.
func TestCloseWaitsAndRefuses(t *testing.T) {
	t.Parallel()
	tok := tokenWithKey(t)
	k, err := pkcs11.New(kektest.Context(t, opTimeout), config(tok, "kek", "hsm-close"))
	require.NoError(t, err)
	entered := make(chan struct{})
	release := make(chan struct{})
	var once sync.Once
	pkcs11.SetBeforeCall(k, func() {
		once.Do(func() { close(entered) })
		<-release
	})
	ctx := kektest.Context(t, opTimeout)
	wrapDone := make(chan error, 1)
	go func() {
		_, err := k.Wrap(ctx, randomBytes(32), nil)
		wrapDone <- err
	}()
	<-entered
	closed := make(chan error, 1)
	go func() { closed <- k.Close() }()
	select {
	case <-closed:
		t.Fatal("Close returned while a call was in the token")
	case err := <-wrapDone:
		t.Fatalf("the held call returned: %v", err)
	default:
	}
	close(release)
	require.NoError(t, <-wrapDone)
	require.NoError(t, <-closed)
	_, err = k.Wrap(ctx, randomBytes(32), nil)
	require.ErrorIs(t, err, pkcs11.ErrClosed)
}

// TestUnwrapDoesNotTrustGeneralErrors: SoftHSM reports a GCM tag mismatch
// as CKR_GENERAL_ERROR, the code of a failing token. A wrap that does not
// open is bad data only while the self-test wrap still opens; once the
// token itself fails, the same answer is an outage.
func TestUnwrapDoesNotTrustGeneralErrors(t *testing.T) {
	t.Parallel()
	tok := tokenWithKey(t)
	k := openURI(t, tok.URI("kek", "hsm-general"))
	ctx := kektest.Context(t, opTimeout)
	b := kektest.Binding("alice", k.ID())
	wrapped, err := k.Wrap(ctx, randomBytes(32), b)
	require.NoError(t, err)
	tampered := bytes.Clone(wrapped)
	tampered[len(tampered)-1] ^= 1
	_, err = k.Unwrap(ctx, tampered, b)
	kektest.RequireBadData(t, err)

	tok.Remove(t)
	_, err = k.Unwrap(ctx, tampered, b)
	kektest.RequireUnavailable(t, err)
}
