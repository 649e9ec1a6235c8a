package kek_test

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/kek"
	"github.com/keybroker/keybroker/kekproviders/localkek"
)

func TestCheckPassesForAWorkingKEK(t *testing.T) {
	t.Parallel()
	key := make([]byte, 32)
	rand.Read(key)
	k, err := localkek.New("local-1", key, false)
	require.NoError(t, err)
	var calls []kek.Call
	res := kek.Check(t.Context(), k, func(c kek.Call) { calls = append(calls, c) })
	require.True(t, res.OK(), "%v", res.Err())
	require.Equal(t, "ok", res.Class())
	require.Equal(t, "local-1", res.ID)
	require.True(t, res.StatusChecked)
	require.Positive(t, res.WrapLatency)
	require.Positive(t, res.UnwrapLatency)
	require.Len(t, calls, 3, "status, wrap and unwrap are each reported")
	for i, op := range []string{kek.OpStatus, kek.OpWrap, kek.OpUnwrap} {
		require.Equal(t, kek.Call{KEKID: "local-1", Op: op, Took: calls[i].Took}, calls[i])
		require.Positive(t, calls[i].Took)
	}
}

func TestCheckReportsEachFailure(t *testing.T) {
	t.Parallel()
	down := kek.Unavailable(errors.New("connection refused"))
	var outcomes []string
	res := kek.Check(t.Context(), brokenKEK{statusErr: down, wrapErr: down}, func(c kek.Call) {
		outcomes = append(outcomes, c.Op+"="+kek.Classify(c.Err).String())
	})
	require.False(t, res.OK())
	require.Equal(t, "unavailable", res.Class())
	require.ErrorIs(t, res.StatusErr, down)
	require.ErrorIs(t, res.RoundTripErr, down)
	require.Equal(t, []string{"status=unavailable", "wrap=unavailable"}, outcomes, "no unwrap after a failed wrap")

	res = kek.Check(t.Context(), brokenKEK{unwrapErr: kek.Denied(errors.New("AccessDeniedException"))}, nil)
	require.NoError(t, res.StatusErr)
	require.ErrorContains(t, res.RoundTripErr, "unwrap of a fresh wrap")
	require.Equal(t, "denied", res.Class())

	res = kek.Check(t.Context(), brokenKEK{garble: true}, nil)
	require.ErrorContains(t, res.RoundTripErr, "different bytes")
	require.Equal(t, "failed", res.Class())

	res = kek.Check(t.Context(), brokenKEK{unwrapErr: fmt.Errorf("probe: %w", context.DeadlineExceeded)}, nil)
	require.Equal(t, "unavailable", res.Class(), "a timeout is an outage")
}

// brokenKEK fails on demand. It stands in for a provider, not for an SDK:
// Check's own reporting is what is under test.
type brokenKEK struct {
	statusErr, wrapErr, unwrapErr error
	garble                        bool
}

func (b brokenKEK) ID() string                       { return "broken" }
func (b brokenKEK) Status(ctx context.Context) error { return b.statusErr }
func (b brokenKEK) Wrap(ctx context.Context, p []byte, _ map[string]string) ([]byte, error) {
	return append([]byte(nil), p...), b.wrapErr
}

func (b brokenKEK) Unwrap(ctx context.Context, c []byte, _ map[string]string) ([]byte, error) {
	if b.garble {
		return make([]byte, len(c)), nil
	}
	return append([]byte(nil), c...), b.unwrapErr
}
