// Package kektest is the conformance suite every KEK provider passes. A
// provider's test builds a Subject against a real peer (local-kms, an
// in-process fake of the GCP or Vault API, a key on disk) and calls Run.
//
// The suite checks what the broker relies on: a wrap opens only under the
// same key and the same binding; a done or stalled context returns
// promptly; an unreachable backend is reported as unavailable and a
// refusal as denied (see kek.Classify), never as corrupt data.
package kektest

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"maps"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/kek"
)

// Subject is one provider under test.
type Subject struct {
	// KEK is the provider under test, ready to use.
	KEK kek.KEK
	// Other is a KEK of the same provider over a different key; what it
	// wraps must not open under KEK.
	Other kek.KEK
	// Outage returns a working KEK over a backend of its own and a
	// function that takes that backend down (closes its listener). Nil
	// for providers without a backend: those subtests are skipped.
	Outage func(t *testing.T) (k kek.KEK, down func())
	// Deny returns a working KEK and a function that makes its backend
	// refuse it (disables the key, revokes the credential). Nil for
	// providers without a backend.
	Deny func(t *testing.T) (k kek.KEK, deny func())
	// Stalled returns a KEK with the given per-call timeout whose backend
	// accepts connections and never answers: the one at addr (a
	// BlackHole), or — for a provider that must talk to its backend
	// while being opened — a backend of its own made to hang once the
	// KEK is open. Nil for providers without a backend.
	Stalled func(t *testing.T, addr string, timeout time.Duration) kek.KEK
	// Rotate adds a version to KEK's backend key, which new wraps then
	// use (Vault Transit's rotate, a new Cloud KMS primary version). Nil
	// for a key without versions (a local key) and for AWS KMS, whose
	// backing keys no ciphertext names and local-kms cannot rotate.
	Rotate func(t *testing.T)
}

// opTimeout bounds every call the suite expects to succeed.
const opTimeout = 30 * time.Second

// prompt is how long a call that must give up early may take. It is
// generous because the machine may be busy; a provider that ignores its
// context blocks for a minute and fails it.
const prompt = 10 * time.Second

// Run runs the conformance suite against the subject newSubject builds.
func Run(t *testing.T, newSubject func(t *testing.T) Subject) {
	t.Helper()
	s := newSubject(t)
	require.NotNil(t, s.KEK, "Subject.KEK")
	require.NotNil(t, s.Other, "Subject.Other")

	t.Run("ID", func(t *testing.T) { testID(t, s) })
	t.Run("RoundTrip", func(t *testing.T) { testRoundTrip(t, s) })
	t.Run("WrapIsRandomised", func(t *testing.T) { testRandomised(t, s) })
	t.Run("InputsUntouched", func(t *testing.T) { testInputsUntouched(t, s) })
	t.Run("DifferentBindingFails", func(t *testing.T) { testDifferentBinding(t, s) })
	t.Run("EmptyAndNonEmptyBindingDiffer", func(t *testing.T) { testEmptyBinding(t, s) })
	t.Run("ForeignKeyFails", func(t *testing.T) { testForeignKey(t, s) })
	t.Run("CorruptCiphertextFails", func(t *testing.T) { testCorrupt(t, s) })
	t.Run("CancelledContext", func(t *testing.T) { testCancelled(t, s) })
	t.Run("Status", func(t *testing.T) { testStatus(t, s) })
	t.Run("Concurrent", func(t *testing.T) { testConcurrent(t, s) })
	t.Run("CallerDeadlineOnStalledBackend", func(t *testing.T) { testCallerDeadline(t, s) })
	t.Run("PerCallTimeoutOnStalledBackend", func(t *testing.T) { testPerCallTimeout(t, s) })
	t.Run("OutageIsUnavailable", func(t *testing.T) { testOutage(t, s) })
	t.Run("RefusalIsDenied", func(t *testing.T) { testDenied(t, s) })
	t.Run("RewrapNeedsVersions", func(t *testing.T) { testRewrapNeedsVersions(t, s) })
	t.Run("KeyRotation", func(t *testing.T) { testKeyRotation(t, s) })
}

// Binding returns a format-2 style binding context, as the broker binds a
// user's wrap (providers, and so their tests, do not import broker).
func Binding(userID, kekID string) map[string]string {
	return map[string]string{kek.BindingUserID: userID, kek.BindingKEKID: kekID, kek.BindingFormat: "2"}
}

// Context returns a context bounded by d and by the test.
func Context(t *testing.T, d time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), d)
	t.Cleanup(cancel)
	return ctx
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

func testID(t *testing.T, s Subject) {
	require.NotEmpty(t, s.KEK.ID())
	require.Equal(t, s.KEK.ID(), s.KEK.ID(), "ID must be stable")
}

func testRoundTrip(t *testing.T, s Subject) {
	ctx := Context(t, opTimeout)
	cases := []struct {
		name    string
		size    int
		binding map[string]string
	}{
		{"MasterKeyBound", 32, Binding("alice", s.KEK.ID())},
		{"MasterKeyUnbound", 32, nil},
		{"OneByte", 1, Binding("bob", s.KEK.ID())},
		{"Larger", 256, Binding("carol", s.KEK.ID())},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			plaintext := randomBytes(tc.size)
			wrapped, err := s.KEK.Wrap(ctx, plaintext, tc.binding)
			require.NoError(t, err)
			require.NotEmpty(t, wrapped)
			if tc.size >= 16 {
				require.False(t, bytes.Contains(wrapped, plaintext), "the wrap contains the plaintext")
			}
			back, err := s.KEK.Unwrap(ctx, wrapped, tc.binding)
			require.NoError(t, err)
			require.Equal(t, plaintext, back)
		})
	}
}

func testRandomised(t *testing.T, s Subject) {
	ctx := Context(t, opTimeout)
	plaintext := randomBytes(32)
	b := Binding("alice", s.KEK.ID())
	first, err := s.KEK.Wrap(ctx, plaintext, b)
	require.NoError(t, err)
	second, err := s.KEK.Wrap(ctx, plaintext, b)
	require.NoError(t, err)
	require.NotEqual(t, first, second, "two wraps of the same key are identical: the wrap leaks equality")
}

func testInputsUntouched(t *testing.T, s Subject) {
	ctx := Context(t, opTimeout)
	plaintext := randomBytes(32)
	keep := bytes.Clone(plaintext)
	b := Binding("alice", s.KEK.ID())
	keepBinding := maps.Clone(b)
	wrapped, err := s.KEK.Wrap(ctx, plaintext, b)
	require.NoError(t, err)
	require.Equal(t, keep, plaintext, "Wrap modified the plaintext")
	require.Equal(t, keepBinding, b, "Wrap modified the binding")
	keepWrapped := bytes.Clone(wrapped)
	_, err = s.KEK.Unwrap(ctx, wrapped, b)
	require.NoError(t, err)
	require.Equal(t, keepWrapped, wrapped, "Unwrap modified the ciphertext")
	require.Equal(t, keepBinding, b, "Unwrap modified the binding")
}

// RequireBadData asserts that err is a refusal to open a ciphertext —
// kek.ErrInvalidCiphertext — and neither an outage nor a denial.
func RequireBadData(t *testing.T, err error) {
	t.Helper()
	require.Error(t, err)
	require.ErrorIs(t, err, kek.ErrInvalidCiphertext, "a ciphertext that does not open must be kek.ErrInvalidCiphertext")
	require.Equal(t, kek.ClassInvalidCiphertext, kek.Classify(err), "bad data classified otherwise: %v", err)
}

// RequireUnavailable asserts that err says the backend is unreachable and
// not that it refused or that the data is bad: the provider classified it
// itself (a *kek.UnavailableError), and it is an outage.
func RequireUnavailable(t *testing.T, err error) {
	t.Helper()
	require.Error(t, err)
	var unavailable *kek.UnavailableError
	require.ErrorAs(t, err, &unavailable, "want a *kek.UnavailableError, got %T: %v", err, err)
	require.True(t, kek.Classify(err).Outage(), "an outage classified as %s: %v", kek.Classify(err), err)
}

// RequireDenied asserts that err says the backend refused and not that it
// is unreachable or that the data is bad.
func RequireDenied(t *testing.T, err error) {
	t.Helper()
	require.Error(t, err)
	require.Equal(t, kek.ClassDenied, kek.Classify(err), "want a denial, got %T: %v", err, err)
}

func testDifferentBinding(t *testing.T, s Subject) {
	ctx := Context(t, opTimeout)
	base := Binding("alice", s.KEK.ID())
	wrapped, err := s.KEK.Wrap(ctx, randomBytes(32), base)
	require.NoError(t, err)

	variants := map[string]func(b map[string]string){
		"OtherUser":     func(b map[string]string) { b[kek.BindingUserID] = "mallory" },
		"UserPrefix":    func(b map[string]string) { b[kek.BindingUserID] = "alic" },
		"OtherKEKID":    func(b map[string]string) { b[kek.BindingKEKID] = "other-kek" },
		"OtherFormat":   func(b map[string]string) { b[kek.BindingFormat] = "1" },
		"ExtraKey":      func(b map[string]string) { b["tenant"] = "x" },
		"MissingKey":    func(b map[string]string) { delete(b, kek.BindingFormat) },
		"MovedBoundary": func(b map[string]string) { b[kek.BindingUserID] = "alice2"; b[kek.BindingFormat] = "" },
	}
	for name, mutate := range variants {
		t.Run(name, func(t *testing.T) {
			b := maps.Clone(base)
			mutate(b)
			_, err := s.KEK.Unwrap(ctx, wrapped, b)
			RequireBadData(t, err)
		})
	}
}

func testEmptyBinding(t *testing.T, s Subject) {
	ctx := Context(t, opTimeout)
	bound := Binding("alice", s.KEK.ID())

	unboundWrap, err := s.KEK.Wrap(ctx, randomBytes(32), nil)
	require.NoError(t, err)
	_, err = s.KEK.Unwrap(ctx, unboundWrap, bound)
	RequireBadData(t, err)
	_, err = s.KEK.Unwrap(ctx, unboundWrap, map[string]string{})
	require.NoError(t, err, "a nil and an empty binding must mean the same")

	boundWrap, err := s.KEK.Wrap(ctx, randomBytes(32), bound)
	require.NoError(t, err)
	_, err = s.KEK.Unwrap(ctx, boundWrap, nil)
	RequireBadData(t, err)
}

func testForeignKey(t *testing.T, s Subject) {
	ctx := Context(t, opTimeout)
	b := Binding("alice", s.KEK.ID())
	foreign, err := s.Other.Wrap(ctx, randomBytes(32), b)
	require.NoError(t, err)
	_, err = s.KEK.Unwrap(ctx, foreign, b)
	RequireBadData(t, err)

	own, err := s.KEK.Wrap(ctx, randomBytes(32), b)
	require.NoError(t, err)
	_, err = s.Other.Unwrap(ctx, own, b)
	RequireBadData(t, err)
}

func testCorrupt(t *testing.T, s Subject) {
	ctx := Context(t, opTimeout)
	b := Binding("alice", s.KEK.ID())
	wrapped, err := s.KEK.Wrap(ctx, randomBytes(32), b)
	require.NoError(t, err)

	flipped := bytes.Clone(wrapped)
	flipped[len(flipped)-1] ^= 0x01
	cases := map[string][]byte{
		"Empty":       nil,
		"LastBitFlip": flipped,
		"Truncated":   wrapped[:len(wrapped)-1],
		"Doubled":     append(bytes.Clone(wrapped), wrapped...),
	}
	for name, ciphertext := range cases {
		t.Run(name, func(t *testing.T) {
			_, err := s.KEK.Unwrap(ctx, ciphertext, b)
			RequireBadData(t, err)
		})
	}
}

func testCancelled(t *testing.T, s Subject) {
	wrapped, err := s.KEK.Wrap(Context(t, opTimeout), randomBytes(32), nil)
	require.NoError(t, err)

	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	start := time.Now()
	_, err = s.KEK.Wrap(ctx, randomBytes(32), nil)
	require.ErrorIs(t, err, context.Canceled)
	_, err = s.KEK.Unwrap(ctx, wrapped, nil)
	require.ErrorIs(t, err, context.Canceled)
	if sc, ok := s.KEK.(kek.StatusChecker); ok {
		require.ErrorIs(t, sc.Status(ctx), context.Canceled)
	}
	require.Less(t, time.Since(start), prompt, "calls with a cancelled context must return at once")
}

func testStatus(t *testing.T, s Subject) {
	sc, ok := s.KEK.(kek.StatusChecker)
	require.True(t, ok, "%T has no Status(ctx) error method", s.KEK)
	require.NoError(t, sc.Status(Context(t, opTimeout)))
}

func testConcurrent(t *testing.T, s Subject) {
	ctx := Context(t, opTimeout)
	const workers, rounds = 8, 4
	var wg sync.WaitGroup
	errs := make(chan error, workers*rounds)
	for w := range workers {
		wg.Go(func() {
			for r := range rounds {
				b := Binding(fmt.Sprintf("user-%d-%d", w, r), s.KEK.ID())
				plaintext := randomBytes(32)
				wrapped, err := s.KEK.Wrap(ctx, plaintext, b)
				if err != nil {
					errs <- err
					continue
				}
				back, err := s.KEK.Unwrap(ctx, wrapped, b)
				if err != nil {
					errs <- err
					continue
				}
				if !bytes.Equal(back, plaintext) {
					errs <- errors.New("concurrent round trip returned other bytes")
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
}

func testCallerDeadline(t *testing.T, s Subject) {
	if s.Stalled == nil {
		t.Skip("SKIP: this provider has no backend to stall (a local key)")
	}
	k := s.Stalled(t, BlackHole(t), time.Minute)
	for name, call := range calls(k) {
		t.Run(name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
			defer cancel()
			start := time.Now()
			err := call(ctx)
			require.Less(t, time.Since(start), prompt, "the caller's deadline was not honoured")
			require.ErrorIs(t, err, context.DeadlineExceeded)
			require.Equal(t, kek.ClassTimeout, kek.Classify(err), "a timeout classified otherwise: %v", err)
		})
	}
}

func testPerCallTimeout(t *testing.T, s Subject) {
	if s.Stalled == nil {
		t.Skip("SKIP: this provider has no backend to stall (a local key)")
	}
	k := s.Stalled(t, BlackHole(t), 300*time.Millisecond)
	for name, call := range calls(k) {
		t.Run(name, func(t *testing.T) {
			start := time.Now()
			err := call(Context(t, time.Minute))
			require.Less(t, time.Since(start), prompt, "the provider's per-call timeout was not honoured")
			RequireUnavailable(t, err)
		})
	}
}

func testOutage(t *testing.T, s Subject) {
	if s.Outage == nil {
		t.Skip("SKIP: this provider has no backend that could go down (a local key)")
	}
	k, down := s.Outage(t)
	ctx := Context(t, opTimeout)
	b := Binding("alice", k.ID())
	wrapped, err := k.Wrap(ctx, randomBytes(32), b)
	require.NoError(t, err)
	down()
	for name, call := range callsWith(k, wrapped, b) {
		t.Run(name, func(t *testing.T) { RequireUnavailable(t, call(ctx)) })
	}
}

func testDenied(t *testing.T, s Subject) {
	if s.Deny == nil {
		t.Skip("SKIP: this provider has no backend that could refuse (a local key)")
	}
	k, deny := s.Deny(t)
	ctx := Context(t, opTimeout)
	b := Binding("alice", k.ID())
	wrapped, err := k.Wrap(ctx, randomBytes(32), b)
	require.NoError(t, err)
	deny()
	for name, call := range callsWith(k, wrapped, b) {
		t.Run(name, func(t *testing.T) { RequireDenied(t, call(ctx)) })
	}
}

// testRewrapNeedsVersions: the re-wrap job moves a wrap with Rewrap only
// when Versioner says it was made by an older key version; a Rewrapper
// without it would never be called.
func testRewrapNeedsVersions(t *testing.T, s Subject) {
	_, rewraps := s.KEK.(kek.Rewrapper)
	_, versions := s.KEK.(kek.Versioner)
	require.False(t, rewraps && !versions, "%T has Rewrap but no KeyVersion and LatestVersion: nothing would call it", s.KEK)
}

// testKeyRotation: after a new key version, old wraps still open and new
// ones are made by it; where the provider reports versions, the old wrap
// is due and Rewrap moves it to the newest version under the same
// binding, which it still authenticates.
func testKeyRotation(t *testing.T, s Subject) {
	if s.Rotate == nil {
		t.Skip("SKIP: no key version this suite can add for this provider (a local key, or AWS KMS on local-kms)")
	}
	ctx := Context(t, opTimeout)
	b := Binding("alice", s.KEK.ID())
	plaintext := randomBytes(32)
	old, err := s.KEK.Wrap(ctx, plaintext, b)
	require.NoError(t, err)
	s.Rotate(t)
	fresh, err := s.KEK.Wrap(ctx, plaintext, b)
	require.NoError(t, err)
	for _, wrapped := range [][]byte{old, fresh} {
		back, err := s.KEK.Unwrap(ctx, wrapped, b)
		require.NoError(t, err, "a new key version must leave old wraps opening")
		require.Equal(t, plaintext, back)
	}

	v, ok := s.KEK.(kek.Versioner)
	if !ok {
		return // the backend picks the version itself; nothing is due
	}
	latest, err := v.LatestVersion(ctx)
	require.NoError(t, err)
	oldVersion, err := v.KeyVersion(old)
	require.NoError(t, err)
	freshVersion, err := v.KeyVersion(fresh)
	require.NoError(t, err)
	require.Less(t, oldVersion, latest, "the old wrap is due")
	require.Equal(t, latest, freshVersion, "new wraps use the newest version")

	rw, ok := s.KEK.(kek.Rewrapper)
	if !ok {
		return
	}
	moved, err := rw.Rewrap(ctx, old, b)
	require.NoError(t, err)
	movedVersion, err := v.KeyVersion(moved)
	require.NoError(t, err)
	require.Equal(t, latest, movedVersion)
	back, err := s.KEK.Unwrap(ctx, moved, b)
	require.NoError(t, err)
	require.Equal(t, plaintext, back)
	_, err = s.KEK.Unwrap(ctx, moved, Binding("mallory", s.KEK.ID()))
	RequireBadData(t, err)
	_, err = rw.Rewrap(ctx, old, Binding("mallory", s.KEK.ID()))
	RequireBadData(t, err)
}

// calls lists one call of each kind against k, with a ciphertext that
// does not matter because the backend never answers.
func calls(k kek.KEK) map[string]func(ctx context.Context) error {
	return callsWith(k, []byte("vault:v1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"), Binding("alice", k.ID()))
}

func callsWith(k kek.KEK, wrapped []byte, b map[string]string) map[string]func(ctx context.Context) error {
	m := map[string]func(ctx context.Context) error{
		"Wrap": func(ctx context.Context) error {
			_, err := k.Wrap(ctx, randomBytes(32), b)
			return err
		},
		"Unwrap": func(ctx context.Context) error {
			_, err := k.Unwrap(ctx, wrapped, b)
			return err
		},
	}
	if sc, ok := k.(kek.StatusChecker); ok {
		m["Status"] = sc.Status
	}
	if rw, ok := k.(kek.Rewrapper); ok {
		m["Rewrap"] = func(ctx context.Context) error {
			_, err := rw.Rewrap(ctx, wrapped, b)
			return err
		}
	}
	if v, ok := k.(kek.Versioner); ok {
		m["LatestVersion"] = func(ctx context.Context) error {
			_, err := v.LatestVersion(ctx)
			return err
		}
	}
	return m
}

// BlackHole starts a TCP listener on 127.0.0.1 that accepts connections,
// reads and discards what arrives and never answers — a backend that
// hangs. It returns the listener's host:port and closes everything when
// the test ends.
func BlackHole(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	var (
		mu     sync.Mutex
		conns  []net.Conn
		closed bool
		wg     sync.WaitGroup
	)
	wg.Go(func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return // listener closed
			}
			mu.Lock()
			if closed {
				mu.Unlock()
				conn.Close()
				return
			}
			conns = append(conns, conn)
			mu.Unlock()
			wg.Go(func() {
				buf := make([]byte, 4096)
				for {
					if _, err := conn.Read(buf); err != nil {
						return // connection closed
					}
				}
			})
		}
	})
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		closed = true
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().String()
}
