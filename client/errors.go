package client

import (
	"fmt"
	"net/http"
	"time"
)

// ErrorCode is a machine code of keybroker's error bodies. Every code is
// also an error: errors.Is(err, client.ErrZKActive) reports whether err is
// an *APIError with that code.
type ErrorCode string

func (c ErrorCode) Error() string { return "keybroker: " + string(c) }

// The codes keybroker sends. The first block is the original service's
// vocabulary; the rest is keybroker's.
const (
	// ErrVaultNotInitialised (404): the user has no vault; call Init.
	ErrVaultNotInitialised ErrorCode = "VAULT_NOT_INITIALISED"
	// ErrZKRotateForbidden (409): Rotate in zero-knowledge mode; the
	// server cannot re-wrap a key it cannot read.
	ErrZKRotateForbidden ErrorCode = "ZK_ROTATE_FORBIDDEN"
	// ErrZKActive (409): ClearRecoveryWrap in zero-knowledge mode, where
	// the recovery wrap is the only wrap of the master key; MissionGrant
	// in zero-knowledge mode, where the server has no key to derive from.
	ErrZKActive ErrorCode = "ZK_ACTIVE"
	// ErrRecoveryWrapMissing (400): EnableZeroKnowledge before
	// SetRecoveryWrap.
	ErrRecoveryWrapMissing ErrorCode = "RECOVERY_WRAP_MISSING"
	// ErrBadRequest (400): malformed JSON, bad base64 or a wrong length.
	ErrBadRequest ErrorCode = "BAD_REQUEST"

	// ErrUnauthorized (401): the bearer token is missing or invalid.
	ErrUnauthorized ErrorCode = "UNAUTHORIZED"
	// ErrMasterKeyMismatch (409): the key sent to DisableZeroKnowledge is
	// not the vault's master key.
	ErrMasterKeyMismatch ErrorCode = "MASTER_KEY_MISMATCH"
	// ErrUserUnknown (403): the token is valid but its user is not a
	// known account (a server on the original service's database, after
	// the account was deleted); signing in again cannot help.
	ErrUserUnknown ErrorCode = "USER_UNKNOWN"
	// ErrPayloadTooLarge (413): the request body is over the server's limit.
	ErrPayloadTooLarge ErrorCode = "PAYLOAD_TOO_LARGE"
	// ErrKEKUnavailable (503): the key-encryption key cannot be reached;
	// retry after APIError.RetryAfter.
	ErrKEKUnavailable ErrorCode = "KEK_UNAVAILABLE"
	// ErrStoreUnavailable (503): the database cannot be reached; retry
	// after APIError.RetryAfter.
	ErrStoreUnavailable ErrorCode = "STORE_UNAVAILABLE"
	// ErrRateLimited (429): the user's request budget is spent for now;
	// retry after APIError.RetryAfter.
	ErrRateLimited ErrorCode = "RATE_LIMITED"
	// ErrNotFound (404): no such route (a wrong base URL, usually).
	ErrNotFound ErrorCode = "NOT_FOUND"
	// ErrMethodNotAllowed (405).
	ErrMethodNotAllowed ErrorCode = "METHOD_NOT_ALLOWED"
	// ErrInternal (500): the server failed; details are in its log only.
	ErrInternal ErrorCode = "INTERNAL"
	// ErrKeyProofRequired (403): a recovery wrap of a zero-knowledge
	// vault was to be replaced without the key's proof. SetRecoveryWrap
	// and SetRecoveryCode always send it; a raw request may not.
	ErrKeyProofRequired ErrorCode = "KEY_PROOF_REQUIRED"
	// ErrKeyProofMismatch (403): the proof sent is not the proof of the
	// vault's master key: the key given to SetRecoveryWrap or
	// SetRecoveryCode is not the vault's.
	ErrKeyProofMismatch ErrorCode = "KEY_PROOF_MISMATCH"
	// ErrNoRestorableRecoveryWrap (404, service routes): the vault has
	// no recovery wrap kept for the operator to restore.
	ErrNoRestorableRecoveryWrap ErrorCode = "NO_RESTORABLE_RECOVERY_WRAP"
	// ErrGrantNotConfigured (503): MissionGrant without a recipient, on a
	// server that has no default recipient's public key
	// (MANA_AI_PUBLIC_KEY_PEM).
	ErrGrantNotConfigured ErrorCode = "GRANT_NOT_CONFIGURED"
	// ErrGrantRecipientUnknown (400): MissionGrant named a recipient the
	// server does not have.
	ErrGrantRecipientUnknown ErrorCode = "GRANT_RECIPIENT_UNKNOWN"
)

// APIError is a non-2xx answer of keybroker: the HTTP status and the
// {"error", "code"} body. An answer that is not keybroker's error body (a
// proxy's error page) has an empty Code and the status text as Message.
type APIError struct {
	Status  int
	Code    string
	Message string
	// RetryAfter is the server's Retry-After (503 and 429 answers); 0
	// when absent.
	RetryAfter time.Duration
}

func (e *APIError) Error() string {
	if e.Code == "" {
		return fmt.Sprintf("keybroker: HTTP %d: %s", e.Status, e.Message)
	}
	return fmt.Sprintf("keybroker: %d %s: %s", e.Status, e.Code, e.Message)
}

// Is matches an ErrorCode sentinel by code, so that errors.Is works
// through any wrapping.
func (e *APIError) Is(target error) bool {
	code, ok := target.(ErrorCode)
	return ok && string(code) == e.Code
}

// Temporary reports whether retrying later may succeed: the server said
// a dependency is unavailable, or that the user's request budget is spent
// for now.
func (e *APIError) Temporary() bool {
	return e.Status == http.StatusServiceUnavailable || e.Status == http.StatusTooManyRequests
}
