package broker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/keybroker/keybroker/kek"
)

// The start-up KEK check: a wrap and unwrap by the active KEK before a server is ready, retried with backoff while the KEK is unavailable.

// errKEKUnavailable marks a KEK check that failed for a reason that may
// pass by itself.
var errKEKUnavailable = errors.New("KEK unavailable")

// KEKCheckError is a start-up KEK check whose KEK answered and refused,
// or answered wrongly (a key that does not open its own wrap).
type KEKCheckError struct {
	ID    string
	Class string // kek.CheckResult.Class: "denied", "invalid ciphertext", "failed"
	Err   error
}

// Error names the KEK, the class of its failure and the provider's error.
func (e *KEKCheckError) Error() string {
	return fmt.Sprintf("KEK check: the active KEK %q cannot wrap and unwrap (%s): %v", e.ID, e.Class, e.Err)
}

// Unwrap returns the provider's error.
func (e *KEKCheckError) Unwrap() error { return e.Err }

// checkKEK wraps and unwraps a random key with the active KEK (kek.Check).
// A failing status probe (e.g. a missing kms:DescribeKey or
// cloudkms.cryptoKeys.get grant) is only logged, since the round trip is
// what requests need.
func (r *Runtime) checkKEK(ctx context.Context) error {
	keyring, log := r.cfg.Keyring, r.cfg.Logger
	active, err := keyring.Lookup(keyring.ActiveID())
	if err != nil {
		return fmt.Errorf("KEK check: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, r.cfg.KEKCheckTimeout)
	defer cancel()
	res := kek.Check(ctx, active, keyring.CallObserver(active))
	if err := res.RoundTripErr; err != nil {
		if kek.Classify(err).Outage() {
			return fmt.Errorf("KEK check: the active KEK %q: %w: %w", res.ID, errKEKUnavailable, err)
		}
		return &KEKCheckError{ID: res.ID, Class: res.Class(), Err: err}
	}
	if res.StatusErr != nil {
		log.Warn("KEK status probe failed; wrap and unwrap work", slog.String("kek_id", res.ID), slog.String("error", res.StatusErr.Error()))
	}
	log.Info("KEK check passed", slog.String("kek_id", res.ID),
		slog.Duration("wrap", res.WrapLatency), slog.Duration("unwrap", res.UnwrapLatency))
	return nil
}

// retryKEKCheck repeats the start-up KEK check with backoff until it
// passes, then closes KEKChecked. A KEK that is refused meanwhile is
// retried too: the server is already serving (not-ready), and readiness
// says why.
func (r *Runtime) retryKEKCheck(ctx context.Context) {
	pause := kekRetryFirst
	for r.cfg.Wait(ctx, pause) {
		err := r.checkKEK(ctx)
		if err == nil {
			close(r.kekOK)
			return
		}
		if ctx.Err() != nil {
			return
		}
		pause = min(2*pause, kekRetryMax)
		r.cfg.Logger.Warn("KEK check failed; retrying", slog.Duration("in", pause), slog.String("error", err.Error()))
	}
}
