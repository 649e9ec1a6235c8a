package vaultapi

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/broker"
)

// TestWriteErrorAnswers pins the answer of every error the domain returns,
// byte for byte: status, body and Retry-After. The literals are what the
// original service and keybroker's earlier releases sent; the table they
// now come from must not change them.
func TestWriteErrorAnswers(t *testing.T) {
	t.Parallel()
	a := &API{log: slog.New(slog.DiscardHandler)}
	for _, c := range []struct {
		err    error
		status int
		body   string
		retry  string
	}{
		{broker.ErrNotFound, 404, `{"error":"vault not initialised","code":"VAULT_NOT_INITIALISED"}`, ""},
		{broker.ErrZKRotateForbidden, 409, `{"error":"cannot rotate in zero-knowledge mode","code":"ZK_ROTATE_FORBIDDEN"}`, ""},
		{broker.ErrZKActive, 409, `{"error":"cannot clear recovery wrap while zero-knowledge is active","code":"ZK_ACTIVE"}`, ""},
		{broker.ErrRecoveryWrapMissing, 400, `{"error":"set a recovery wrap before enabling zero-knowledge","code":"RECOVERY_WRAP_MISSING"}`, ""},
		{broker.ErrMasterKeyMismatch, 409, `{"error":"masterKey is not this vault's master key; unlock with the recovery code and send the key it yields","code":"MASTER_KEY_MISMATCH"}`, ""},
		{broker.ErrKeyProofRequired, 403, `{"error":"replacing the recovery wrap in zero-knowledge mode needs keyProof, the proof that you hold the master key; unlock with the recovery code and send it","code":"KEY_PROOF_REQUIRED"}`, ""},
		{broker.ErrKeyProofMismatch, 403, `{"error":"keyProof is not the proof of this vault's master key","code":"KEY_PROOF_MISMATCH"}`, ""},
		{broker.ErrNoRestorableWrap, 404, `{"error":"this vault has no restorable recovery wrap","code":"NO_RESTORABLE_RECOVERY_WRAP"}`, ""},
		{fmt.Errorf("%w: empty user id", broker.ErrInvalidArgument), 400, `{"error":"invalid request","code":"BAD_REQUEST"}`, ""},
		{broker.ErrUnknownKEK, 503, `{"error":"the key-encryption key of this vault is not available","code":"KEK_UNAVAILABLE"}`, "5"},
		{fmt.Errorf("%w: disabled", broker.ErrKEKDenied), 503, `{"error":"the key-encryption key refused the operation","code":"KEK_UNAVAILABLE"}`, "5"},
		{broker.ErrUnknownUser, 403, `{"error":"the token's user is not a known account","code":"USER_UNKNOWN"}`, ""},
		{&broker.UnavailableError{Dependency: broker.DependencyStore, Err: errors.New("down")}, 503, `{"error":"the key store is unavailable; retry later","code":"STORE_UNAVAILABLE"}`, "5"},
		{&broker.UnavailableError{Dependency: broker.DependencyKEK, Err: errors.New("down")}, 503, `{"error":"the key-encryption key is unavailable; retry later","code":"KEK_UNAVAILABLE"}`, "5"},
		// An outage wins over the sentinel it wraps, as it always did.
		{&broker.UnavailableError{Dependency: broker.DependencyKEK, Err: broker.ErrDataKeyDeleted}, 503, `{"error":"the key-encryption key is unavailable; retry later","code":"KEK_UNAVAILABLE"}`, "5"},
		{fmt.Errorf("%w: bad tag", broker.ErrUnwrapFailed), 500, `{"error":"internal error","code":"INTERNAL"}`, ""},
		{broker.ErrFormat1Closed, 500, `{"error":"internal error","code":"INTERNAL"}`, ""},
		{errors.New("a bug"), 500, `{"error":"internal error","code":"INTERNAL"}`, ""},
		{badRequest("enable is required"), 400, `{"error":"enable is required","code":"BAD_REQUEST"}`, ""},
		{broker.ErrGrantNotConfigured, 503, `{"error":"mission grants are not configured: the server has no public key of the worker","code":"GRANT_NOT_CONFIGURED"}`, "5"},
		{broker.ErrGrantRecipientUnknown, 400, `{"error":"no grant recipient of that name is configured","code":"GRANT_RECIPIENT_UNKNOWN"}`, ""},
		{broker.ErrGrantZeroKnowledge, 409, `{"error":"zero-knowledge mode is active: the server holds no key to derive a mission key from","code":"ZK_ACTIVE"}`, ""},
	} {
		w := httptest.NewRecorder()
		a.writeError(w, httptest.NewRequest(http.MethodGet, "/x", nil), c.err)
		require.Equal(t, c.status, w.Code, "%v", c.err)
		require.Equal(t, c.body+"\n", w.Body.String(), "%v", c.err)
		require.Equal(t, c.retry, w.Header().Get("Retry-After"), "%v", c.err)
		require.Equal(t, "application/json; charset=utf-8", w.Header().Get("Content-Type"))
	}
}

// TestEveryOutcomeAnsweredWithItsAuditStatus enumerates the domain's
// outcomes: each is answered with the status its audit row records, so
// the audit trail and the client tell the same story.
func TestEveryOutcomeAnsweredWithItsAuditStatus(t *testing.T) {
	t.Parallel()
	for _, o := range broker.Outcomes() {
		switch o {
		case broker.OutcomeOK:
			// handle answers every success 200.
			require.Equal(t, http.StatusOK, o.AuditStatus())
			continue
		case broker.OutcomeCreated:
			// The one outcome whose audit status is not its answer: the
			// original service recorded 201 for a created vault and
			// answered 200, and both stay.
			require.Equal(t, http.StatusCreated, o.AuditStatus())
			continue
		}
		answer := outcomeAnswers[o]
		require.NotNil(t, answer, "outcome %d has no answer", o)
		require.Equal(t, errorStatus[answer.code], answer.status, answer.code)
		require.Equal(t, o.AuditStatus(), answer.status, "%s: audited as answered", answer.code)
	}
	require.Len(t, outcomeAnswers, len(broker.Outcomes())-2, "an answer for no outcome")
}

// TestOverloadRefusalsAreLoggedOncePerSecond: a storm of fetches refused
// past saturation writes at most one log line a second, with the count,
// and no ERROR line per refusal; another 503 is still logged each time.
func TestOverloadRefusalsAreLoggedOncePerSecond(t *testing.T) {
	t.Parallel()
	var logs strings.Builder
	a := &API{log: slog.New(slog.NewJSONHandler(&logs, nil))}
	overloaded := &broker.UnavailableError{Dependency: broker.DependencyStore, Err: broker.ErrOverloaded}
	const refusals = 1000
	start := time.Now()
	for range refusals {
		w := httptest.NewRecorder()
		a.writeError(w, httptest.NewRequest(http.MethodGet, "/key", nil), overloaded)
		require.Equal(t, http.StatusServiceUnavailable, w.Code)
		require.Equal(t, "5", w.Header().Get("Retry-After"))
	}
	elapsed := time.Since(start)
	var lines, counted int
	for line := range strings.Lines(logs.String()) {
		var rec struct {
			Level, Msg string
			Refused    int
		}
		require.NoError(t, json.Unmarshal([]byte(line), &rec))
		require.Equal(t, "WARN", rec.Level, line)
		require.Equal(t, "requests refused: overloaded", rec.Msg)
		lines++
		counted += rec.Refused
	}
	require.GreaterOrEqual(t, lines, 1)
	require.LessOrEqual(t, lines, 1+int(elapsed/time.Second), "at most one line a second")
	require.LessOrEqual(t, counted, refusals)

	logs.Reset()
	for range 3 {
		a.writeError(httptest.NewRecorder(), httptest.NewRequest(http.MethodGet, "/key", nil), &broker.UnavailableError{Dependency: broker.DependencyStore, Err: errors.New("connection refused")})
	}
	require.Equal(t, 3, strings.Count(logs.String(), `"msg":"request failed"`), "an outage is logged each time")
}
