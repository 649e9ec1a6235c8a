package vaultapi

import (
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestUserLimiterRefillsAndStaysBounded drives the limiter with a fake
// clock: a user's bucket empties and refills at the configured rate, and
// memory stays within MaxUsers however many users come.
func TestUserLimiterRefillsAndStaysBounded(t *testing.T) {
	t.Parallel()
	now := time.Unix(1_000_000, 0)
	cfg := RateLimit{PerSecond: 2, Burst: 3, MaxUsers: 50}
	require.NoError(t, cfg.validate())
	l := newUserLimiter(cfg, func() time.Time { return now })

	for i := range 3 {
		ok, _ := l.allow("alice")
		require.True(t, ok, "request %d is within the burst", i)
	}
	ok, retry := l.allow("alice")
	require.False(t, ok)
	require.Equal(t, 500*time.Millisecond, retry, "one token every 1/2 s")
	ok, _ = l.allow("bob")
	require.True(t, ok, "bob has his own bucket")

	now = now.Add(500 * time.Millisecond)
	ok, _ = l.allow("alice")
	require.True(t, ok, "a token came back")
	ok, _ = l.allow("alice")
	require.False(t, ok)

	for i := range 500 {
		l.allow(fmt.Sprintf("user-%d", i))
		require.LessOrEqual(t, l.size(), cfg.MaxUsers)
	}
	// After a pause every bucket has refilled, so the next new user's
	// eviction drops them all: a full bucket is the same as none.
	for i := 0; l.size() < cfg.MaxUsers && i < cfg.MaxUsers; i++ {
		l.allow(fmt.Sprintf("filler-%d", i))
	}
	require.Equal(t, cfg.MaxUsers, l.size())
	now = now.Add(time.Minute)
	ok, _ = l.allow("hot")
	require.True(t, ok)
	require.Equal(t, 1, l.size(), "only the new user is left")
}

func TestRateLimitValidation(t *testing.T) {
	t.Parallel()
	for _, bad := range []RateLimit{{PerSecond: -1}, {PerSecond: 1, Burst: -1}, {PerSecond: 1, MaxUsers: -5}} {
		require.Error(t, bad.validate(), "%+v", bad)
	}
	c := RateLimit{PerSecond: 2.5}
	require.NoError(t, c.validate())
	require.Equal(t, 3, c.Burst)
	require.Equal(t, 100_000, c.MaxUsers)
	off := RateLimit{}
	require.NoError(t, off.validate())
}
