package jwtauth

import (
	"crypto/sha256"
	"sync"
	"time"

	"github.com/lestrrat-go/jwx/v3/jwk"
)

// DefaultTokenCacheSize is the number of verified tokens a Verifier
// remembers when Config.TokenCacheSize is zero.
const DefaultTokenCacheSize = 10_000

// tokenCache remembers tokens that verified, by the SHA-256 of the whole
// compact token, so that a client presenting the same token again (a page
// load that asks /status and then /key, a retry) costs a hash instead of
// a signature check and a JOSE parse. Signature verification is most of
// the CPU of a key fetch.
//
// An entry is only as good as what was checked: it ends at the token's
// exp (without the leeway, so never later than the full check would
// allow), and it holds the key set the token was verified against, so a
// refetched key set — a rotated or withdrawn key — sends every token
// through the full check again. Failures are never cached: nothing an
// unauthenticated caller sends can put an entry here.
type tokenCache struct {
	max int

	mu      sync.RWMutex
	entries map[[sha256.Size]byte]cachedToken
}

type cachedToken struct {
	subject string
	expires time.Time
	set     jwk.Set
}

func newTokenCache(size int) *tokenCache {
	if size <= 0 {
		return nil
	}
	return &tokenCache{max: size, entries: make(map[[sha256.Size]byte]cachedToken)}
}

func tokenDigest(token string) [sha256.Size]byte {
	// sha256.Sum256 takes bytes: converting the token allocated a copy
	// per request, and a 4 KiB array on the stack instead grew the stack
	// of every connection's goroutine (2.4 MiB more at 256 connections).
	// A pooled buffer costs neither; it is wiped before it goes back.
	bp := tokenBuffers.Get().(*[]byte)
	b := append((*bp)[:0], token...)
	digest := sha256.Sum256(b)
	clear(b)
	if cap(b) <= maxPooledToken {
		*bp = b[:0]
		tokenBuffers.Put(bp)
	}
	return digest
}

// tokenBuffers are tokenDigest's copies of tokens, wiped after each use.
var tokenBuffers = sync.Pool{New: func() any { b := make([]byte, 0, 1024); return &b }}

// maxPooledToken bounds the buffers kept: more than a JWT with a few
// dozen claims; a larger token's copy is dropped once hashed.
const maxPooledToken = 4096

// lookup returns the subject of a token verified against set that has not
// expired at now.
func (c *tokenCache) lookup(digest [sha256.Size]byte, set jwk.Set, now time.Time) (string, bool) {
	if c == nil || set == nil {
		return "", false
	}
	c.mu.RLock()
	e, ok := c.entries[digest]
	c.mu.RUnlock()
	if !ok || e.set != set || !now.Before(e.expires) {
		return "", false
	}
	return e.subject, true
}

// store remembers a verified token until expires. When the cache is full
// it first drops what can no longer hit (expired, or verified against an
// older key set), then, if that is not enough, a quarter of the rest at
// random (Go's map order): amortised O(1), bounded memory, no LRU
// bookkeeping on the hit path.
func (c *tokenCache) store(digest [sha256.Size]byte, subject string, expires time.Time, set jwk.Set, now time.Time) {
	if c == nil || set == nil || !now.Before(expires) {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.entries[digest]; !ok && len(c.entries) >= c.max {
		for d, e := range c.entries {
			if e.set != set || !now.Before(e.expires) {
				delete(c.entries, d)
			}
		}
		for d := range c.entries {
			if len(c.entries) < c.max*3/4 {
				break
			}
			delete(c.entries, d)
		}
	}
	c.entries[digest] = cachedToken{subject: subject, expires: expires, set: set}
}

// len is the number of entries, for tests.
func (c *tokenCache) len() int {
	if c == nil {
		return 0
	}
	c.mu.RLock()
	defer c.mu.RUnlock()
	return len(c.entries)
}
