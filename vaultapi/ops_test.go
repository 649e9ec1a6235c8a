package vaultapi_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/gorillamux"
	"github.com/go-chi/chi/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/vaultapi"
	"github.com/keybroker/keybroker/vaultapi/jwtauth"
)

const testServiceKey = "service-key-for-tests-0123456789abcdef"

// opsEnv is an env with every operations feature on: service routes,
// metrics on the main router, readiness over the real store, KEK and
// JWKS, a CORS origin and 127.0.0.1 as a trusted proxy.
type opsEnv struct {
	*env
	registry  *prometheus.Registry
	readiness *vaultapi.Readiness
	api       func() *vaultapi.API
}

func newOpsEnv(t *testing.T, tweak func(*vaultapi.Config)) *opsEnv {
	t.Helper()
	o := &opsEnv{registry: prometheus.NewRegistry()}
	o.env = newEnv(t, envOptions{service: newGrantWorkers(t).service, configure: func(cfg *vaultapi.Config, verifier *jwtauth.Verifier, store broker.Store) {
		metrics, err := vaultapi.NewMetrics(o.registry)
		require.NoError(t, err)
		kek := cfg.Service.Keyring()
		active, err := kek.Lookup(kek.ActiveID())
		require.NoError(t, err)
		checks := []vaultapi.Check{
			{Name: "store", Probe: store.(interface{ Ping(context.Context) error }).Ping},
			{Name: "kek", ID: active.ID(), Probe: active.(interface{ Status(context.Context) error }).Status},
			{Name: "jwks", Probe: func(context.Context) error {
				ready, err := verifier.Status()
				if !ready {
					if err != nil {
						return err
					}
					return vaultapi.ErrPending
				}
				return nil
			}},
		}
		o.readiness, err = vaultapi.NewReadiness(vaultapi.ReadinessConfig{Checks: checks, Logger: cfg.Logger})
		require.NoError(t, err)
		trusted, err := vaultapi.ParseTrustedProxies([]string{"127.0.0.0/8"})
		require.NoError(t, err)
		cfg.Version = "test"
		cfg.Metrics = metrics
		cfg.MetricsHandler = promhttp.HandlerFor(o.registry, promhttp.HandlerOpts{})
		cfg.Readiness = o.readiness
		cfg.ServiceKey = testServiceKey
		cfg.CORSOrigins = []string{"https://app.example.com"}
		cfg.ClientIP = vaultapi.TrustedProxyClientIP(trusted)
		if tweak != nil {
			tweak(cfg)
		}
	}})
	return o
}

// recorded is one exchange of the full run, for OpenAPI validation.
type recorded struct {
	method, path string
	query        string
	status       int
	header       http.Header
	body         []byte
}

// client sends requests to an env and records every exchange.
type client struct {
	t    *testing.T
	base string
	mu   sync.Mutex
	log  []recorded
}

func (c *client) send(req *http.Request) (*http.Response, []byte) {
	c.t.Helper()
	res, err := http.DefaultClient.Do(req)
	require.NoError(c.t, err)
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	require.NoError(c.t, err)
	c.mu.Lock()
	c.log = append(c.log, recorded{method: req.Method, path: req.URL.EscapedPath(), query: req.URL.RawQuery, status: res.StatusCode, header: res.Header, body: body})
	c.mu.Unlock()
	return res, body
}

func (c *client) request(method, path string, header map[string]string, body string) (*http.Response, map[string]any) {
	c.t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, c.base+path, rd)
	require.NoError(c.t, err)
	for k, v := range header {
		req.Header.Set(k, v)
	}
	res, raw := c.send(req)
	var parsed map[string]any
	if strings.HasPrefix(res.Header.Get("Content-Type"), "application/json") {
		require.NoError(c.t, json.Unmarshal(raw, &parsed), "%s %s: %s", method, path, raw)
	}
	return res, parsed
}

func jsonBody(t *testing.T, v any) string {
	raw, err := json.Marshal(v)
	require.NoError(t, err)
	return string(raw)
}

func serviceHeader() map[string]string {
	return map[string]string{vaultapi.ServiceKeyHeader: testServiceKey}
}

// TestFullRun drives every public and service route, then checks three
// things over everything that was sent and logged: each response
// validates against the OpenAPI document, the logs hold none of the keys,
// recovery wraps, tokens and service keys that went over the wire, and
// the metrics counted the routes.
func TestFullRun(t *testing.T) {
	t.Parallel()
	o := newOpsEnv(t, func(cfg *vaultapi.Config) {
		// Enough for alice's run; "hammer" spends it below.
		cfg.RateLimit = vaultapi.RateLimit{PerSecond: 0.001, Burst: 25}
	})
	c := &client{t: t, base: o.url}
	res, _ := c.request(http.MethodGet, "/readyz", nil, "")
	require.Equal(t, http.StatusServiceUnavailable, res.StatusCode, "pending before the first poll")
	o.readiness.Poll(context.Background())
	var secrets []string // every secret that crossed the wire
	tokens := map[string]string{}
	bearer := func(user string) map[string]string {
		if tokens[user] == "" {
			tokens[user] = o.token(user)
			secrets = append(secrets, tokens[user])
		}
		return map[string]string{"Authorization": "Bearer " + tokens[user], "Content-Type": "application/json"}
	}
	addKey := func(body map[string]any) []byte {
		s, _ := body["masterKey"].(string)
		require.NotEmpty(t, s)
		mk, err := base64.StdEncoding.DecodeString(s)
		require.NoError(t, err)
		secrets = append(secrets, s, hex.EncodeToString(mk), base64.RawURLEncoding.EncodeToString(mk))
		return mk
	}
	vault := vaultapi.BasePath

	res, body := c.request(http.MethodGet, vault+"/status", bearer("alice"), "")
	require.Equal(t, http.StatusOK, res.StatusCode)
	require.Equal(t, false, body["vaultExists"])
	for i := 0; res.StatusCode != http.StatusTooManyRequests && i < 30; i++ {
		res, _ = c.request(http.MethodGet, vault+"/status", bearer("hammer"), "")
	}
	require.Equal(t, http.StatusTooManyRequests, res.StatusCode)
	res, body = c.request(http.MethodPost, vault+"/init", bearer("alice"), "")
	require.Equal(t, http.StatusOK, res.StatusCode)
	mk := addKey(body)
	_, body = c.request(http.MethodGet, vault+"/key", bearer("alice"), "")
	require.Equal(t, mk, addKey(body))
	_, body = c.request(http.MethodPost, vault+"/rotate", bearer("alice"), "")
	mk = addKey(body)
	wrap, iv := b64(48, 0x3C), b64(12, 0x4D)
	secrets = append(secrets, wrap)
	res, _ = c.request(http.MethodPost, vault+"/recovery-wrap", bearer("alice"), jsonBody(t, map[string]string{"recoveryWrappedMk": wrap, "recoveryIv": iv}))
	require.Equal(t, http.StatusOK, res.StatusCode)
	res, _ = c.request(http.MethodPost, vault+"/zero-knowledge", bearer("alice"), `{"enable":true}`)
	require.Equal(t, http.StatusOK, res.StatusCode)
	_, body = c.request(http.MethodGet, vault+"/key", bearer("alice"), "")
	require.Equal(t, true, body["requiresRecoveryCode"])
	res, _ = c.request(http.MethodPost, vault+"/rotate", bearer("alice"), "")
	require.Equal(t, http.StatusConflict, res.StatusCode)
	res, _ = c.request(http.MethodDelete, vault+"/recovery-wrap", bearer("alice"), "")
	require.Equal(t, http.StatusConflict, res.StatusCode)
	res, _ = c.request(http.MethodPost, vault+"/recovery-wrap", bearer("alice"), jsonBody(t, map[string]string{"recoveryWrappedMk": b64(48, 1), "recoveryIv": iv}))
	require.Equal(t, http.StatusForbidden, res.StatusCode)
	proof := base64.StdEncoding.EncodeToString(broker.KeyProof(mk))
	secrets = append(secrets, proof)
	res, _ = c.request(http.MethodPost, vault+"/recovery-wrap", bearer("alice"), jsonBody(t, map[string]string{"recoveryWrappedMk": wrap, "recoveryIv": iv, "keyProof": proof}))
	require.Equal(t, http.StatusOK, res.StatusCode)
	res, _ = c.request(http.MethodPost, vault+"/zero-knowledge", bearer("alice"), jsonBody(t, map[string]any{"enable": false, "masterKey": base64.StdEncoding.EncodeToString(mk)}))
	require.Equal(t, http.StatusOK, res.StatusCode)
	res, _ = c.request(http.MethodDelete, vault+"/recovery-wrap", bearer("alice"), "")
	require.Equal(t, http.StatusOK, res.StatusCode)
	// Errors: no token, no vault, bad body, too large, unknown route, wrong method.
	res, _ = c.request(http.MethodGet, vault+"/key", nil, "")
	require.Equal(t, http.StatusUnauthorized, res.StatusCode)
	res, _ = c.request(http.MethodGet, vault+"/key", bearer("bob"), "")
	require.Equal(t, http.StatusNotFound, res.StatusCode)
	res, _ = c.request(http.MethodPost, vault+"/recovery-wrap", bearer("alice"), `{"recoveryWrappedMk":`)
	require.Equal(t, http.StatusBadRequest, res.StatusCode)
	res, _ = c.request(http.MethodPost, vault+"/recovery-wrap", bearer("alice"), `{"x":"`+strings.Repeat("A", 32<<10)+`"}`)
	require.Equal(t, http.StatusRequestEntityTooLarge, res.StatusCode)
	res, _ = c.request(http.MethodGet, "/api/v1/nope", nil, "")
	require.Equal(t, http.StatusNotFound, res.StatusCode)
	res, _ = c.request(http.MethodPut, vault+"/key", bearer("alice"), "")
	require.Equal(t, http.StatusMethodNotAllowed, res.StatusCode)

	// Mission grants, of grace (her own rate budget): the upstream's
	// shape, a named recipient's, and the refusals.
	_, body = c.request(http.MethodPost, vault+"/init", bearer("grace"), "")
	addKey(body)
	grantJSON := jsonBody(t, grantBody())
	res, body = c.request(http.MethodPost, vaultapi.MissionGrantPath, bearer("grace"), grantJSON)
	require.Equal(t, http.StatusOK, res.StatusCode, "%v", body)
	secrets = append(secrets, body["wrappedKey"].(string))
	res, body = c.request(http.MethodPost, vaultapi.MissionGrantPath, bearer("grace"), strings.Replace(grantJSON, "{", `{"recipient":"worker-x",`, 1))
	require.Equal(t, http.StatusOK, res.StatusCode, "%v", body)
	secrets = append(secrets, body["wrappedKey"].(string))
	res, _ = c.request(http.MethodPost, vaultapi.MissionGrantPath, bearer("grace"), strings.Replace(grantJSON, "{", `{"recipient":"nobody",`, 1))
	require.Equal(t, http.StatusBadRequest, res.StatusCode)
	res, _ = c.request(http.MethodPost, vaultapi.MissionGrantPath, bearer("grace"), `{"missionId":1}`)
	require.Equal(t, http.StatusBadRequest, res.StatusCode)
	res, _ = c.request(http.MethodPost, vaultapi.MissionGrantPath, bearer("no-vault"), grantJSON)
	require.Equal(t, http.StatusNotFound, res.StatusCode)
	_, body = c.request(http.MethodGet, "/api/v1/internal/users/grace/vault", serviceHeader(), "")
	require.Len(t, body["missionGrants"], 2)

	// Service routes.
	secrets = append(secrets, testServiceKey)
	aliceVault := "/api/v1/internal/users/alice/vault"
	_, body = c.request(http.MethodGet, aliceVault, serviceHeader(), "")
	require.Equal(t, true, body["vaultExists"])
	_, body = c.request(http.MethodGet, aliceVault+"/audit?limit=4", serviceHeader(), "")
	next, _ := body["nextCursor"].(string)
	require.NotEmpty(t, next)
	_, body = c.request(http.MethodGet, aliceVault+"/audit?limit=1000&cursor="+url.QueryEscape(next), serviceHeader(), "")
	require.Nil(t, body["nextCursor"])
	res, _ = c.request(http.MethodGet, aliceVault, map[string]string{vaultapi.ServiceKeyHeader: "wrong"}, "")
	require.Equal(t, http.StatusUnauthorized, res.StatusCode)
	res, _ = c.request(http.MethodGet, "/api/v1/internal/users/%00/vault", serviceHeader(), "")
	require.Equal(t, http.StatusBadRequest, res.StatusCode)
	// The restore slot, on a zero-knowledge row of the original service.
	_, err := o.admin.Exec(context.Background(), `INSERT INTO keybroker.encryption_vaults
    (user_id, wrapped_mk, wrap_iv, recovery_wrapped_mk, recovery_iv, recovery_set_at, zero_knowledge) VALUES ('adopted', NULL, NULL, $1, $2, now(), true)`,
		b64(48, 0x5E), iv)
	require.NoError(t, err)
	adoptedVault := "/api/v1/internal/users/adopted/vault"
	res, _ = c.request(http.MethodPost, adoptedVault+"/recovery-wrap/restore", serviceHeader(), "")
	require.Equal(t, http.StatusNotFound, res.StatusCode)
	res, _ = c.request(http.MethodPost, vault+"/recovery-wrap", bearer("adopted"), jsonBody(t, map[string]string{"recoveryWrappedMk": b64(48, 2), "recoveryIv": iv}))
	require.Equal(t, http.StatusOK, res.StatusCode)
	_, body = c.request(http.MethodGet, adoptedVault, serviceHeader(), "")
	require.Equal(t, true, body["hasRestorableRecoveryWrap"])
	res, _ = c.request(http.MethodPost, adoptedVault+"/recovery-wrap/restore", serviceHeader(), "")
	require.Equal(t, http.StatusOK, res.StatusCode)
	res, _ = c.request(http.MethodDelete, adoptedVault+"/recovery-wrap/restorable", serviceHeader(), "")
	require.Equal(t, http.StatusNotFound, res.StatusCode)
	res, _ = c.request(http.MethodPost, vault+"/recovery-wrap", bearer("adopted"), jsonBody(t, map[string]string{"recoveryWrappedMk": b64(48, 3), "recoveryIv": iv}))
	require.Equal(t, http.StatusOK, res.StatusCode)
	res, _ = c.request(http.MethodDelete, adoptedVault+"/recovery-wrap/restorable", serviceHeader(), "")
	require.Equal(t, http.StatusOK, res.StatusCode)
	_, body = c.request(http.MethodDelete, aliceVault, serviceHeader(), "")
	require.Equal(t, true, body["vaultDeleted"])
	_, body = c.request(http.MethodDelete, aliceVault, serviceHeader(), "")
	require.Equal(t, false, body["vaultDeleted"])
	_, body = c.request(http.MethodGet, aliceVault, serviceHeader(), "")
	require.Equal(t, false, body["vaultExists"])

	// Operations.
	res, _ = c.request(http.MethodGet, "/healthz", nil, "")
	require.Equal(t, http.StatusOK, res.StatusCode)
	res, body = c.request(http.MethodGet, "/readyz", nil, "")
	require.Equal(t, http.StatusOK, res.StatusCode, "%v", body)
	res, metrics := c.send(mustRequest(t, http.MethodGet, o.url+"/metrics"))
	require.Equal(t, http.StatusOK, res.StatusCode)
	res, _ = c.send(mustRequest(t, http.MethodGet, o.url+"/openapi.yaml"))
	require.Equal(t, http.StatusOK, res.StatusCode)

	t.Run("ResponsesValidateAgainstOpenAPI", func(t *testing.T) {
		_, router := loadOpenAPI(t)
		// The validator is strict enough to catch a drift: an extra field,
		// a missing one, an undocumented code.
		for _, bad := range []string{
			`{"vaultExists":false,"hasRecoveryWrap":false,"zeroKnowledge":false,"recoverySetAt":null,"masterKey":"x"}`,
			`{"vaultExists":false,"hasRecoveryWrap":false,"zeroKnowledge":false}`,
		} {
			req := httpRequest(t, http.MethodGet, vaultapi.BasePath+"/status", "")
			route, params, err := router.FindRoute(req)
			require.NoError(t, err)
			err = openapi3filter.ValidateResponse(context.Background(), &openapi3filter.ResponseValidationInput{
				RequestValidationInput: &openapi3filter.RequestValidationInput{Request: req, PathParams: params, Route: route},
				Status:                 http.StatusOK,
				Header:                 http.Header{"Content-Type": {"application/json"}},
				Body:                   io.NopCloser(strings.NewReader(bad)),
				Options:                &openapi3filter.Options{IncludeResponseStatus: true},
			})
			require.Error(t, err, bad)
		}
		for _, x := range c.log {
			req := httpRequest(t, x.method, x.path, x.query)
			route, params, err := router.FindRoute(req)
			if x.status == http.StatusNotFound && x.path == "/api/v1/nope" {
				require.Error(t, err, "an unknown route is not in the document")
				continue
			}
			if x.status == http.StatusMethodNotAllowed {
				require.Error(t, err, "a wrong method is not in the document")
				continue
			}
			require.NoError(t, err, "%s %s is not in the document", x.method, x.path)
			in := &openapi3filter.ResponseValidationInput{
				RequestValidationInput: &openapi3filter.RequestValidationInput{Request: req, PathParams: params, Route: route},
				Status:                 x.status,
				Header:                 x.header,
				Body:                   io.NopCloser(bytes.NewReader(x.body)),
				Options:                &openapi3filter.Options{IncludeResponseStatus: true},
			}
			require.NoError(t, openapi3filter.ValidateResponse(context.Background(), in), "%s %s → %d %s", x.method, x.path, x.status, x.body)
		}
	})

	t.Run("LogsHoldNoSecret", func(t *testing.T) {
		logs := o.logs.String()
		require.Contains(t, logs, `"msg":"request"`)
		require.Contains(t, logs, `"msg":"vault erased"`)
		for _, s := range secrets {
			require.NotContains(t, logs, s)
		}
		require.Greater(t, len(secrets), 8, "the run issued keys, a wrap, tokens and the service key")
	})

	t.Run("AccessLineHasItsFields", func(t *testing.T) {
		var line map[string]any
		for _, l := range strings.Split(o.logs.String(), "\n") {
			if strings.Contains(l, `"route":"/api/v1/me/encryption-vault/init"`) {
				require.NoError(t, json.Unmarshal([]byte(l), &line))
				break
			}
		}
		require.NotNil(t, line, "an access line for /init")
		for _, field := range []string{"request_id", "route", "status", "latency", "user_id", "method"} {
			require.Contains(t, line, field)
		}
		require.Equal(t, "alice", line["user_id"])
		require.EqualValues(t, 200, line["status"])
	})

	t.Run("MetricsCountedRoutes", func(t *testing.T) {
		text := string(metrics)
		require.Contains(t, text, `keybroker_http_requests_total{method="POST",route="/api/v1/me/encryption-vault/init",status="200"} 2`, "alice and grace")
		require.Contains(t, text, `keybroker_http_requests_total{method="POST",route="/api/v1/me/ai-mission-grant",status="200"} 2`)
		require.Contains(t, text, `keybroker_http_requests_total{method="GET",route="unmatched",status="404"} 1`)
		require.Contains(t, text, `keybroker_http_requests_total{method="GET",route="/api/v1/me/encryption-vault/key",status="401"} 1`, "a refusal counts under its route")
		require.Contains(t, text, `keybroker_http_request_duration_seconds_bucket{method="GET",route="/api/v1/me/encryption-vault/key"`)
		require.Contains(t, text, `route="/api/v1/internal/users/{userId}/vault"`)
		require.NotContains(t, text, "alice", "no user id in any label")
	})
}

func mustRequest(t *testing.T, method, url string) *http.Request {
	req, err := http.NewRequest(method, url, nil)
	require.NoError(t, err)
	return req
}

func httpRequest(t *testing.T, method, path, query string) *http.Request {
	u := "http://keybroker.test" + path
	if query != "" {
		u += "?" + query
	}
	req, err := http.NewRequest(method, u, nil)
	require.NoError(t, err)
	return req
}

func loadOpenAPI(t *testing.T) (*openapi3.T, routers.Router) {
	t.Helper()
	doc, err := openapi3.NewLoader().LoadFromData(vaultapi.OpenAPI)
	require.NoError(t, err)
	require.NoError(t, doc.Validate(context.Background()))
	router, err := gorillamux.NewRouter(doc)
	require.NoError(t, err)
	return doc, router
}

// TestRouterAndDocumentAgree walks the router and the document: every
// route served is documented and every documented route is served.
func TestRouterAndDocumentAgree(t *testing.T) {
	t.Parallel()
	o := newOpsEnv(t, nil)
	served := map[string]bool{}
	api := buildAPI(t, o)
	require.NoError(t, chi.Walk(api.Router(), func(method, route string, _ http.Handler, _ ...func(http.Handler) http.Handler) error {
		served[method+" "+route] = true
		return nil
	}))
	doc, _ := loadOpenAPI(t)
	documented := map[string]bool{}
	for path, item := range doc.Paths.Map() {
		for method := range item.Operations() {
			documented[method+" "+path] = true
		}
	}
	require.Equal(t, sortedKeys(documented), sortedKeys(served))
	require.Len(t, served, 17, "7 vault, 1 mission grant, 5 service, 4 operations routes")
}

// buildAPI builds an API with the same options as the env's server, for
// the router walk.
func buildAPI(t *testing.T, o *opsEnv) *vaultapi.API {
	t.Helper()
	ring, err := broker.NewKeyring(newKEK(t, "env-v1"))
	require.NoError(t, err)
	svc, err := broker.New(context.Background(), broker.Config{Store: o.store, Keyring: ring})
	require.NoError(t, err)
	api, err := vaultapi.New(vaultapi.Config{
		Service: svc, Verifier: nopVerifier{}, ServiceKey: "k",
		MetricsHandler: promhttp.HandlerFor(prometheus.NewRegistry(), promhttp.HandlerOpts{}),
	})
	require.NoError(t, err)
	return api
}

type nopVerifier struct{}

func (nopVerifier) Verify(context.Context, string) (string, error) {
	return "", jwtauth.ErrUnauthorized
}

func sortedKeys(m map[string]bool) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}
