package worker

import (
	"bytes"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/grant"
)

// TestCloseZeroesTheMissionKey: the bytes the mission key held are zero
// after Close, and a worker's key PEM is wiped once parsed.
func TestCloseZeroesTheMissionKey(t *testing.T) {
	t.Parallel()
	d, err := grant.NewDerivation("m", []string{"t"}, []string{"t:1"})
	require.NoError(t, err)
	held := bytes.Repeat([]byte{0xAB}, grant.KeySize)
	k := &MissionKey{key: held, derivation: d, expiresAt: time.Now().Add(time.Hour), now: time.Now}
	k.Close()
	require.Equal(t, make([]byte, grant.KeySize), held)
	require.Nil(t, k.key)

	priv, err := grant.GenerateKey(grant.HPKEX25519)
	require.NoError(t, err)
	pemData, err := priv.MarshalPEM()
	require.NoError(t, err)
	w, err := New(Config{Name: "w", PrivateKeyPEM: pemData})
	require.NoError(t, err)
	require.Equal(t, make([]byte, len(pemData)), pemData, "the caller's PEM is wiped")
	w.Close()
	require.Nil(t, w.key)
}
