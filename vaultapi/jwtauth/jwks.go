package jwtauth

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"sync/atomic"
	"time"

	"github.com/lestrrat-go/httprc/v3"
	"github.com/lestrrat-go/jwx/v3/jwk"
)

// Fetching the JWKS: its mistakes (refused at start) and outages (retried), and what Status reports.

// JWKSError is a JWKS URL whose server answers, but not with a key set:
// a 4xx status (a typo in the path, a route that needs credentials) or a
// body that is not a JWK set (a web page). Waiting does not fix it, so New
// refuses to start on it; an unreachable endpoint or a 5xx is an outage,
// which New starts through, not ready.
type JWKSError struct {
	// URL is the JWKS URL, without user information.
	URL string
	// Status is the HTTP status; 200 for a body that is not a key set.
	Status int
	// Err is the fetch's error.
	Err error
}

func (e *JWKSError) Error() string {
	if e.Status == http.StatusOK {
		return fmt.Sprintf("jwtauth: the JWKS URL %s answered 200 OK with something that is not a JWK set (a JSON object with a \"keys\" array): %v; "+
			"is it the issuer's JWKS (Better Auth: <its base URL>/api/auth/jwks)?", e.URL, e.Err)
	}
	return fmt.Sprintf("jwtauth: the JWKS URL %s answered %d %s: it is not the issuer's key set; check the URL "+
		"(Better Auth: <its base URL>/api/auth/jwks)", e.URL, e.Status, http.StatusText(e.Status))
}

// Unwrap is the fetch's error.
func (e *JWKSError) Unwrap() error { return e.Err }

// mistake is the first fetch's failure as a *JWKSError when it is a
// mistake rather than an outage; status is the last answer's.
func (v *Verifier) mistake(status int64) error {
	f := v.lastFailure.Load()
	if f == nil {
		return nil
	}
	shown := v.cfg.JWKSURL
	if u, err := url.Parse(shown); err == nil {
		u.User = nil
		shown = u.String()
	}
	switch {
	case errors.Is(f.err, httprc.ErrTransformerFailed()):
		return &JWKSError{URL: shown, Status: http.StatusOK, Err: f.err}
	case errors.Is(f.err, httprc.ErrUnexpectedStatusCode()) && status >= 400 && status < 500 &&
		status != http.StatusRequestTimeout && status != http.StatusTooManyRequests:
		return &JWKSError{URL: shown, Status: int(status), Err: f.err}
	}
	return nil
}

// statusRecorder keeps the status of the last answer to a fetch.
type statusRecorder struct {
	base http.RoundTripper
	last atomic.Int64
}

func (s *statusRecorder) RoundTrip(r *http.Request) (*http.Response, error) {
	res, err := s.base.RoundTrip(r)
	if err != nil {
		s.last.Store(0)
		return nil, err
	}
	s.last.Store(int64(res.StatusCode))
	return res, nil
}

// checkRedirect bounds redirects and refuses a downgrade from https to
// http, where the key set could be swapped in transit.
func checkRedirect(req *http.Request, via []*http.Request) error {
	if len(via) >= 3 {
		return errors.New("jwtauth: JWKS fetch: too many redirects")
	}
	if via[0].URL.Scheme == "https" && req.URL.Scheme != "https" {
		return errors.New("jwtauth: JWKS fetch: refusing redirect from https to http")
	}
	return nil
}

// fetchFailure is a failed fetch and the key set that was current then.
type fetchFailure struct {
	err error
	set jwk.Set
}

func (v *Verifier) keySet() jwk.Set {
	resource := v.resource.Load()
	if resource == nil {
		return nil
	}
	return resource.Resource()
}

func (v *Verifier) recordFetch(err error) {
	if err == nil {
		v.lastFailure.Store(nil)
		return
	}
	v.lastFailure.Store(&fetchFailure{err: err, set: v.keySet()})
}

// retryUntilLoaded refetches every MinRefreshInterval until a key set has
// loaded once. httprc would wait a whole RefreshInterval after a non-200
// answer, and a pod that is not ready gets no traffic to trigger refetches,
// so without this loop a slow issuer at boot could keep us unready for 15m.
func (v *Verifier) retryUntilLoaded() {
	defer v.background.Done()
	interval := max(v.cfg.MinRefreshInterval, 10*time.Millisecond)
	ticker := time.NewTicker(interval)
	defer ticker.Stop()
	for v.keySet() == nil {
		select {
		case <-v.lifetime.Done():
			return
		case <-ticker.C:
			v.refresh(v.lifetime)
		}
	}
}

// refresh refetches the key set on demand, at most once per
// MinRefreshInterval. Concurrent callers share the one refetch in flight and
// return when it ends (or their ctx does). The refetch itself runs under the
// Verifier's lifetime, not the caller's ctx, so one impatient caller cannot
// abort the refetch that the others are waiting for.
func (v *Verifier) refresh(ctx context.Context) {
	v.refreshMu.Lock()
	if inflight := v.inflight; inflight != nil {
		v.refreshMu.Unlock()
		select {
		case <-inflight:
		case <-ctx.Done():
		}
		return
	}
	if !v.lastRefresh.IsZero() && time.Since(v.lastRefresh) < v.cfg.MinRefreshInterval {
		v.refreshMu.Unlock()
		return
	}
	inflight := make(chan struct{})
	v.inflight = inflight
	v.lastRefresh = time.Now()
	v.refreshMu.Unlock()

	defer func() {
		v.refreshMu.Lock()
		v.inflight = nil
		v.refreshMu.Unlock()
		close(inflight)
	}()

	wait := v.cfg.HTTPClient.Timeout
	if wait <= 0 {
		wait = DefaultHTTPTimeout
	}
	refreshCtx, cancel := context.WithTimeout(v.lifetime, wait+time.Second)
	defer cancel()
	_, err := v.cache.Refresh(refreshCtx, v.cfg.JWKSURL)
	v.recordFetch(err)
}
