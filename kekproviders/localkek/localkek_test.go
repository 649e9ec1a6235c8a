package localkek_test

import (
	"crypto/rand"
	"testing"

	"github.com/keybroker/keybroker/kekproviders/kektest"
	"github.com/keybroker/keybroker/kekproviders/localkek"
	"github.com/stretchr/testify/require"
)

func newKEK(t *testing.T, id string) *localkek.KEK {
	t.Helper()
	key := make([]byte, localkek.KeySize)
	rand.Read(key)
	kek, err := localkek.New(id, key, false)
	require.NoError(t, err)
	return kek
}

func TestConformance(t *testing.T) {
	t.Parallel()
	kektest.Run(t, func(t *testing.T) kektest.Subject {
		return kektest.Subject{KEK: newKEK(t, "local-a"), Other: newKEK(t, "local-b")}
	})
}

func TestDevKeyRefusedUnlessAllowed(t *testing.T) {
	t.Parallel()
	_, err := localkek.New("dev", make([]byte, localkek.KeySize), false)
	require.ErrorIs(t, err, localkek.ErrDevKey)
	_, err = localkek.New("dev", make([]byte, localkek.KeySize), true)
	require.NoError(t, err)
}
