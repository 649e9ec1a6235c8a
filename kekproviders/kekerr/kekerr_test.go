package kekerr_test

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/kekproviders/kekerr"
)

func TestClassesAreFoundThroughWrapping(t *testing.T) {
	t.Parallel()
	cause := errors.New("dial tcp 127.0.0.1:1: connection refused")
	unavailable := fmt.Errorf("awskms: encrypt: %w", kekerr.Unavailable(cause))
	require.True(t, kekerr.IsUnavailable(unavailable))
	require.False(t, kekerr.IsDenied(unavailable))
	require.ErrorIs(t, unavailable, cause)
	require.Contains(t, unavailable.Error(), "unavailable")

	denied := fmt.Errorf("gcpkms: decrypt: %w", kekerr.Denied(cause))
	require.True(t, kekerr.IsDenied(denied))
	require.False(t, kekerr.IsUnavailable(denied))
	require.ErrorIs(t, denied, cause)

	// The broker looks for Unavailable() by behaviour; a class method
	// returning false does not count.
	require.False(t, kekerr.IsUnavailable(falseUnavailable{}))
	require.False(t, kekerr.IsUnavailable(kekerr.ErrInvalidCiphertext))
	require.False(t, kekerr.IsUnavailable(context.Canceled))
}

func TestNilStaysNil(t *testing.T) {
	t.Parallel()
	require.NoError(t, kekerr.Unavailable(nil))
	require.NoError(t, kekerr.Denied(nil))
}

type falseUnavailable struct{}

func (falseUnavailable) Error() string     { return "not really" }
func (falseUnavailable) Unavailable() bool { return false }
