// Package vaultapi is keybroker's HTTP layer: routing, request decoding,
// bearer-token authentication and the one error writer. Handlers reach
// keys only through the broker domain.
package vaultapi

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"
	"unicode/utf8"

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

type statusResponse struct {
	VaultExists     bool    `json:"vaultExists"`
	HasRecoveryWrap bool    `json:"hasRecoveryWrap"`
	ZeroKnowledge   bool    `json:"zeroKnowledge"`
	RecoverySetAt   *string `json:"recoverySetAt"`
}

type keyResponse struct {
	MasterKey     string `json:"masterKey"`
	FormatVersion int    `json:"formatVersion"`
	KEKID         string `json:"kekId"`
}

type zkKeyResponse struct {
	RequiresRecoveryCode bool   `json:"requiresRecoveryCode"`
	RecoveryWrappedMK    string `json:"recoveryWrappedMk"`
	RecoveryIV           string `json:"recoveryIv"`
	FormatVersion        int    `json:"formatVersion"`
}

type okResponse struct {
	OK bool `json:"ok"`
}

type zkToggleResponse struct {
	OK            bool `json:"ok"`
	ZeroKnowledge bool `json:"zeroKnowledge"`
}

// isoTime formats t as JavaScript's Date.prototype.toJSON does, which is
// what the original service sent.
func isoTime(t time.Time) string { return t.UTC().Format("2006-01-02T15:04:05.000Z") }

// keyBody turns a domain result into the original's JSON shape; the raw
// key is wiped once writeJSON has written it.
func keyBody(res *broker.KeyResult) any {
	if res.RequiresRecoveryCode {
		return zkKeyResponse{
			RequiresRecoveryCode: true,
			RecoveryWrappedMK:    res.RecoveryWrappedMK,
			RecoveryIV:           res.RecoveryIV,
			FormatVersion:        res.FormatVersion,
		}
	}
	// writeJSON encodes it and wipes the key.
	return &keyAnswer{key: res.MasterKey, formatVersion: res.FormatVersion, kekID: res.KEKID}
}

// ─── handlers ───────────────────────────────────────────────────────────

func (a *API) status(r *http.Request, userID string, _ broker.RequestMeta) (any, error) {
	st, err := a.svc.Status(r.Context(), userID)
	if err != nil {
		return nil, err
	}
	resp := statusResponse{VaultExists: st.VaultExists, HasRecoveryWrap: st.HasRecoveryWrap, ZeroKnowledge: st.ZeroKnowledge}
	if st.RecoverySetAt != nil {
		s := isoTime(*st.RecoverySetAt)
		resp.RecoverySetAt = &s
	}
	return resp, nil
}

func (a *API) init(r *http.Request, userID string, meta broker.RequestMeta) (any, error) {
	res, err := a.svc.Init(r.Context(), userID, meta)
	if err != nil {
		return nil, err
	}
	return keyBody(res), nil
}

func (a *API) key(r *http.Request, userID string, meta broker.RequestMeta) (any, error) {
	res, err := a.svc.Key(r.Context(), userID, meta)
	if err != nil {
		return nil, err
	}
	return keyBody(res), nil
}

func (a *API) rotate(r *http.Request, userID string, meta broker.RequestMeta) (any, error) {
	res, err := a.svc.Rotate(r.Context(), userID, meta)
	if err != nil {
		return nil, err
	}
	return keyBody(res), nil
}

type recoveryWrapRequest struct {
	RecoveryWrappedMK *string `json:"recoveryWrappedMk"`
	RecoveryIV        *string `json:"recoveryIv"`
	// KeyProof is keybroker's addition: base64 of the 32-byte key
	// possession proof (broker.KeyProof). Optional; required to replace
	// a zero-knowledge recovery wrap.
	KeyProof *string `json:"keyProof"`
}

const recoveryWrapRequired = "recoveryWrappedMk and recoveryIv are required (base64 strings)"

func (a *API) setRecoveryWrap(r *http.Request, userID string, meta broker.RequestMeta) (any, error) {
	var req recoveryWrapRequest
	if err := decodeJSON(r, &req, recoveryWrapRequired); err != nil {
		return nil, err
	}
	if req.RecoveryWrappedMK == nil || req.RecoveryIV == nil || *req.RecoveryWrappedMK == "" || *req.RecoveryIV == "" {
		return nil, badRequest(recoveryWrapRequired)
	}
	wrapped, err := decodeBase64Field("recoveryWrappedMk", *req.RecoveryWrappedMK, broker.RecoveryWrapSize)
	if err != nil {
		return nil, err
	}
	iv, err := decodeBase64Field("recoveryIv", *req.RecoveryIV, broker.RecoveryIVSize)
	if err != nil {
		return nil, err
	}
	proof, err := decodeKeyProof(req.KeyProof)
	if err != nil {
		return nil, err
	}
	defer clear(proof)
	if err := a.svc.SetRecoveryWrap(r.Context(), userID, wrapped, iv, proof, meta); err != nil {
		return nil, err
	}
	return okResponse{OK: true}, nil
}

func (a *API) clearRecoveryWrap(r *http.Request, userID string, meta broker.RequestMeta) (any, error) {
	if err := a.svc.ClearRecoveryWrap(r.Context(), userID, meta); err != nil {
		return nil, err
	}
	return okResponse{OK: true}, nil
}

type zeroKnowledgeRequest struct {
	Enable    *bool   `json:"enable"`
	MasterKey *string `json:"masterKey"`
	// KeyProof is optional; with enable true it is checked against the
	// vault, with enable false it must be masterKey's proof.
	KeyProof *string `json:"keyProof"`
}

const enableRequired = "`enable: boolean` is required"

func (a *API) zeroKnowledge(r *http.Request, userID string, meta broker.RequestMeta) (any, error) {
	var req zeroKnowledgeRequest
	if err := decodeJSON(r, &req, enableRequired); err != nil {
		return nil, err
	}
	if req.Enable == nil {
		return nil, badRequest(enableRequired)
	}
	proof, err := decodeKeyProof(req.KeyProof)
	if err != nil {
		return nil, err
	}
	defer clear(proof)
	if *req.Enable {
		if err := a.svc.EnableZeroKnowledge(r.Context(), userID, proof, meta); err != nil {
			return nil, err
		}
		return zkToggleResponse{OK: true, ZeroKnowledge: true}, nil
	}
	if req.MasterKey == nil || *req.MasterKey == "" {
		return nil, badRequest("`masterKey: base64` is required when disabling zero-knowledge")
	}
	mk, err := decodeBase64Field("masterKey", *req.MasterKey, broker.MasterKeySize)
	if err != nil {
		return nil, err
	}
	defer clear(mk)
	if proof != nil {
		// masterKey is the proof itself; a keyProof beside it that is not
		// its proof makes the request contradict itself.
		own := broker.KeyProof(mk)
		same := subtle.ConstantTimeCompare(own, proof) == 1
		clear(own)
		if !same {
			return nil, badRequest("keyProof is not the proof of masterKey")
		}
	}
	if err := a.svc.DisableZeroKnowledge(r.Context(), userID, mk, meta); err != nil {
		return nil, err
	}
	return zkToggleResponse{OK: true, ZeroKnowledge: false}, nil
}

// ─── decoding ───────────────────────────────────────────────────────────

// decodeJSON reads one JSON object from the (size-limited) body. A body
// over the limit is 413; a body that is not one JSON object is 400 with
// what is wrong with it ("request body is not valid JSON: …"), and a
// field of the wrong type 400 with the route's own message (the fields it
// needs). No message quotes the body: it may hold key material.
func decodeJSON(r *http.Request, dst any, message string) error {
	dec := json.NewDecoder(r.Body)
	err := dec.Decode(dst)
	if err == nil {
		// One object and nothing after it but white space.
		if _, err2 := dec.Token(); err2 != io.EOF {
			var tooLarge *http.MaxBytesError
			if errors.As(err2, &tooLarge) {
				err = err2
			} else {
				return badRequest("request body is not valid JSON: more data after the JSON object")
			}
		}
	}
	if err == nil {
		return nil
	}
	var tooLarge *http.MaxBytesError
	var syntaxErr *json.SyntaxError
	var typeErr *json.UnmarshalTypeError
	switch {
	case errors.As(err, &tooLarge):
		return newAPIError(CodePayloadTooLarge, fmt.Sprintf("request body is larger than %d bytes", tooLarge.Limit))
	case errors.Is(err, io.EOF):
		return badRequest("request body is empty: send a JSON object")
	case errors.Is(err, io.ErrUnexpectedEOF):
		return badRequest("request body is not valid JSON: it ends before the JSON object does")
	case errors.As(err, &syntaxErr):
		// The offset, never the offending character: the body may be a
		// key.
		return badRequest(fmt.Sprintf("request body is not valid JSON: syntax error at byte %d", syntaxErr.Offset))
	case errors.As(err, &typeErr) && typeErr.Field == "":
		return badRequest("request body is not a JSON object")
	}
	return badRequest(message)
}

// decodeBase64Field decodes standard base64 (what the browser's btoa
// makes; padding optional) and checks the decoded length. The value is
// never echoed back: it may be key material.
func decodeBase64Field(name, value string, size int) ([]byte, error) {
	// Padded first, then unpadded; the decoder, not the raw length, says
	// which applies: it skips line breaks, which a length test counts.
	b, err := base64.StdEncoding.DecodeString(value)
	if err != nil {
		if b, err = base64.RawStdEncoding.DecodeString(value); err != nil {
			return nil, badRequest(name + " is not valid base64")
		}
	}
	if len(b) != size {
		clear(b)
		return nil, badRequest(fmt.Sprintf("%s must decode to %d bytes", name, size))
	}
	return b, nil
}

// decodeKeyProof decodes the optional keyProof field: absent or null is
// nil, anything else must be base64 of broker.KeyProofSize bytes.
func decodeKeyProof(value *string) ([]byte, error) {
	if value == nil {
		return nil, nil
	}
	return decodeBase64Field("keyProof", *value, broker.KeyProofSize)
}

// ─── middleware ─────────────────────────────────────────────────────────

// userFrom is the user authenticate admitted, "" before it ran.
func userFrom(ctx context.Context) string {
	if e := entryFrom(ctx); e != nil {
		return e.userID
	}
	return ""
}

func requestID(ctx context.Context) string {
	if e := entryFrom(ctx); e != nil {
		return e.id
	}
	return ""
}

func routePattern(r *http.Request) string {
	if rc := chi.RouteContext(r.Context()); rc != nil {
		if p := rc.RoutePattern(); p != "" {
			return p
		}
	}
	return "unmatched"
}

// authenticate admits requests with a valid bearer token and puts its
// subject in the context.
func (a *API) authenticate(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		token, ok := bearerToken(r.Header.Get("Authorization"))
		var sub string
		var err error
		if ok {
			sub, err = a.verifier.Verify(r.Context(), token)
		}
		if !ok || err != nil || sub == "" {
			if err != nil {
				a.log.LogAttrs(r.Context(), slog.LevelInfo, "token rejected",
					slog.String("request_id", requestID(r.Context())), slog.String("reason", err.Error()))
			}
			w.Header().Set("WWW-Authenticate", `Bearer realm="keybroker"`)
			a.writeError(w, r, newAPIError(CodeUnauthorized, "missing or invalid bearer token"))
			return
		}
		// The request's one context value carries the user on: no
		// second context and copy of the request per request.
		if e := entryFrom(r.Context()); e != nil {
			e.userID = sub
			next.ServeHTTP(w, r)
			return
		}
		// Not below accessLog (a handler mounted on its own, in tests).
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), accessKey{}, &accessEntry{userID: sub})))
	})
}

func bearerToken(header string) (string, bool) {
	scheme, token, ok := strings.Cut(header, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	token = strings.TrimSpace(token)
	return token, token != ""
}

// Header values shared by every response, set without an allocation
// each: net/http only reads them, and an Add to one of these keys appends
// past the one element (a new array), never into it.
var (
	noStoreValue  = []string{"no-store"}
	noCacheValue  = []string{"no-cache"}
	nosniffValue  = []string{"nosniff"}
	jsonTypeValue = []string{"application/json; charset=utf-8"}
)

// noStore marks every vault response uncacheable: they carry key material.
func noStore(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h["Cache-Control"] = noStoreValue
		h["Pragma"] = noCacheValue
		h["X-Content-Type-Options"] = nosniffValue
		next.ServeHTTP(w, r)
	})
}

// limitBody caps request bodies at limit bytes: 413 beyond it.
func (a *API) limitBody(limit int64) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.ContentLength > limit {
				a.writeError(w, r, newAPIError(CodePayloadTooLarge, fmt.Sprintf("request body is larger than %d bytes", limit)))
				return
			}
			if r.Body != http.NoBody { // net/http's body of a request without one
				r.Body = http.MaxBytesReader(w, r.Body, limit)
			}
			next.ServeHTTP(w, r)
		})
	}
}

// recoverer turns a panic into a logged 500 with the standard body.
func (a *API) recoverer(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() {
			if p := recover(); p != nil {
				if p == http.ErrAbortHandler {
					panic(p)
				}
				a.writeError(w, r, fmt.Errorf("panic: %v", p))
			}
		}()
		next.ServeHTTP(w, r)
	})
}

// PeerIP is the TCP peer's address without the port.
func PeerIP(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

func newRequestID() string {
	var b [12]byte
	rand.Read(b[:])
	return base64.RawURLEncoding.EncodeToString(b[:])
}

// truncate cuts s to at most n bytes without splitting a UTF-8
// sequence, so that a long but valid header stays valid. It only bounds
// what a request carries on; broker.AuditText makes it fit for the audit
// row, whatever the bytes.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	// At most UTFMax-1 steps back: past that, the bytes are no character
	// anyway (and a run of continuation bytes must not empty the cut).
	for back := 0; back < utf8.UTFMax-1 && n > 0 && !utf8.RuneStart(s[n]); back++ {
		n--
	}
	return s[:n]
}
