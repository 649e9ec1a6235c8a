package kekproviders_test

import (
	"context"
	"crypto/rand"
	"errors"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/kekproviders"
	"github.com/keybroker/keybroker/kekproviders/kekerr"
	"github.com/keybroker/keybroker/kekproviders/localkek"
)

func TestCheckPassesForAWorkingKEK(t *testing.T) {
	t.Parallel()
	key := make([]byte, 32)
	rand.Read(key)
	kek, err := localkek.New("local-1", key, false)
	require.NoError(t, err)
	res := kekproviders.Check(t.Context(), kek)
	require.True(t, res.OK(), "%v", res.Err())
	require.Equal(t, "ok", res.Class())
	require.Equal(t, "local-1", res.ID)
	require.True(t, res.StatusChecked)
	require.Positive(t, res.WrapLatency)
	require.Positive(t, res.UnwrapLatency)
}

func TestCheckReportsEachFailure(t *testing.T) {
	t.Parallel()
	down := kekerr.Unavailable(errors.New("connection refused"))
	res := kekproviders.Check(t.Context(), brokenKEK{statusErr: down, wrapErr: down})
	require.False(t, res.OK())
	require.Equal(t, "unavailable", res.Class())
	require.ErrorIs(t, res.StatusErr, down)
	require.ErrorIs(t, res.RoundTripErr, down)

	res = kekproviders.Check(t.Context(), brokenKEK{unwrapErr: kekerr.Denied(errors.New("AccessDeniedException"))})
	require.NoError(t, res.StatusErr)
	require.ErrorContains(t, res.RoundTripErr, "unwrap of a fresh wrap")
	require.Equal(t, "denied", res.Class())

	res = kekproviders.Check(t.Context(), brokenKEK{garble: true})
	require.ErrorContains(t, res.RoundTripErr, "different bytes")
	require.Equal(t, "failed", res.Class())
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
