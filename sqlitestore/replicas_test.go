package sqlitestore_test

import (
	"crypto/rand"
	"log/slog"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/kekproviders/localkek"
)

// TestOneProcessHasNoRolloutToWaitFor: the embedded store serves one
// node, whose restart replaces its one process; it takes no
// announcements, and a server on it with the heartbeat on and a new
// active KEK (the old one decrypt-only) writes under the new KEK at once
// and reports no rollout.
func TestOneProcessHasNoRolloutToWaitFor(t *testing.T) {
	t.Parallel()
	store := openStore(t, t.TempDir())
	_, takes := any(store).(broker.ReplicaStore)
	require.False(t, takes, "the embedded store takes no announcements")

	newKEK := func(id string) broker.KEK {
		key := make([]byte, 32)
		rand.Read(key)
		k, err := localkek.New(id, key, false)
		require.NoError(t, err)
		return k
	}
	ring, err := broker.LoadKeyring(t.Context(), broker.KeyringConfig{Active: newKEK("kek-b"), DecryptOnly: []broker.KEK{newKEK("kek-a")},
		DataKeys: store, NewLocalKEK: func(id string, key []byte) (broker.KEK, error) { return localkek.New(id, key, false) }})
	require.NoError(t, err)
	hold, err := broker.RolloutHold(t.Context(), store, []string{"kek-b", "kek-a"}, 3)
	require.NoError(t, err)
	require.Empty(t, hold, "nothing to hold at, even with replicas expected")
	rt, err := broker.NewRuntime(t.Context(), broker.RuntimeConfig{Store: store, Keyring: ring, Logger: slog.New(slog.DiscardHandler),
		Rollout: broker.RolloutConfig{Heartbeat: time.Second, ExpectedReplicas: 3}})
	require.NoError(t, err)
	t.Cleanup(rt.Close)
	require.Nil(t, rt.Rollout())
	require.Equal(t, "kek-b", ring.ActiveID())
}
