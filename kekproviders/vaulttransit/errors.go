package vaulttransit

import (
	"context"
	"errors"
	"fmt"

	hcvault "github.com/hashicorp/vault/api"

	"github.com/keybroker/keybroker/kek"
)

// fail prefixes and classifies a client error. When the caller's ctx is
// done the error says so (errors.Is finds its ctx error).
func (k *KEK) fail(ctx context.Context, op string, err error) error {
	if ctxErr := ctx.Err(); ctxErr != nil {
		return fmt.Errorf("vaulttransit: %s: %w", op, kek.Unavailable(fmt.Errorf("%w: %w", ctxErr, err)))
	}
	if errors.Is(err, context.DeadlineExceeded) {
		// Our per-call timeout, not the caller's deadline, ran out.
		return fmt.Errorf("vaulttransit: %s: %w", op, kek.Unavailable(fmt.Errorf("no answer within %s: %w", k.timeout, err)))
	}
	return fmt.Errorf("vaulttransit: %s: %w", op, classify(op, err))
}

// classify translates a client error into a kek error class, once, by HTTP
// status (never by Vault's message).
func classify(op string, err error) error {
	var respErr *hcvault.ResponseError
	if !errors.As(err, &respErr) {
		var local *localError
		if errors.As(err, &local) {
			return err // our own file reading, already classified
		}
		return kek.Unavailable(err) // no answer: connection, TLS, DNS
	}
	switch code := respErr.StatusCode; {
	case code == 400 && (op == "decrypt" || op == "rewrap"):
		// Vault's answer to a wrong context, another key's ciphertext,
		// corrupt bytes, and a version below min_decryption_version.
		return fmt.Errorf("%w: %w", kek.ErrInvalidCiphertext, err)
	case code == 400 && op == "login":
		return kek.Denied(err) // "invalid role ID", "invalid secret id"
	case code == 401 || code == 403 || code == 404:
		return kek.Denied(err)
	case code == 412 || code == 429 || code >= 500:
		// 412: a performance standby not yet consistent; 429: rate
		// limited; 503: sealed or in standby.
		return kek.Unavailable(err)
	}
	return err
}

// localError is a failure on this side of the connection (reading a
// credential file); it is never an outage.
type localError struct{ err error }

func (e *localError) Error() string { return e.err.Error() }
func (e *localError) Unwrap() error { return e.err }
