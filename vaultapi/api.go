// Package vaultapi is keybroker's HTTP layer: routing, request decoding,
// bearer-token authentication and the one error writer. Handlers reach
// keys only through the broker domain.
package vaultapi

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/keybroker/keybroker/broker"
)

// BasePath is where the encryption-vault routes live, as in the original.
const BasePath = "/api/v1/me/encryption-vault"

// mePath is the prefix of the signed-in user's routes (BasePath,
// MissionGrantPath): CORS and no-store apply to all of them.
const mePath = "/api/v1/me"

// TokenVerifier checks a bearer token and returns its subject, the user id.
type TokenVerifier interface {
	Verify(ctx context.Context, token string) (subject string, err error)
}

// Config configures the HTTP API.
type Config struct {
	Service  *broker.Service
	Verifier TokenVerifier
	Logger   *slog.Logger
	// MaxBodyBytes caps request bodies; larger ones get 413. Default 16 KiB.
	MaxBodyBytes int64
	// GrantMaxBodyBytes caps the bodies of the mission grant route, whose
	// scope may list 1 000 record ids. Default DefaultGrantMaxBodyBytes.
	GrantMaxBodyBytes int64
	// RequestTimeout bounds each vault request end to end, so a hung store
	// or KMS becomes a 503 instead of a hung client. Default 10s.
	RequestTimeout time.Duration
	// ClientIP returns the address recorded in the audit row. Default: the
	// TCP peer; forwarded headers are not trusted by default (see
	// TrustedProxyClientIP).
	ClientIP func(r *http.Request) string

	// Version is reported by /healthz.
	Version string
	// Readiness answers /readyz. Default: a Readiness without checks,
	// which is always ready.
	Readiness *Readiness
	// Rollout, when set, reports what the rollout of a newly configured
	// KEK waits for; /readyz shows it (it does not make the server
	// unready). It may return nil: nothing to report.
	Rollout func() *broker.RolloutStatus
	// Metrics records request counts and latencies; nil records none.
	Metrics *Metrics
	// MetricsHandler, when set, is served at /metrics on this router.
	// Leave it nil to serve metrics on a separate listener instead.
	MetricsHandler http.Handler
	// CORSOrigins lists the browser origins (scheme://host[:port]) that
	// may call the vault routes cross-origin, with credentials. Empty: no
	// CORS headers at all, which browsers read as "same origin only".
	CORSOrigins []string
	// RateLimit bounds each user's vault requests; the zero value
	// disables it.
	RateLimit RateLimit
	// ServiceKey guards the service routes under InternalPath (export and
	// erasure for the auth service), sent as the X-Service-Key header.
	// Empty: those routes do not exist.
	ServiceKey string
}

func (c *Config) validate() error {
	if c.Service == nil {
		return errors.New("vaultapi: Config.Service is required")
	}
	if c.Verifier == nil {
		return errors.New("vaultapi: Config.Verifier is required")
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.MaxBodyBytes == 0 {
		c.MaxBodyBytes = 16 << 10
	}
	if c.MaxBodyBytes < 0 {
		return errors.New("vaultapi: Config.MaxBodyBytes must be positive")
	}
	if c.GrantMaxBodyBytes == 0 {
		c.GrantMaxBodyBytes = DefaultGrantMaxBodyBytes
	}
	if c.GrantMaxBodyBytes < 0 {
		return errors.New("vaultapi: Config.GrantMaxBodyBytes must be positive")
	}
	if c.RequestTimeout == 0 {
		c.RequestTimeout = 10 * time.Second
	}
	if c.ClientIP == nil {
		c.ClientIP = PeerIP
	}
	if c.Readiness == nil {
		c.Readiness, _ = NewReadiness(ReadinessConfig{Logger: c.Logger})
	}
	if err := c.RateLimit.validate(); err != nil {
		return err
	}
	return nil
}

// API serves the encryption-vault routes.
type API struct {
	svc      *broker.Service
	verifier TokenVerifier
	log      *slog.Logger
	maxBody  int64
	maxGrant int64
	timeout  time.Duration
	clientIP func(*http.Request) string
	router   chi.Router

	version    string
	readiness  *Readiness
	rollout    func() *broker.RolloutStatus
	metrics    *Metrics
	cors       *corsPolicy
	limiter    *userLimiter
	serviceKey *serviceKey
	overloaded overloadLog
}

// New returns the API; its Handler serves every route.
func New(cfg Config) (*API, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	a := &API{
		svc: cfg.Service, verifier: cfg.Verifier, log: cfg.Logger,
		maxBody: cfg.MaxBodyBytes, maxGrant: cfg.GrantMaxBodyBytes, timeout: cfg.RequestTimeout, clientIP: cfg.ClientIP,
		version: cfg.Version, readiness: cfg.Readiness, rollout: cfg.Rollout, metrics: cfg.Metrics,
	}
	var err error
	if a.cors, err = newCORSPolicy(cfg.CORSOrigins); err != nil {
		return nil, err
	}
	if cfg.RateLimit.PerSecond > 0 {
		a.limiter = newUserLimiter(cfg.RateLimit, time.Now)
	}
	if cfg.ServiceKey != "" {
		a.serviceKey = newServiceKey(cfg.ServiceKey)
	}
	r := chi.NewRouter()
	// The access log is outermost so that it also records the 500 the
	// recoverer writes for a panic.
	r.Use(a.accessLog, a.recoverer)
	r.NotFound(func(w http.ResponseWriter, r *http.Request) {
		a.writeError(w, r, newAPIError(CodeNotFound, "no such route"))
	})
	r.MethodNotAllowed(func(w http.ResponseWriter, r *http.Request) {
		// RFC 9110: a 405 lists the methods the route has.
		allowed := a.allowedMethods(r.URL.Path)
		if len(allowed) > 0 {
			w.Header().Set("Allow", strings.Join(allowed, ", "))
		}
		a.writeError(w, r, newAPIError(CodeMethodNotAllowed, "method not allowed on this route"))
	})
	r.Get("/healthz", a.healthz)
	r.Get("/readyz", a.readyz)
	r.Get("/openapi.yaml", serveOpenAPI)
	if cfg.MetricsHandler != nil {
		r.Method(http.MethodGet, "/metrics", cfg.MetricsHandler)
	}
	// The signed-in user's routes, the vault's and the mission grant, in
	// one subrouter: one mount level, as the vault routes alone had, so
	// the hot path allocates no more than it did. (Unmatched paths below
	// mePath are counted under the route "/api/v1/me/*".)
	r.Route(mePath, func(r chi.Router) {
		if a.cors != nil {
			// Before routing and authentication: a preflight is an
			// OPTIONS request without a token.
			r.Use(a.cors.handle)
		}
		r.Use(noStore)
		// The rest runs once a route matched, so that its 401 and 429
		// are counted and logged under the route's own pattern.
		vault := strings.TrimPrefix(BasePath, mePath)
		r.Group(func(r chi.Router) {
			r.Use(a.limitBody(a.maxBody), a.authenticate)
			if a.limiter != nil {
				r.Use(a.rateLimit)
			}
			r.Get(vault+"/status", a.handle(a.status))
			r.Post(vault+"/init", a.handle(a.init))
			r.Get(vault+"/key", a.handle(a.key))
			r.Post(vault+"/rotate", a.handle(a.rotate))
			r.Post(vault+"/recovery-wrap", a.handle(a.setRecoveryWrap))
			r.Delete(vault+"/recovery-wrap", a.handle(a.clearRecoveryWrap))
			r.Post(vault+"/zero-knowledge", a.handle(a.zeroKnowledge))
		})
		r.Group(func(r chi.Router) {
			r.Use(a.limitBody(a.maxGrant), a.authenticate)
			if a.limiter != nil {
				r.Use(a.rateLimit) // one budget with the vault routes
			}
			r.Post(strings.TrimPrefix(MissionGrantPath, mePath), a.handle(a.missionGrant))
		})
	})
	if a.serviceKey != nil {
		a.mountService(r)
	}
	a.router = r
	return a, nil
}

// routeMethods are the methods a route may have.
var routeMethods = []string{http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete}

// allowedMethods are the methods the router serves on path.
func (a *API) allowedMethods(path string) []string {
	var allowed []string
	for _, m := range routeMethods {
		if a.router.Match(chi.NewRouteContext(), m, path) {
			allowed = append(allowed, m)
		}
	}
	return allowed
}

// Router returns the chi router so that the server can mount more routes
// (health, metrics) beside the vault's.
func (a *API) Router() chi.Router { return a.router }

// Handler returns the API's http.Handler.
func (a *API) Handler() http.Handler { return a.router }

// handlerFunc is a vault handler: it returns the response body or an error
// for the one error writer.
type handlerFunc func(r *http.Request, userID string, meta broker.RequestMeta) (any, error)

func (a *API) handle(h handlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		// accessLog set the request's deadline (RequestTimeout).
		userID := userFrom(r.Context())
		meta := broker.RequestMeta{IPAddress: truncate(a.clientIP(r), broker.MaxAuditText), UserAgent: truncate(r.UserAgent(), broker.MaxAuditText)}
		body, err := h(r, userID, meta)
		if err != nil {
			a.writeError(w, r, err)
			return
		}
		writeJSON(w, http.StatusOK, body)
	}
}

// ─── responses ──────────────────────────────────────────────────────────

// ─── handlers ───────────────────────────────────────────────────────────

// ─── decoding ───────────────────────────────────────────────────────────

// ─── middleware ─────────────────────────────────────────────────────────
