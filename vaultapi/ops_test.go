package vaultapi_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/netip"
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

func TestServiceRoutes(t *testing.T) {
	t.Parallel()
	o := newOpsEnv(t, nil)
	c := &client{t: t, base: o.url}
	decodeKey(t, o.do(http.MethodPost, "/init", "alice", nil))
	decodeKey(t, o.do(http.MethodPost, "/init", "bob", nil))

	t.Run("BadKeysAre401AndIndistinguishable", func(t *testing.T) {
		var bodies []string
		for _, key := range []string{"", "x", testServiceKey[:len(testServiceKey)-1], testServiceKey + "x", strings.ToUpper(testServiceKey), strings.Repeat("k", 4096)} {
			h := map[string]string{}
			if key != "" {
				h[vaultapi.ServiceKeyHeader] = key
			}
			res, body := c.request(http.MethodGet, "/api/v1/internal/users/alice/vault", h, "")
			require.Equal(t, http.StatusUnauthorized, res.StatusCode)
			require.Equal(t, "UNAUTHORIZED", body["code"])
			bodies = append(bodies, fmt.Sprint(body))
		}
		for _, b := range bodies {
			require.Equal(t, bodies[0], b, "every refusal looks the same")
		}
		// A user's bearer token is not a service key.
		res, _ := c.request(http.MethodDelete, "/api/v1/internal/users/alice/vault", map[string]string{"Authorization": "Bearer " + o.token("alice")}, "")
		require.Equal(t, http.StatusUnauthorized, res.StatusCode)
		require.NotNil(t, o.vaultRow("alice"))
	})

	t.Run("MalformedUserIDIs400", func(t *testing.T) {
		for _, id := range []string{"%00", "a%0Ab", "%FF%FE", strings.Repeat("u", jwtauth.MaxSubjectBytes+1), "%7F"} {
			res, body := c.request(http.MethodGet, "/api/v1/internal/users/"+id+"/vault", serviceHeader(), "")
			require.Equal(t, http.StatusBadRequest, res.StatusCode, id)
			require.Equal(t, "BAD_REQUEST", body["code"])
		}
	})

	t.Run("EscapedUserIDsReachTheirUser", func(t *testing.T) {
		for _, id := range []string{"user/with/slashes", "ü ser", "a%b"} {
			decodeKey(t, o.do(http.MethodPost, "/init", id, nil))
			_, body := c.request(http.MethodGet, "/api/v1/internal/users/"+url.PathEscape(id)+"/vault", serviceHeader(), "")
			require.Equal(t, true, body["vaultExists"], id)
			require.Equal(t, id, body["userId"])
		}
	})

	t.Run("MetadataHasNoKeyMaterial", func(t *testing.T) {
		_, body := c.request(http.MethodGet, "/api/v1/internal/users/alice/vault", serviceHeader(), "")
		require.Equal(t, "env-v1", body["kekId"])
		require.EqualValues(t, 2, body["formatVersion"])
		require.Equal(t, true, body["hasServerWrap"])
		row := o.vaultRow("alice")
		raw := fmt.Sprint(body)
		for _, col := range []string{"wrapped_mk", "key_check"} {
			require.NotContains(t, raw, row[col].(string))
		}
		_, none := c.request(http.MethodGet, "/api/v1/internal/users/nobody/vault", serviceHeader(), "")
		require.Equal(t, false, none["vaultExists"])
		require.Nil(t, none["kekId"])
		require.EqualValues(t, 0, none["auditRowCount"])
	})

	t.Run("AuditPagesAndBadParameters", func(t *testing.T) {
		for range 5 {
			decodeKey(t, o.do(http.MethodGet, "/key", "bob", nil))
		}
		var actions []string
		path := "/api/v1/internal/users/bob/vault/audit?limit=2"
		for range 10 {
			_, body := c.request(http.MethodGet, path, serviceHeader(), "")
			for _, e := range body["entries"].([]any) {
				entry := e.(map[string]any)
				require.Equal(t, "keybroker-test", entry["userAgent"])
				actions = append(actions, entry["action"].(string))
			}
			next, ok := body["nextCursor"].(string)
			if !ok {
				break
			}
			path = "/api/v1/internal/users/bob/vault/audit?limit=2&cursor=" + url.QueryEscape(next)
		}
		require.Equal(t, []string{"init", "fetch", "fetch", "fetch", "fetch", "fetch"}, actions)
		for _, q := range []string{"limit=0", "limit=1001", "limit=x", "cursor=garbage", "cursor=" + base64.RawURLEncoding.EncodeToString([]byte(`{"t":"x"}`))} {
			res, body := c.request(http.MethodGet, "/api/v1/internal/users/bob/vault/audit?"+q, serviceHeader(), "")
			require.Equal(t, http.StatusBadRequest, res.StatusCode, q)
			require.Equal(t, "BAD_REQUEST", body["code"])
		}
	})

	t.Run("EraseShredsAndIsIdempotent", func(t *testing.T) {
		decodeKey(t, o.do(http.MethodPost, "/init", "carol", nil))
		before := o.logs.Len()
		res, body := c.request(http.MethodDelete, "/api/v1/internal/users/carol/vault", serviceHeader(), "")
		require.Equal(t, http.StatusOK, res.StatusCode)
		require.Equal(t, map[string]any{"ok": true, "vaultDeleted": true, "auditRowsDeleted": float64(1)}, body)
		require.Nil(t, o.vaultRow("carol"))
		require.Empty(t, o.auditActions("carol"), "no audit row names the erased user")
		res, body = c.request(http.MethodDelete, "/api/v1/internal/users/carol/vault", serviceHeader(), "")
		require.Equal(t, http.StatusOK, res.StatusCode)
		require.Equal(t, false, body["vaultDeleted"])
		logs := o.logs.String()[before:]
		require.Contains(t, logs, `"event":"erase"`)
		require.NotContains(t, logs, "carol", "the erasure's log lines name nobody")
		require.NotNil(t, o.vaultRow("alice"), "other users are untouched")
		o.do(http.MethodGet, "/key", "carol", nil).requireError(t, http.StatusNotFound, "VAULT_NOT_INITIALISED")
	})

	t.Run("WrongMethodIs405", func(t *testing.T) {
		res, body := c.request(http.MethodPut, "/api/v1/internal/users/alice/vault", serviceHeader(), "")
		require.Equal(t, http.StatusMethodNotAllowed, res.StatusCode)
		require.Equal(t, "METHOD_NOT_ALLOWED", body["code"])
		res, body = c.request(http.MethodPost, "/healthz", nil, "")
		require.Equal(t, http.StatusMethodNotAllowed, res.StatusCode)
		require.Equal(t, "METHOD_NOT_ALLOWED", body["code"])
	})
}

// TestServiceRoutesAbsentWithoutKey: with no service key configured the
// routes do not exist, whatever header is sent.
func TestServiceRoutesAbsentWithoutKey(t *testing.T) {
	t.Parallel()
	o := newOpsEnv(t, func(cfg *vaultapi.Config) { cfg.ServiceKey = "" })
	c := &client{t: t, base: o.url}
	for _, method := range []string{http.MethodGet, http.MethodDelete} {
		res, body := c.request(method, "/api/v1/internal/users/alice/vault", map[string]string{vaultapi.ServiceKeyHeader: ""}, "")
		require.Equal(t, http.StatusNotFound, res.StatusCode)
		require.Equal(t, "NOT_FOUND", body["code"])
	}
}

func TestCORS(t *testing.T) {
	t.Parallel()
	o := newOpsEnv(t, nil)
	c := &client{t: t, base: o.url}
	preflight := func(origin, method, headers string) *http.Response {
		res, _ := c.request(http.MethodOptions, vaultapi.BasePath+"/key", map[string]string{
			"Origin": origin, "Access-Control-Request-Method": method, "Access-Control-Request-Headers": headers,
		}, "")
		return res
	}
	t.Run("PreflightOfListedOrigin", func(t *testing.T) {
		res := preflight("https://app.example.com", "GET", "authorization")
		require.Equal(t, http.StatusNoContent, res.StatusCode)
		require.Equal(t, "https://app.example.com", res.Header.Get("Access-Control-Allow-Origin"))
		require.Equal(t, "true", res.Header.Get("Access-Control-Allow-Credentials"))
		require.Contains(t, res.Header.Get("Access-Control-Allow-Headers"), "Authorization")
		require.Contains(t, res.Header.Get("Access-Control-Allow-Methods"), "GET")
		require.Contains(t, res.Header.Values("Vary"), "Origin")
	})
	t.Run("PreflightRefusals", func(t *testing.T) {
		for name, p := range map[string][3]string{
			"OtherOrigin":  {"https://evil.example.com", "GET", "authorization"},
			"SchemeDiffer": {"http://app.example.com", "GET", "authorization"},
			"OtherMethod":  {"https://app.example.com", "PUT", "authorization"},
			"OtherHeader":  {"https://app.example.com", "GET", "authorization, x-evil"},
		} {
			res := preflight(p[0], p[1], p[2])
			require.Empty(t, res.Header.Get("Access-Control-Allow-Origin"), name)
			require.Empty(t, res.Header.Get("Access-Control-Allow-Credentials"), name)
		}
	})
	t.Run("RealRequests", func(t *testing.T) {
		h := map[string]string{"Authorization": "Bearer " + o.token("alice"), "Origin": "https://app.example.com"}
		res, _ := c.request(http.MethodGet, vaultapi.BasePath+"/status", h, "")
		require.Equal(t, http.StatusOK, res.StatusCode)
		require.Equal(t, "https://app.example.com", res.Header.Get("Access-Control-Allow-Origin"))
		require.Equal(t, "true", res.Header.Get("Access-Control-Allow-Credentials"))
		require.Contains(t, res.Header.Get("Access-Control-Expose-Headers"), "Retry-After")
		// An error answer carries the headers too, so the page can read it.
		res, _ = c.request(http.MethodGet, vaultapi.BasePath+"/key", map[string]string{"Origin": "https://app.example.com"}, "")
		require.Equal(t, http.StatusUnauthorized, res.StatusCode)
		require.Equal(t, "https://app.example.com", res.Header.Get("Access-Control-Allow-Origin"))
		h["Origin"] = "https://evil.example.com"
		res, _ = c.request(http.MethodGet, vaultapi.BasePath+"/status", h, "")
		require.Empty(t, res.Header.Get("Access-Control-Allow-Origin"))
		require.Empty(t, res.Header.Get("Access-Control-Allow-Credentials"))
	})
	t.Run("BadOriginsAreRefusedAtStart", func(t *testing.T) {
		ring, err := broker.NewKeyring(newKEK(t, "k"))
		require.NoError(t, err)
		svc, err := broker.New(context.Background(), broker.Config{Store: o.store, Keyring: ring})
		require.NoError(t, err)
		for _, bad := range []string{"*", "app.example.com", "https://app.example.com/path", "ftp://x", "https://u@x"} {
			_, err := vaultapi.New(vaultapi.Config{Service: svc, Verifier: nopVerifier{}, CORSOrigins: []string{bad}})
			require.Error(t, err, bad)
		}
	})
}

func TestRateLimitIsPerUser(t *testing.T) {
	t.Parallel()
	o := newOpsEnv(t, func(cfg *vaultapi.Config) {
		// A rate so slow that the bucket cannot refill during the test.
		cfg.RateLimit = vaultapi.RateLimit{PerSecond: 0.001, Burst: 3}
	})
	for range 3 {
		require.Equal(t, http.StatusOK, o.do(http.MethodGet, "/status", "alice", nil).status)
	}
	r := o.do(http.MethodGet, "/status", "alice", nil)
	r.requireError(t, http.StatusTooManyRequests, "RATE_LIMITED")
	require.NotEmpty(t, r.header.Get("Retry-After"))
	require.Equal(t, "no-store", r.header.Get("Cache-Control"))
	require.Equal(t, http.StatusOK, o.do(http.MethodGet, "/status", "bob", nil).status, "another user has a bucket of their own")
	// Operations routes are never limited.
	for range 5 {
		res, err := http.Get(o.url + "/healthz")
		require.NoError(t, err)
		res.Body.Close()
		require.Equal(t, http.StatusOK, res.StatusCode)
	}
}

// TestAuditIPFromTrustedProxy: X-Forwarded-For is believed from a trusted
// peer (127.0.0.0/8 here) and only as far as the chain is trusted.
func TestAuditIPFromTrustedProxy(t *testing.T) {
	t.Parallel()
	o := newOpsEnv(t, nil)
	call := func(user, xff string) {
		req, err := http.NewRequest(http.MethodPost, o.url+vaultapi.BasePath+"/init", nil)
		require.NoError(t, err)
		req.Header.Set("Authorization", "Bearer "+o.token(user))
		req.Header.Set("X-Forwarded-For", xff)
		res, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		res.Body.Close()
		require.Equal(t, http.StatusOK, res.StatusCode)
	}
	call("alice", "198.51.100.7, 203.0.113.9, 127.0.0.2")
	var ip string
	require.NoError(t, o.admin.QueryRow(context.Background(), "SELECT ip_address FROM keybroker.encryption_vault_audit WHERE user_id = 'alice'").Scan(&ip))
	require.Equal(t, "203.0.113.9", ip, "the first untrusted hop from the right, not the spoofable leftmost")

	o2 := newOpsEnv(t, func(cfg *vaultapi.Config) {
		trusted, err := vaultapi.ParseTrustedProxies([]string{"10.0.0.0/8"})
		require.NoError(t, err)
		cfg.ClientIP = vaultapi.TrustedProxyClientIP(trusted)
	})
	o = o2
	call("bob", "198.51.100.7")
	require.NoError(t, o.admin.QueryRow(context.Background(), "SELECT ip_address FROM keybroker.encryption_vault_audit WHERE user_id = 'bob'").Scan(&ip))
	require.Equal(t, "127.0.0.1", ip, "an untrusted peer's header is ignored")
}

func TestTrustedProxyClientIP(t *testing.T) {
	t.Parallel()
	trusted, err := vaultapi.ParseTrustedProxies([]string{"10.0.0.0/8", "192.0.2.1", "fd00::/8"})
	require.NoError(t, err)
	clientIP := vaultapi.TrustedProxyClientIP(trusted)
	cases := []struct {
		name, peer string
		xff        []string
		want       string
	}{
		{"UntrustedPeerIgnoresHeader", "203.0.113.5:1234", []string{"198.51.100.1"}, "203.0.113.5"},
		{"TrustedPeerNoHeader", "10.1.2.3:1234", nil, "10.1.2.3"},
		{"OneHop", "10.1.2.3:1234", []string{"198.51.100.1"}, "198.51.100.1"},
		{"SkipsTrustedHops", "10.1.2.3:1234", []string{"198.51.100.1, 203.0.113.9, 10.9.9.9, 192.0.2.1"}, "203.0.113.9"},
		{"SeveralHeaderLines", "10.1.2.3:1234", []string{"198.51.100.1", "203.0.113.9", "10.0.0.7"}, "203.0.113.9"},
		{"AllTrustedTakesLeftmost", "10.1.2.3:1234", []string{"10.0.0.1, 10.0.0.2"}, "10.0.0.1"},
		{"GarbageStopsAtLastTrusted", "10.1.2.3:1234", []string{"198.51.100.1, not-an-ip, 10.0.0.2"}, "10.0.0.2"},
		{"HopsWithPorts", "10.1.2.3:1234", []string{"[2001:db8::1]:443, 10.0.0.2:80"}, "2001:db8::1"},
		{"IPv6Proxy", "[fd00::1]:1234", []string{"198.51.100.1"}, "198.51.100.1"},
		{"MappedIPv4Peer", "[::ffff:10.1.2.3]:1234", []string{"198.51.100.1"}, "198.51.100.1"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			req, _ := http.NewRequest(http.MethodGet, "http://x/", nil)
			req.RemoteAddr = c.peer
			for _, v := range c.xff {
				req.Header.Add("X-Forwarded-For", v)
			}
			require.Equal(t, c.want, clientIP(req))
		})
	}
	_, err = vaultapi.ParseTrustedProxies([]string{"10.0.0.0/33"})
	require.Error(t, err)
	p, err := vaultapi.ParseTrustedProxies([]string{"192.0.2.7", "::1"})
	require.NoError(t, err)
	require.Equal(t, []netip.Prefix{netip.MustParsePrefix("192.0.2.7/32"), netip.MustParsePrefix("::1/128")}, p)
}
