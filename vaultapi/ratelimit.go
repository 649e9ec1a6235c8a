package vaultapi

import (
	"errors"
	"math"
	"net/http"
	"strconv"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// RateLimit bounds each user's requests to the vault routes with a token
// bucket: Burst requests at once, refilled at PerSecond. A stolen token
// then cannot turn into an unbounded stream of KMS decrypts.
type RateLimit struct {
	// PerSecond is the sustained rate per user; 0 disables the limit.
	PerSecond float64
	// Burst is how many requests a user may make at once; default
	// max(1, ceil(PerSecond)).
	Burst int
	// MaxUsers bounds the memory: at most this many users' buckets are
	// kept. Default 100000 (a few MiB).
	MaxUsers int
}

func (c *RateLimit) validate() error {
	if c.PerSecond < 0 || math.IsNaN(c.PerSecond) || math.IsInf(c.PerSecond, 0) {
		return errors.New("vaultapi: RateLimit.PerSecond must be a positive number, or 0 to disable")
	}
	if c.PerSecond == 0 {
		return nil
	}
	if c.Burst == 0 {
		c.Burst = max(1, int(math.Ceil(c.PerSecond)))
	}
	if c.MaxUsers == 0 {
		c.MaxUsers = 100_000
	}
	if c.Burst < 1 {
		return errors.New("vaultapi: RateLimit.Burst must be at least 1")
	}
	if c.MaxUsers < 1 {
		return errors.New("vaultapi: RateLimit.MaxUsers must be at least 1")
	}
	return nil
}

// userLimiter holds one token bucket per recently active user.
type userLimiter struct {
	limit    rate.Limit
	burst    int
	maxUsers int
	now      func() time.Time

	mu    sync.Mutex
	users map[string]*rate.Limiter
}

func newUserLimiter(c RateLimit, now func() time.Time) *userLimiter {
	return &userLimiter{
		limit: rate.Limit(c.PerSecond), burst: c.Burst, maxUsers: c.MaxUsers, now: now,
		users: map[string]*rate.Limiter{},
	}
}

// allow takes one token from userID's bucket. When the bucket is empty it
// takes nothing and reports how long until a token is there.
func (l *userLimiter) allow(userID string) (ok bool, retryAfter time.Duration) {
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	lim := l.users[userID]
	if lim == nil {
		if len(l.users) >= l.maxUsers {
			l.evict(now)
		}
		lim = rate.NewLimiter(l.limit, l.burst)
		l.users[userID] = lim
	}
	res := lim.ReserveN(now, 1)
	if delay := res.DelayFrom(now); delay > 0 {
		res.CancelAt(now)
		return false, delay
	}
	return true, 0
}

// evict makes room for new users. A bucket that has refilled behaves
// exactly like a fresh one, so dropping it forgets nothing; those go
// first. If every kept user is mid-burst, arbitrary ones (map order) go
// until a tenth of the room is free, so that the sweep is paid once per
// many new users — each of them gets a full bucket back, which bounds
// what an attacker cycling through users gains.
func (l *userLimiter) evict(now time.Time) {
	for id, lim := range l.users {
		if lim.TokensAt(now) >= float64(l.burst) {
			delete(l.users, id)
		}
	}
	target := l.maxUsers - max(1, l.maxUsers/10)
	for id := range l.users {
		if len(l.users) <= target {
			break
		}
		delete(l.users, id)
	}
}

// size is the number of users with a bucket (for tests).
func (l *userLimiter) size() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.users)
}

// rateLimit refuses a user's request with 429 and Retry-After while the
// user's bucket is empty. It runs after authentication: the bucket is the
// user's, whatever address the requests come from.
func (a *API) rateLimit(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ok, retry := a.limiter.allow(userFrom(r.Context()))
		if !ok {
			w.Header().Set("Retry-After", strconv.Itoa(int(math.Ceil(retry.Seconds()))))
			a.writeError(w, r, newAPIError(CodeRateLimited, "too many requests for this user; retry later"))
			return
		}
		next.ServeHTTP(w, r)
	})
}
