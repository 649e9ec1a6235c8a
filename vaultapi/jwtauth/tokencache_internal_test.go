package jwtauth

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v3/jwk"
	"github.com/stretchr/testify/require"
)

func TestTokenCacheHonoursExpiryAndKeySet(t *testing.T) {
	c := newTokenCache(10)
	set, other := jwk.NewSet(), jwk.NewSet()
	now := time.Now()
	d := tokenDigest("token")
	c.store(d, "alice", now.Add(time.Minute), set, now)

	sub, ok := c.lookup(d, set, now)
	require.True(t, ok)
	require.Equal(t, "alice", sub)
	_, ok = c.lookup(d, set, now.Add(time.Minute))
	require.False(t, ok, "not at or past exp")
	_, ok = c.lookup(d, other, now)
	require.False(t, ok, "not against another key set")
	_, ok = c.lookup(tokenDigest("token2"), set, now)
	require.False(t, ok)
	_, ok = c.lookup(d, nil, now)
	require.False(t, ok, "no key set loaded: no cache")

	c.store(tokenDigest("late"), "bob", now, set, now)
	_, ok = c.lookup(tokenDigest("late"), set, now)
	require.False(t, ok, "an already expired token is not stored")
}

func TestTokenCacheStaysBounded(t *testing.T) {
	c := newTokenCache(100)
	set := jwk.NewSet()
	now := time.Now()
	for i := range 1000 {
		c.store(tokenDigest(fmt.Sprint(i)), fmt.Sprint(i), now.Add(time.Hour), set, now)
		require.LessOrEqual(t, c.len(), 100)
	}
	// The newest entry always survives its own insertion.
	sub, ok := c.lookup(tokenDigest("999"), set, now)
	require.True(t, ok)
	require.Equal(t, "999", sub)
}

func TestTokenCacheDropsStaleEntriesFirst(t *testing.T) {
	c := newTokenCache(4)
	old, current := jwk.NewSet(), jwk.NewSet()
	now := time.Now()
	c.store(tokenDigest("a"), "a", now.Add(time.Hour), old, now)
	c.store(tokenDigest("b"), "b", now.Add(time.Second), current, now)
	c.store(tokenDigest("c"), "c", now.Add(time.Hour), current, now)
	c.store(tokenDigest("d"), "d", now.Add(time.Hour), current, now)
	later := now.Add(time.Minute) // b has expired, a is of an old set
	c.store(tokenDigest("e"), "e", later.Add(time.Hour), current, later)
	require.Equal(t, 3, c.len())
	for _, k := range []string{"c", "d", "e"} {
		_, ok := c.lookup(tokenDigest(k), current, later)
		require.True(t, ok, k)
	}
}

func TestDisabledTokenCache(t *testing.T) {
	c := newTokenCache(-1)
	require.Nil(t, c)
	c.store(tokenDigest("x"), "x", time.Now().Add(time.Hour), jwk.NewSet(), time.Now())
	_, ok := c.lookup(tokenDigest("x"), jwk.NewSet(), time.Now())
	require.False(t, ok)
}

// A token's digest is the SHA-256 of its bytes, whatever its length, and
// the buffer it was copied into goes back to the pool wiped.
func TestTokenDigestIsSHA256AndWipesItsCopy(t *testing.T) {
	for _, n := range []int{0, 1, 300, 1024, 4096, 5000} {
		token := strings.Repeat("e", n)
		require.Equal(t, sha256.Sum256([]byte(token)), tokenDigest(token), "length %d", n)
	}
	tokenDigest("eyJhbGciOiJFZERTQSJ9.secret-claims.signature")
	bp := tokenBuffers.Get().(*[]byte)
	defer tokenBuffers.Put(bp)
	require.Empty(t, bytes.Trim((*bp)[:cap(*bp)], "\x00"), "a pooled buffer still holds a token")
}
