package broker

import (
	"errors"
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestOutcomeOfEverySentinel: each refusal's sentinel reports its own
// outcome, however it is wrapped, and each outcome has an audit status.
func TestOutcomeOfEverySentinel(t *testing.T) {
	t.Parallel()
	require.Equal(t, OutcomeOK, OutcomeOf(nil))
	seen := map[error]bool{}
	for _, o := range Outcomes() {
		require.NotZero(t, o.AuditStatus(), "outcome %d has no audit status", o)
		if err := outcomes[o].err; err != nil {
			require.False(t, seen[err], "%v reports two outcomes", err)
			seen[err] = true
			require.Equal(t, o, OutcomeOf(err))
			require.Equal(t, o, OutcomeOf(fmt.Errorf("broker: op: %w", err)))
		}
	}
	require.Len(t, seen, 15, "every sentinel a client may be answered with")
	require.Equal(t, OutcomeStoreUnavailable, OutcomeOf(&UnavailableError{Dependency: DependencyStore, Err: ErrNotFound}),
		"an outage wins over the sentinel it wraps")
	require.Equal(t, OutcomeKEKUnavailable, OutcomeOf(fmt.Errorf("seal: %w", &UnavailableError{Dependency: DependencyKEK, Err: ErrDataKeyDeleted})))
	require.Equal(t, OutcomeInternal, OutcomeOf(errors.New("a bug")))
	require.Equal(t, OutcomeInternal, OutcomeOf(ErrDataKeyDeleted))
}

// TestUnwrapFailureAuditedAsAnswered: a failed unwrap's audit row records
// the outcome its error is answered with, for every kind of failure an
// unwrap has, so that the status in the audit trail is the status the
// client got.
func TestUnwrapFailureAuditedAsAnswered(t *testing.T) {
	t.Parallel()
	v := &Vault{KEKID: "kek-1"}
	for _, c := range []struct {
		err  error
		note string
	}{
		{errFormat1Closed, "format1-closed"},
		{fmt.Errorf("%w: %w", errFormat1Unknown, errors.New("permission denied")), "format1-state-unreadable"},
		{fmt.Errorf("%w %q", ErrUnknownKEK, "kek-1"), "unknown-kek:kek-1"},
		{&UnavailableError{Dependency: DependencyStore, Err: errors.New("reset")}, "store-unavailable"},
		{classifyKEKError(ErrUnwrapFailed, &UnavailableError{Dependency: DependencyKEK, Err: errors.New("timeout")}), "kek-unavailable:kek-1"},
		{fmt.Errorf("%w: %w", ErrKEKDenied, errors.New("key disabled")), "kek-denied:kek-1"},
		{fmt.Errorf("%w: %w", ErrUnwrapFailed, errors.New("message authentication failed")), "unwrap-failed"},
	} {
		outcome, note := unwrapFailureAudit(c.err, v)
		require.Equal(t, c.note, note)
		require.Equal(t, OutcomeOf(c.err), outcome, "%s: audited as answered", c.note)
	}
}
