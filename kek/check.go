package kek

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"time"
)

// CheckBinding is the binding context of the probe wrap made by Check. Its
// user id cannot collide with a real user's row in a way that matters: the
// probe wrap is never stored.
func CheckBinding(kekID string) map[string]string {
	return map[string]string{
		BindingUserID: "keybroker:kek-check",
		BindingKEKID:  kekID,
		BindingFormat: "2",
	}
}

// CheckResult is the outcome of Check for one KEK. Errors keep their
// class (Classify), so a caller can print "unavailable" or "denied".
type CheckResult struct {
	// ID is the KEK id.
	ID string
	// StatusChecked is false when the provider has no Status method.
	StatusChecked bool
	// StatusErr is the error of Status, nil when it passed or was not run.
	StatusErr error
	// StatusLatency is how long Status took.
	StatusLatency time.Duration
	// RoundTripErr is the error of the probe wrap and unwrap, nil when a
	// fresh random key wrapped and unwrapped to itself.
	RoundTripErr error
	// WrapLatency and UnwrapLatency are how long each half of the probe
	// took (zero when it did not run).
	WrapLatency   time.Duration
	UnwrapLatency time.Duration
}

// OK reports whether every check passed.
func (r CheckResult) OK() bool { return r.StatusErr == nil && r.RoundTripErr == nil }

// Err joins the errors of the result; nil when OK.
func (r CheckResult) Err() error {
	return errors.Join(r.StatusErr, r.RoundTripErr)
}

// Class names the kind of failure for a human, from Classify: "ok",
// "unavailable" (an outage: unavailable, a timeout or a cancelled call),
// "denied", "invalid ciphertext" or "failed".
func (r CheckResult) Class() string {
	switch c := Classify(r.Err()); {
	case c == ClassOK:
		return "ok"
	case c.Outage():
		return "unavailable"
	case c == ClassDenied:
		return "denied"
	case c == ClassInvalidCiphertext:
		return "invalid ciphertext"
	default:
		return "failed"
	}
}

// Check probes k the way `keybroker kek check` and the start-up check
// of serve report it: Status when
// the provider has one, then a wrap and unwrap of 32 random bytes under
// CheckBinding, timing each step. It runs the round trip even when Status
// failed, so the operator sees both answers. ctx bounds the whole check.
// Each call is reported to onCall when it is not nil (the KEK metrics).
func Check(ctx context.Context, k KEK, onCall func(Call)) CheckResult {
	res := CheckResult{ID: k.ID()}
	report := func(op string, took time.Duration, err error) {
		if onCall != nil {
			onCall(Call{KEKID: res.ID, Op: op, Took: took, Err: err})
		}
	}
	if sc, ok := k.(StatusChecker); ok {
		res.StatusChecked = true
		start := time.Now()
		err := sc.Status(ctx)
		res.StatusLatency = time.Since(start)
		report(OpStatus, res.StatusLatency, err)
		if err != nil {
			res.StatusErr = fmt.Errorf("status: %w", err)
		}
	}

	probe := make([]byte, 32)
	rand.Read(probe)
	defer clear(probe)
	binding := CheckBinding(k.ID())

	start := time.Now()
	wrapped, err := k.Wrap(ctx, probe, binding)
	res.WrapLatency = time.Since(start)
	report(OpWrap, res.WrapLatency, err)
	if err != nil {
		res.RoundTripErr = fmt.Errorf("wrap: %w", err)
		return res
	}
	start = time.Now()
	back, err := k.Unwrap(ctx, wrapped, binding)
	res.UnwrapLatency = time.Since(start)
	report(OpUnwrap, res.UnwrapLatency, err)
	defer clear(back)
	switch {
	case err != nil:
		res.RoundTripErr = fmt.Errorf("unwrap of a fresh wrap: %w", err)
	case !bytes.Equal(back, probe):
		res.RoundTripErr = errors.New("unwrap of a fresh wrap returned different bytes")
	}
	return res
}
