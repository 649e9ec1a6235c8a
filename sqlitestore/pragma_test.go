package sqlitestore

import (
	"testing"

	"github.com/stretchr/testify/require"
)

// TestConnectionSettings checks the settings every pooled connection gets
// from the DSN, on several connections at once so that none is the one
// Open happened to configure.
func TestConnectionSettings(t *testing.T) {
	t.Parallel()
	s, err := Open(t.Context(), Config{Dir: t.TempDir()})
	require.NoError(t, err)
	t.Cleanup(func() { _ = s.Close() })

	for i := range 3 {
		conn, err := s.db.Conn(t.Context())
		require.NoError(t, err)
		defer conn.Close()
		var mode string
		var synchronous, foreignKeys, busy, secureDelete, cacheSize int
		require.NoError(t, conn.QueryRowContext(t.Context(), `PRAGMA journal_mode`).Scan(&mode))
		require.NoError(t, conn.QueryRowContext(t.Context(), `PRAGMA synchronous`).Scan(&synchronous))
		require.NoError(t, conn.QueryRowContext(t.Context(), `PRAGMA foreign_keys`).Scan(&foreignKeys))
		require.NoError(t, conn.QueryRowContext(t.Context(), `PRAGMA busy_timeout`).Scan(&busy))
		require.NoError(t, conn.QueryRowContext(t.Context(), `PRAGMA secure_delete`).Scan(&secureDelete))
		require.NoError(t, conn.QueryRowContext(t.Context(), `PRAGMA cache_size`).Scan(&cacheSize))
		require.Equal(t, "wal", mode, "connection %d", i)
		require.Equal(t, 2, synchronous, "connection %d: synchronous=FULL makes every commit durable", i)
		require.Equal(t, 1, foreignKeys, "connection %d", i)
		require.Equal(t, int(DefaultBusyTimeout.Milliseconds()), busy, "connection %d", i)
		require.Equal(t, 1, secureDelete, "connection %d", i)
		require.Equal(t, -CacheKiB, cacheSize, "connection %d: page cache in KiB (negative), not SQLite's 2000 KiB default", i)
	}
	var appID int64
	require.NoError(t, s.db.QueryRowContext(t.Context(), `PRAGMA application_id`).Scan(&appID))
	require.EqualValues(t, applicationID, appID)
}

func TestTimestampsRoundTripToTheMicrosecond(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ in, stored string }{
		{"2024-03-01T10:11:12.123456789Z", "2024-03-01T10:11:12.123457Z"}, // rounded, like TIMESTAMPTZ
		{"2024-03-01T10:11:12Z", "2024-03-01T10:11:12.000000Z"},           // fixed width: text order is time order
		{"2024-03-01T23:59:59.9999996+02:00", "2024-03-01T22:00:00.000000Z"},
	} {
		in, err := parseTime("test", tc.in)
		require.NoError(t, err)
		require.Equal(t, tc.stored, formatTime(in))
		back, err := parseTime("test", tc.stored)
		require.NoError(t, err)
		require.True(t, back.Equal(in.Round(1000)), "%s", tc.in)
	}
	_, err := parseTime("created_at", "yesterday")
	require.ErrorContains(t, err, "created_at")
}
