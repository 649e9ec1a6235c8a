package vaultapi

import (
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"

	"github.com/keybroker/keybroker/broker"
)

// apiError is an error the HTTP layer itself produces (bad input, auth).
type apiError struct {
	status  int
	code    string
	message string
}

func (e *apiError) Error() string { return e.message }

func badRequest(message string) error {
	return &apiError{status: http.StatusBadRequest, code: CodeBadRequest, message: message}
}

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
	CodeNotFound          = "NOT_FOUND"
	CodeMethodNotAllowed  = "METHOD_NOT_ALLOWED"
	CodeInternal          = "INTERNAL"

	CodeKeyProofRequired = "KEY_PROOF_REQUIRED"
	CodeKeyProofMismatch = "KEY_PROOF_MISMATCH"
	CodeNoRestorableWrap = "NO_RESTORABLE_RECOVERY_WRAP"
)

// domainErrors maps the domain's sentinels to status, code and the text
// the original service sent.
var domainErrors = []struct {
	err     error
	status  int
	code    string
	message string
}{
	{broker.ErrNotFound, http.StatusNotFound, CodeVaultNotInitialised, "vault not initialised"},
	{broker.ErrZKRotateForbidden, http.StatusConflict, CodeZKRotateForbidden, "cannot rotate in zero-knowledge mode"},
	{broker.ErrZKActive, http.StatusConflict, CodeZKActive, "cannot clear recovery wrap while zero-knowledge is active"},
	{broker.ErrRecoveryWrapMissing, http.StatusBadRequest, CodeRecoveryWrapMissing, "set a recovery wrap before enabling zero-knowledge"},
	{broker.ErrMasterKeyMismatch, http.StatusConflict, CodeMasterKeyMismatch, "masterKey is not this vault's master key; unlock with the recovery code and send the key it yields"},
	{broker.ErrKeyProofRequired, http.StatusForbidden, CodeKeyProofRequired, "replacing the recovery wrap in zero-knowledge mode needs keyProof, the proof that you hold the master key; unlock with the recovery code and send it"},
	{broker.ErrKeyProofMismatch, http.StatusForbidden, CodeKeyProofMismatch, "keyProof is not the proof of this vault's master key"},
	{broker.ErrNoRestorableWrap, http.StatusNotFound, CodeNoRestorableWrap, "this vault has no restorable recovery wrap"},
	{broker.ErrInvalidArgument, http.StatusBadRequest, CodeBadRequest, "invalid request"},
	{broker.ErrUnknownKEK, http.StatusServiceUnavailable, CodeKEKUnavailable, "the key-encryption key of this vault is not available"},
	{broker.ErrKEKDenied, http.StatusServiceUnavailable, CodeKEKUnavailable, "the key-encryption key refused the operation"},
	// 403, not 401: the token is valid, the account it names is gone
	// (adopted schema); signing in again with it cannot help.
	{broker.ErrUnknownUser, http.StatusForbidden, CodeUserUnknown, "the token's user is not a known account"},
}

type errorBody struct {
	Error string `json:"error"`
	Code  string `json:"code"`
}

// writeError is the one error writer: it maps err to a status and code,
// logs what the client must not see, and sends only {"error","code"}.
func (a *API) writeError(w http.ResponseWriter, r *http.Request, err error) {
	status, code, message := http.StatusInternalServerError, CodeInternal, "internal error"
	var ae *apiError
	var ue *broker.UnavailableError
	switch {
	case errors.As(err, &ae):
		status, code, message = ae.status, ae.code, ae.message
	case errors.As(err, &ue):
		status = http.StatusServiceUnavailable
		code, message = CodeStoreUnavailable, "the key store is unavailable; retry later"
		if ue.Dependency == broker.DependencyKEK {
			code, message = CodeKEKUnavailable, "the key-encryption key is unavailable; retry later"
		}
		w.Header().Set("Retry-After", "5")
	default:
		for _, de := range domainErrors {
			if errors.Is(err, de.err) {
				status, code, message = de.status, de.code, de.message
				break
			}
		}
	}
	if status >= http.StatusInternalServerError {
		// Errors of the store, the KEK or the code never carry key
		// material: wraps are ciphertext and keys are never formatted.
		a.log.LogAttrs(r.Context(), slog.LevelError, "request failed",
			slog.String("request_id", requestID(r.Context())),
			slog.String("route", routePattern(r)),
			slog.Int("status", status), slog.String("code", code),
			slog.String("error", err.Error()))
	}
	writeJSON(w, status, errorBody{Error: message, Code: code})
}

func writeJSON(w http.ResponseWriter, status int, body any) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(body)
}
