package vaultapi

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"maps"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/keybroker/keybroker/broker"
)

// apiError is an error answer: its status, its code and the text the
// client sees. newAPIError builds one with the code's status.
type apiError struct {
	status  int
	code    string
	message string
}

func (e *apiError) Error() string { return e.message }

// newAPIError is the answer code with message, sent with the code's status.
func newAPIError(code, message string) *apiError {
	return &apiError{status: errorStatus[code], code: code, message: message}
}

func badRequest(message string) error { return newAPIError(CodeBadRequest, message) }

// Machine codes of error bodies. The first block is the original service's
// vocabulary; the rest is keybroker's.
const (
	CodeVaultNotInitialised = "VAULT_NOT_INITIALISED"
	CodeZKRotateForbidden   = "ZK_ROTATE_FORBIDDEN"
	CodeZKActive            = "ZK_ACTIVE"
	CodeRecoveryWrapMissing = "RECOVERY_WRAP_MISSING"
	CodeBadRequest          = "BAD_REQUEST"

	CodeUnauthorized      = "UNAUTHORIZED"
	CodeMasterKeyMismatch = "MASTER_KEY_MISMATCH"
	CodeUserUnknown       = "USER_UNKNOWN"
	CodePayloadTooLarge   = "PAYLOAD_TOO_LARGE"
	CodeKEKUnavailable    = "KEK_UNAVAILABLE"
	CodeStoreUnavailable  = "STORE_UNAVAILABLE"
	CodeRateLimited       = "RATE_LIMITED"
	CodeNotFound          = "NOT_FOUND"
	CodeMethodNotAllowed  = "METHOD_NOT_ALLOWED"
	CodeInternal          = "INTERNAL"

	CodeKeyProofRequired = "KEY_PROOF_REQUIRED"
	CodeKeyProofMismatch = "KEY_PROOF_MISMATCH"
	CodeNoRestorableWrap = "NO_RESTORABLE_RECOVERY_WRAP"

	CodeGrantNotConfigured    = "GRANT_NOT_CONFIGURED"
	CodeGrantRecipientUnknown = "GRANT_RECIPIENT_UNKNOWN"
)

// errorStatus is the one table of the error codes: the HTTP status each
// is sent with. Tests hold to it the OpenAPI document's codes, the Go
// client's codes and the audit status of every outcome of the domain.
// USER_UNKNOWN is 403, not 401: the token is valid, the account it names
// is gone (adopted schema); signing in again with it cannot help.
var errorStatus = map[string]int{
	CodeVaultNotInitialised: http.StatusNotFound,
	CodeZKRotateForbidden:   http.StatusConflict,
	CodeZKActive:            http.StatusConflict,
	CodeRecoveryWrapMissing: http.StatusBadRequest,
	CodeBadRequest:          http.StatusBadRequest,
	CodeUnauthorized:        http.StatusUnauthorized,
	CodeMasterKeyMismatch:   http.StatusConflict,
	CodeUserUnknown:         http.StatusForbidden,
	CodePayloadTooLarge:     http.StatusRequestEntityTooLarge,
	CodeKEKUnavailable:      http.StatusServiceUnavailable,
	CodeStoreUnavailable:    http.StatusServiceUnavailable,
	CodeRateLimited:         http.StatusTooManyRequests,
	CodeNotFound:            http.StatusNotFound,
	CodeMethodNotAllowed:    http.StatusMethodNotAllowed,
	CodeInternal:            http.StatusInternalServerError,
	CodeKeyProofRequired:    http.StatusForbidden,
	CodeKeyProofMismatch:    http.StatusForbidden,
	CodeNoRestorableWrap:    http.StatusNotFound,
	// The upstream answered a grant without a worker key 503: an
	// operator fixes it, as with a KEK that is not there.
	CodeGrantNotConfigured:    http.StatusServiceUnavailable,
	CodeGrantRecipientUnknown: http.StatusBadRequest,
}

// ErrorCodes returns every code an error body carries, with the HTTP
// status it is sent with.
func ErrorCodes() map[string]int { return maps.Clone(errorStatus) }

// outcomeAnswers is the answer to each outcome of the domain but its
// successes: the code and the text the original service sent.
var outcomeAnswers = map[broker.Outcome]*apiError{
	broker.OutcomeNotFound:            newAPIError(CodeVaultNotInitialised, "vault not initialised"),
	broker.OutcomeZKRotateForbidden:   newAPIError(CodeZKRotateForbidden, "cannot rotate in zero-knowledge mode"),
	broker.OutcomeZKActive:            newAPIError(CodeZKActive, "cannot clear recovery wrap while zero-knowledge is active"),
	broker.OutcomeRecoveryWrapMissing: newAPIError(CodeRecoveryWrapMissing, "set a recovery wrap before enabling zero-knowledge"),
	broker.OutcomeMasterKeyMismatch:   newAPIError(CodeMasterKeyMismatch, "masterKey is not this vault's master key; unlock with the recovery code and send the key it yields"),
	broker.OutcomeKeyProofRequired:    newAPIError(CodeKeyProofRequired, "replacing the recovery wrap in zero-knowledge mode needs keyProof, the proof that you hold the master key; unlock with the recovery code and send it"),
	broker.OutcomeKeyProofMismatch:    newAPIError(CodeKeyProofMismatch, "keyProof is not the proof of this vault's master key"),
	broker.OutcomeNoRestorableWrap:    newAPIError(CodeNoRestorableWrap, "this vault has no restorable recovery wrap"),
	broker.OutcomeInvalidArgument:     newAPIError(CodeBadRequest, "invalid request"),
	broker.OutcomeUnknownKEK:          newAPIError(CodeKEKUnavailable, "the key-encryption key of this vault is not available"),
	broker.OutcomeKEKDenied:           newAPIError(CodeKEKUnavailable, "the key-encryption key refused the operation"),
	broker.OutcomeUnknownUser:         newAPIError(CodeUserUnknown, "the token's user is not a known account"),
	broker.OutcomeStoreUnavailable:    newAPIError(CodeStoreUnavailable, "the key store is unavailable; retry later"),
	broker.OutcomeKEKUnavailable:      newAPIError(CodeKEKUnavailable, "the key-encryption key is unavailable; retry later"),
	broker.OutcomeInternal:            newAPIError(CodeInternal, "internal error"),
	broker.OutcomeGrantNotConfigured:  newAPIError(CodeGrantNotConfigured, "mission grants are not configured: the server has no public key of the worker"),
	broker.OutcomeGrantRecipient:      newAPIError(CodeGrantRecipientUnknown, "no grant recipient of that name is configured"),
	broker.OutcomeGrantZeroKnowledge:  newAPIError(CodeZKActive, "zero-knowledge mode is active: the server holds no key to derive a mission key from"),
}

type errorBody struct {
	Error string `json:"error"`
	Code  string `json:"code"`
}

// writeError is the one error writer: it answers err (an *apiError, or
// else the domain's outcome of it), logs what the client must not see,
// and sends only {"error","code"}.
func (a *API) writeError(w http.ResponseWriter, r *http.Request, err error) {
	var answer *apiError
	if !errors.As(err, &answer) {
		answer = outcomeAnswers[broker.OutcomeOf(err)]
	}
	if answer.status == http.StatusServiceUnavailable {
		// Every 503 says when to come back, as the README promises: an
		// outage, and also a KEK that is not configured or refused, which
		// an operator may fix at any moment.
		w.Header().Set("Retry-After", "5")
	}
	if errors.Is(err, broker.ErrOverloaded) {
		// Refused at once past saturation: one line a second at most
		// (the access log has every request), not one per refusal.
		a.overloaded.note(r.Context(), a.log)
	} else if answer.status >= http.StatusInternalServerError {
		// Errors of the store, the KEK or the code never carry key
		// material: wraps are ciphertext and keys are never formatted.
		a.log.LogAttrs(r.Context(), slog.LevelError, "request failed",
			slog.String("request_id", requestID(r.Context())),
			slog.String("route", routePattern(r)),
			slog.Int("status", answer.status), slog.String("code", answer.code),
			slog.String("error", err.Error()))
	}
	writeJSON(w, answer.status, errorBody{Error: answer.message, Code: answer.code})
}

func writeJSON(w http.ResponseWriter, status int, body any) {
	if k, ok := body.(*keyAnswer); ok {
		writeKeyAnswer(w, status, k)
		return
	}
	w.Header()["Content-Type"] = jsonTypeValue
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(body)
}

// overloadLog logs the fetches refused past saturation at most once a
// second, with how many were refused since the last line: a storm of
// refusals must not become a storm of log lines. Its zero value is ready.
type overloadLog struct {
	refused atomic.Int64
	last    atomic.Int64 // unix nanoseconds of the last line
}

func (o *overloadLog) note(ctx context.Context, log *slog.Logger) {
	o.refused.Add(1)
	now := time.Now().UnixNano()
	last := o.last.Load()
	if now-last < int64(time.Second) || !o.last.CompareAndSwap(last, now) {
		return
	}
	log.LogAttrs(ctx, slog.LevelWarn, "requests refused: overloaded",
		slog.Int64("refused", o.refused.Swap(0)), slog.String("code", CodeStoreUnavailable))
}
