// Package jwtauth verifies the bearer JWTs that an external issuer (Better
// Auth in production, internal/jwtissuer in dev mode and tests) signs with
// keys it publishes as a JWKS.
//
// It only verifies: it writes no HTTP responses. Every failure wraps
// ErrUnauthorized with a short fixed reason, so the HTTP layer can map it to
// 401 and log the reason without ever logging the token or any string taken
// from it.
//
// The JOSE work (parsing, signature checks, claim validation) is done by
// github.com/lestrrat-go/jwx/v3; the key set is cached and refreshed by its
// jwk.Cache. This package adds the policy: which algorithms a key may be used
// with, when to refetch the key set, and what a valid subject looks like.
package jwtauth

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lestrrat-go/httprc/v3"
	"github.com/lestrrat-go/httprc/v3/errsink"
	"github.com/lestrrat-go/jwx/v3/jwa"
	"github.com/lestrrat-go/jwx/v3/jwk"
	"github.com/lestrrat-go/jwx/v3/jwt"
)

// Defaults applied by New to zero Config fields.
const (
	DefaultLeeway             = 30 * time.Second
	DefaultHTTPTimeout        = 5 * time.Second
	DefaultMinRefreshInterval = 30 * time.Second
	DefaultRefreshInterval    = 15 * time.Minute

	// DefaultMaxLifetime is the longest token lifetime accepted by
	// default: four times the 15 minutes Better Auth's JWT plugin gives its
	// tokens, and as long as a common override. A token that outlives it
	// was minted for something else (or by a misconfigured issuer), and a
	// stolen one would open the user's key for as long as it lives.
	DefaultMaxLifetime = time.Hour

	// MaxLeeway bounds Config.Leeway and MinMaxLifetime bounds
	// Config.MaxLifetime from below.
	MaxLeeway      = 5 * time.Minute
	MinMaxLifetime = time.Minute

	// MaxTokenBytes caps the size of a token before any parsing, so a
	// hostile header cannot make us base64-decode and JSON-parse megabytes.
	// Better Auth tokens are a few hundred bytes.
	MaxTokenBytes = 8 << 10

	// maxJWKSBytes caps the JWKS response body; a real key set is a few KiB.
	maxJWKSBytes = 1 << 20
)

// Config configures a Verifier. Only JWKSURL is required.
type Config struct {
	// JWKSURL is where the issuer publishes its public keys (http or https).
	JWKSURL string
	// Issuer, when set, must equal the token's iss claim.
	Issuer string
	// Audience, when set, must be one of the token's aud values.
	Audience string
	// Algorithms is the allow-list of JWS algorithms; default ["EdDSA"].
	// "none" and the HMAC algorithms (HS256, HS384, HS512) are refused even
	// when listed: with a public JWKS they can only be an attack.
	Algorithms []string
	// Leeway is the clock skew tolerated on exp, nbf and iat, and added to
	// MaxLifetime; default 30s, at most 5m.
	Leeway time.Duration
	// MaxLifetime is the longest lifetime a token may claim: exp−iat when
	// the token has an iat, and exp−now in any case, each within Leeway.
	// Default DefaultMaxLifetime; at least 1m.
	MaxLifetime time.Duration
	// HTTPClient fetches the JWKS; default a client with a 5s timeout.
	HTTPClient *http.Client
	// MinRefreshInterval rate-limits the refetches triggered by tokens whose
	// kid is not in the cached set, and paces retries while no key set has
	// ever loaded; default 30s.
	MinRefreshInterval time.Duration
	// RefreshInterval is how often the key set is refetched in the
	// background; default 15m. Cache-Control headers on the JWKS response
	// are ignored so the refresh cadence stays predictable.
	RefreshInterval time.Duration
	// TokenCacheSize is how many verified tokens are remembered, so that a
	// token presented again skips the signature check until its exp or the
	// next key-set refetch; default DefaultTokenCacheSize (about 1 MiB),
	// negative disables the cache.
	TokenCacheSize int
}

// ErrUnauthorized is wrapped by every verification failure. The wrapping
// error adds a short fixed reason (for logs) and never any part of the token.
var ErrUnauthorized = errors.New("jwtauth: unauthorized")

// failure builds a verification error with a fixed, token-free reason.
func failure(reason string) error {
	return fmt.Errorf("%w: %s", ErrUnauthorized, reason)
}

// Verifier checks bearer tokens against a cached JWKS. It is safe for
// concurrent use.
type Verifier struct {
	cfg        Config
	algorithms map[string]bool
	validate   []jwt.ValidateOption // built once in New
	tokens     *tokenCache          // nil when disabled

	// lifetime ends on Close or when New's ctx is cancelled; it bounds the
	// background refresh and every refetch.
	lifetime   context.Context
	stop       context.CancelFunc
	background sync.WaitGroup // the retry loop, which Close waits for

	cache *jwk.Cache
	// resource holds the cached key set. It is set once in New, but the
	// error sink may already run before that, hence atomic.
	resource atomic.Pointer[httprc.ResourceBase[jwk.Set]]

	// lastFailure is the most recent failed fetch; it feeds Status so a
	// readiness failure can say why.
	lastFailure atomic.Pointer[fetchFailure]

	refreshMu   sync.Mutex
	lastRefresh time.Time     // when the last on-demand refetch started
	inflight    chan struct{} // non-nil while a refetch runs; closed when it ends
}

// New applies defaults to cfg, validates it, starts the JWKS cache and
// waits for the first fetch of the key set.
//
// An unreachable JWKS endpoint, or one that answers 5xx (or 408, 429),
// does not make New fail: the issuer may simply be starting at the same
// time as we are. New then returns a Verifier whose Ready reports false
// and whose Verify fails with ErrUnauthorized ("signing keys not loaded")
// until a later fetch succeeds; fetches are retried every
// MinRefreshInterval and whenever a token arrives. An endpoint that
// answers the first fetch with any other 4xx, or with a body that is not
// a JWK set, is a mistake in the URL that no wait fixes: New fails with a
// *JWKSError. New fails otherwise only on an invalid Config or a ctx that
// ends before the first fetch does.
//
// ctx also bounds the Verifier's lifetime: background refresh stops when ctx
// is cancelled or Close is called, whichever comes first. Pass a context
// that lives as long as the server, not a request- or startup-scoped one.
func New(ctx context.Context, cfg Config) (*Verifier, error) {
	cfg.setDefaults()
	algorithms, err := cfg.validate()
	if err != nil {
		return nil, err
	}

	// The status of each answer, which httprc keeps to its error text:
	// New tells a mistake (404) from an outage (503) by it.
	statuses := &statusRecorder{base: cfg.HTTPClient.Transport}
	if statuses.base == nil {
		statuses.base = http.DefaultTransport
	}
	recorded := *cfg.HTTPClient
	recorded.Transport = statuses
	cfg.HTTPClient = &recorded

	v := &Verifier{
		cfg:        cfg,
		algorithms: algorithms,
		validate:   cfg.validateOptions(),
		tokens:     newTokenCache(cfg.TokenCacheSize),
	}
	v.lifetime, v.stop = context.WithCancel(ctx)

	// The first fetch happens asynchronously inside httprc; its failure only
	// reaches us through the error sink, so New listens there as well as on
	// the resource becoming ready.
	firstFailure := make(chan struct{}, 1)
	client := httprc.NewClient(
		httprc.WithHTTPClient(cfg.HTTPClient),
		httprc.WithWorkers(1),
		httprc.WithErrorSink(errsink.NewFunc(func(_ context.Context, err error) {
			v.recordFetch(err)
			select {
			case firstFailure <- struct{}{}:
			default:
			}
		})),
	)
	cache, err := jwk.NewCache(v.lifetime, client)
	if err != nil {
		v.stop()
		return nil, fmt.Errorf("jwtauth: start JWKS cache: %w", err)
	}
	v.cache = cache

	err = cache.Register(v.lifetime, cfg.JWKSURL,
		jwk.WithWaitReady(false),
		jwk.WithHTTPClient(cfg.HTTPClient),
		jwk.WithMaxFetchBodySize(maxJWKSBytes),
		jwk.WithConstantInterval(cfg.RefreshInterval),
		// httprc retries a failed connection after the minimum interval.
		jwk.WithMinInterval(cfg.MinRefreshInterval),
	)
	var resource *httprc.ResourceBase[jwk.Set]
	if err == nil {
		resource, err = cache.LookupResource(v.lifetime, cfg.JWKSURL)
	}
	if err != nil {
		v.Close()
		return nil, fmt.Errorf("jwtauth: register JWKSURL: %w", err)
	}

	// Wait for the first fetch, but never longer than one HTTP round trip
	// could take: a hung endpoint must not hang startup.
	wait := cfg.HTTPClient.Timeout
	if wait <= 0 {
		wait = DefaultHTTPTimeout
	}
	timer := time.NewTimer(wait + time.Second)
	defer timer.Stop()
	v.resource.Store(resource)
	ready := make(chan struct{})
	go func() {
		if resource.Ready(v.lifetime) == nil {
			close(ready)
		}
	}()
	select {
	case <-ready:
		v.recordFetch(nil)
	case <-firstFailure:
		if err := v.mistake(statuses.last.Load()); err != nil {
			v.Close()
			return nil, err
		}
	case <-timer.C:
	case <-ctx.Done():
		v.Close()
		return nil, fmt.Errorf("jwtauth: waiting for first JWKS fetch: %w", ctx.Err())
	}

	v.background.Add(1)
	go v.retryUntilLoaded()
	return v, nil
}

func (cfg *Config) setDefaults() {
	if len(cfg.Algorithms) == 0 {
		cfg.Algorithms = []string{jwa.EdDSA().String()}
	}
	if cfg.Leeway == 0 {
		cfg.Leeway = DefaultLeeway
	}
	if cfg.MaxLifetime == 0 {
		cfg.MaxLifetime = DefaultMaxLifetime
	}
	if cfg.HTTPClient == nil {
		cfg.HTTPClient = &http.Client{Timeout: DefaultHTTPTimeout, CheckRedirect: checkRedirect}
	}
	if cfg.MinRefreshInterval == 0 {
		cfg.MinRefreshInterval = DefaultMinRefreshInterval
	}
	if cfg.RefreshInterval == 0 {
		cfg.RefreshInterval = DefaultRefreshInterval
	}
	if cfg.TokenCacheSize == 0 {
		cfg.TokenCacheSize = DefaultTokenCacheSize
	}
}

// validate checks cfg after defaults and returns the effective algorithm
// allow-list (without the refused ones).
func (cfg *Config) validate() (map[string]bool, error) {
	if cfg.JWKSURL == "" {
		return nil, errors.New("jwtauth: Config.JWKSURL is required")
	}
	u, err := url.Parse(cfg.JWKSURL)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return nil, errors.New("jwtauth: Config.JWKSURL must be an absolute http or https URL")
	}
	if cfg.Leeway < 0 {
		return nil, errors.New("jwtauth: Config.Leeway must not be negative")
	}
	if cfg.Leeway > MaxLeeway {
		return nil, fmt.Errorf("jwtauth: Config.Leeway must be at most %s", MaxLeeway)
	}
	if cfg.MaxLifetime < MinMaxLifetime {
		return nil, fmt.Errorf("jwtauth: Config.MaxLifetime must be at least %s", MinMaxLifetime)
	}
	if cfg.MinRefreshInterval < 0 {
		return nil, errors.New("jwtauth: Config.MinRefreshInterval must not be negative")
	}
	if cfg.RefreshInterval < time.Second {
		return nil, errors.New("jwtauth: Config.RefreshInterval must be at least 1s")
	}
	if cfg.MinRefreshInterval > cfg.RefreshInterval {
		return nil, errors.New("jwtauth: Config.MinRefreshInterval must not exceed Config.RefreshInterval")
	}
	algorithms := make(map[string]bool, len(cfg.Algorithms))
	for _, name := range cfg.Algorithms {
		if _, ok := keyFamilies[name]; ok {
			algorithms[name] = true
			continue
		}
		if refusedAlgorithm(name) {
			continue // documented: listed or not, never accepted
		}
		return nil, fmt.Errorf("jwtauth: Config.Algorithms: unsupported algorithm %q", name)
	}
	if len(algorithms) == 0 {
		return nil, errors.New("jwtauth: Config.Algorithms allows no usable algorithm (none and HS* are always refused)")
	}
	return algorithms, nil
}

// Close stops background refresh and waits for it to end. Verify fails with
// ErrUnauthorized afterwards. Close is idempotent.
func (v *Verifier) Close() {
	v.stop()
	v.background.Wait()
	if v.cache != nil {
		// The cache's goroutines stop with lifetime; Shutdown only waits
		// for them, and the bound keeps a wedged fetch from hanging Close.
		ctx, cancel := context.WithTimeout(context.WithoutCancel(v.lifetime), 5*time.Second)
		defer cancel()
		_ = v.cache.Shutdown(ctx)
	}
}

// Ready reports whether a key set has been loaded at least once, so tokens
// can be verified. A readiness probe should use it: after the first load a
// failing endpoint keeps the last good key set, and Ready stays true.
func (v *Verifier) Ready() bool {
	return v.keySet() != nil && v.lifetime.Err() == nil
}

// Status returns Ready and, when the latest fetch of the key set failed,
// that fetch's error (which names the JWKS URL, never a token). While keys
// are loaded the Verifier keeps working through such failures on the last
// good key set.
func (v *Verifier) Status() (ready bool, lastFetchErr error) {
	// A failure recorded against an older key set has been superseded by a
	// successful fetch since, which httprc does not report to us.
	if f := v.lastFailure.Load(); f != nil && f.set == v.keySet() {
		lastFetchErr = f.err
	}
	return v.Ready(), lastFetchErr
}
