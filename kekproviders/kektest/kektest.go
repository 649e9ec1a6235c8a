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
	"context"
	"crypto/rand"
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
