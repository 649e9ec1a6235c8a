package kekproviders

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"time"

	"github.com/keybroker/keybroker/kekproviders/kekerr"
)

// CheckBinding is the binding context of the probe wrap made by Check. Its
// user id cannot collide with a real user's row in a way that matters: the
// probe wrap is never stored.
func CheckBinding(kekID string) map[string]string {
	return map[string]string{
		"user_id": "keybroker:kek-check",
		"kek_id":  kekID,
		"format":  "2",
	}
}

// CheckResult is the outcome of Check for one KEK. Errors are classified
// as in package kekerr, so a caller can print "unavailable" or "denied".
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

// Class names the kind of failure for a human: "ok", "unavailable",
// "denied", "invalid ciphertext" or "failed".
func (r CheckResult) Class() string {
	err := r.Err()
	switch {
	case err == nil:
		return "ok"
	case kekerr.IsUnavailable(err) || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled):
		return "unavailable"
	case kekerr.IsDenied(err):
		return "denied"
	case errors.Is(err, kekerr.ErrInvalidCiphertext):
		return "invalid ciphertext"
	default:
		return "failed"
	}
}

// Check probes kek the way `keybroker kek check` reports it: Status when
// the provider has one, then a wrap and unwrap of 32 random bytes under
// CheckBinding, timing each step. It runs the round trip even when Status
// failed, so the operator sees both answers. ctx bounds the whole check.
func Check(ctx context.Context, kek KEK) CheckResult {
	res := CheckResult{ID: kek.ID()}
	if sc, ok := kek.(StatusChecker); ok {
		res.StatusChecked = true
		start := time.Now()
		if err := sc.Status(ctx); err != nil {
			res.StatusErr = fmt.Errorf("status: %w", err)
		}
		res.StatusLatency = time.Since(start)
	}

	probe := make([]byte, 32)
	rand.Read(probe)
	defer clear(probe)
	binding := CheckBinding(kek.ID())

	start := time.Now()
	wrapped, err := kek.Wrap(ctx, probe, binding)
	res.WrapLatency = time.Since(start)
	if err != nil {
		res.RoundTripErr = fmt.Errorf("wrap: %w", err)
		return res
	}
	start = time.Now()
	back, err := kek.Unwrap(ctx, wrapped, binding)
	res.UnwrapLatency = time.Since(start)
	defer clear(back)
	switch {
	case err != nil:
		res.RoundTripErr = fmt.Errorf("unwrap of a fresh wrap: %w", err)
	case !bytes.Equal(back, probe):
		res.RoundTripErr = errors.New("unwrap of a fresh wrap returned different bytes")
	}
	return res
}
