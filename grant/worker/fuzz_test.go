package worker_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/grant/worker"
)

// FuzzParseGrant: no input panics the worker's parser, and what it
// accepts is a canonical derivation of a known version with a lifetime.
func FuzzParseGrant(f *testing.F) {
	f.Add(upstreamGrantJSON(f, time.Date(2026, 5, 1, 10, 0, 0, 0, time.UTC)))
	f.Add([]byte(`{"wrappedKey":"AA==","derivation":{"version":"v1","missionId":"m","tables":["notes"],"recordIds":["notes:1"]},"issuedAt":"2026-05-01T10:00:00.000Z","expiresAt":"2026-05-01T11:00:00.000Z","recipient":"w","algorithm":"hpke-x25519"}`))
	f.Add([]byte(`{"wrappedKey":"","derivation":{"version":"v2"}}`))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, data []byte) {
		g, err := worker.ParseGrant(data)
		if err != nil {
			return
		}
		require.NoError(t, g.Derivation.Canonical())
		require.True(t, g.ExpiresAt.After(g.IssuedAt))
		require.NotEmpty(t, g.WrappedKey)
		require.Equal(t, g.Recipient == "", g.Algorithm == "")
	})
}
