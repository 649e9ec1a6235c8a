package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/cmd/keybroker/internal/config"
	"github.com/keybroker/keybroker/internal/jwtissuer"
	"github.com/keybroker/keybroker/internal/testkit/kmstest/faketransit"
	"github.com/keybroker/keybroker/internal/testkit/pgtest"
	"github.com/keybroker/keybroker/kek"
	"github.com/keybroker/keybroker/kekproviders/localkek"
	"github.com/keybroker/keybroker/kekproviders/vaulttransit"
	"github.com/keybroker/keybroker/migrations"
	"github.com/keybroker/keybroker/pgstore"
	"github.com/keybroker/keybroker/sqlitestore"
	"github.com/keybroker/keybroker/vaultapi"
)

// opsServer is `keybroker serve` on a fresh database with a real JWKS,
// every operations setting given through the environment.
type opsServer struct {
	*server
	issuer *jwtissuer.Issuer
	kek    string
	env    map[string]string
}

func startOpsServe(t *testing.T, extra map[string]string) *opsServer {
	t.Helper()
	role, _ := pgtest.NewPlainDatabase(t)
	dbURL := role.URL
	issuer, err := jwtissuer.New("https://auth.test")
	require.NoError(t, err)
	jwks := httptest.NewServer(issuer.JWKSHandler())
	t.Cleanup(jwks.Close)
	var kek bytes.Buffer
	require.NoError(t, run(context.Background(), []string{"kek", "generate"}, envFunc(nil), &kek, io.Discard, nil))
	env := map[string]string{
		"DATABASE_URL":           dbURL,
		"MANA_AUTH_KEK":          strings.TrimSpace(kek.String()),
		"KEYBROKER_JWKS_URL":     jwks.URL,
		"KEYBROKER_JWT_ISSUER":   "https://auth.test",
		"KEYBROKER_JWT_AUDIENCE": "https://auth.test",
		"KEYBROKER_ADDR":         "127.0.0.1:0",
	}
	for k, v := range extra {
		env[k] = v
	}
	return &opsServer{server: startServe(t, env, "serve"), issuer: issuer, kek: env["MANA_AUTH_KEK"], env: env}
}

func (s *opsServer) token(t *testing.T, user string) string {
	tok, err := s.issuer.Mint(jwtissuer.Claims{Subject: user})
	require.NoError(t, err)
	return tok
}

func call(t *testing.T, method, url string, header map[string]string) (int, http.Header, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	require.NoError(t, err)
	for k, v := range header {
		req.Header.Set(k, v)
	}
	res, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	require.NoError(t, err)
	return res.StatusCode, res.Header, body
}

var metricsAddrRE = regexp.MustCompile(`"msg":"metrics listening","addr":"([^"]+)"`)

// TestServeOperations runs the binary's serve with the operations
// settings and checks each from outside: health and readiness, metrics on
// their own address (KEK calls, pool, readiness, requests), the service
// routes with the original service's MANA_SERVICE_KEY, CORS, the rate
// limit, and logs that hold no secret.
func TestServeOperations(t *testing.T) {
	const serviceKey = "mana-service-key-0123456789abcdef"
	s := startOpsServe(t, map[string]string{
		"KEYBROKER_METRICS_ADDR":    "127.0.0.1:0",
		"MANA_SERVICE_KEY":          serviceKey,
		"KEYBROKER_CORS_ORIGINS":    "https://app.example.com, https://admin.example.com",
		"KEYBROKER_TRUSTED_PROXIES": "127.0.0.0/8",
		"KEYBROKER_RATE_LIMIT":      "0.001",
		"KEYBROKER_RATE_BURST":      "6",
	})
	base := "http://" + s.addr
	m := metricsAddrRE.FindStringSubmatch(s.logs.String())
	require.NotNil(t, m, "the metrics address is logged before serve listens:\n%s", s.logs.String())
	metricsURL := "http://" + m[1] + "/metrics"

	status, _, body := call(t, http.MethodGet, base+"/healthz", nil)
	require.Equal(t, http.StatusOK, status)
	require.JSONEq(t, `{"status":"ok","version":"`+version+`"}`, string(body))

	status, _, body = call(t, http.MethodGet, base+"/readyz", nil)
	require.Equal(t, http.StatusOK, status, "the first poll ran before serve listened: %s", body)
	var ready struct {
		Status string
		Checks []struct{ Name, ID, Status string }
	}
	require.NoError(t, json.Unmarshal(body, &ready))
	var names []string
	for _, c := range ready.Checks {
		names = append(names, c.Name+":"+c.ID+"="+c.Status)
	}
	require.Equal(t, []string{"store:=ok", "kek:env-v1=ok", "keyring:=ok", "jwks:=ok"}, names)

	tok := s.token(t, "alice")
	bearer := map[string]string{"Authorization": "Bearer " + tok, "X-Forwarded-For": "198.51.100.23", "Origin": "https://admin.example.com"}
	status, h, body := call(t, http.MethodPost, base+vaultapi.BasePath+"/init", bearer)
	require.Equal(t, http.StatusOK, status, "%s", body)
	require.Equal(t, "https://admin.example.com", h.Get("Access-Control-Allow-Origin"))
	var key struct{ MasterKey string }
	require.NoError(t, json.Unmarshal(body, &key))
	require.NotEmpty(t, key.MasterKey)
	for range 5 {
		status, _, _ = call(t, http.MethodGet, base+vaultapi.BasePath+"/key", bearer)
		require.Equal(t, http.StatusOK, status)
	}
	status, h, body = call(t, http.MethodGet, base+vaultapi.BasePath+"/key", bearer)
	require.Equal(t, http.StatusTooManyRequests, status, "the 7th request exceeds a burst of 6: %s", body)
	require.NotEmpty(t, h.Get("Retry-After"))

	service := map[string]string{vaultapi.ServiceKeyHeader: serviceKey}
	status, _, body = call(t, http.MethodGet, base+"/api/v1/internal/users/alice/vault/audit", service)
	require.Equal(t, http.StatusOK, status, "%s", body)
	require.Contains(t, string(body), `"ipAddress":"198.51.100.23"`, "the trusted proxy's X-Forwarded-For made the audit row")
	status, _, _ = call(t, http.MethodGet, base+"/api/v1/internal/users/alice/vault", map[string]string{vaultapi.ServiceKeyHeader: "nope"})
	require.Equal(t, http.StatusUnauthorized, status)
	status, _, body = call(t, http.MethodDelete, base+"/api/v1/internal/users/alice/vault", service)
	require.Equal(t, http.StatusOK, status, "%s", body)

	status, _, _ = call(t, http.MethodGet, base+"/metrics", nil)
	require.Equal(t, http.StatusNotFound, status, "with a metrics address, /metrics is not on the API's listener")
	status, _, body = call(t, http.MethodGet, metricsURL, nil)
	require.Equal(t, http.StatusOK, status)
	metrics := string(body)
	for _, want := range []string{
		`keybroker_kek_operations_total{kek_id="env-v1",operation="wrap",outcome="ok",provider="env"}`,
		`keybroker_kek_operations_total{kek_id="env-v1",operation="unwrap",outcome="ok",provider="env"}`,
		`keybroker_kek_operations_total{kek_id="env-v1",operation="status",outcome="ok",provider="env"}`,
		`keybroker_kek_operation_duration_seconds_bucket{kek_id="env-v1",operation="wrap",provider="env"`,
		`keybroker_http_requests_total{method="GET",route="/api/v1/me/encryption-vault/key",status="429"} 1`,
		`keybroker_http_requests_total{method="DELETE",route="/api/v1/internal/users/{userId}/vault",status="200"} 1`,
		`keybroker_store_pool_connections{state="idle"}`,
		`keybroker_store_pool_max_connections`,
		`keybroker_ready_check{check="kek",id="env-v1",status="ok"} 1`,
		`keybroker_build_info{version="` + version + `"} 1`,
		`keybroker_vault_rows_refreshed_timestamp_seconds`,
		`keybroker_rewrap_running 0`,
		`keybroker_group_commit_size_bucket{kind="fetch",le="1"}`,
		`keybroker_group_commit_duration_seconds_count{kind="fetch",outcome="ok"}`,
		`keybroker_group_commit_retries_total{kind="fetch"} 0`,
		`go_goroutines`,
	} {
		require.Contains(t, metrics, want)
	}

	require.NoError(t, s.stop())
	logs := s.logs.String()
	require.Contains(t, logs, `"msg":"vault erased"`)
	for _, secret := range []string{key.MasterKey, tok, serviceKey, s.kek} {
		require.NotContains(t, logs, secret)
	}
	require.NotContains(t, metrics, "alice")
}

// TestServeRefusesBadOperationsSettings: each bad setting stops the start
// with a message naming it.
func TestServeRefusesBadOperationsSettings(t *testing.T) {
	base := map[string]string{
		"DATABASE_URL":           "postgres://postgres@127.0.0.1:1/none?sslmode=disable",
		"KEYBROKER_JWKS_URL":     "http://127.0.0.1:1/jwks",
		"KEYBROKER_JWT_ISSUER":   "https://auth.test",
		"KEYBROKER_JWT_AUDIENCE": "https://auth.test",
		"MANA_AUTH_KEK":          base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{7}, 32)),
	}
	for name, c := range map[string]struct{ key, value, want string }{
		"CertWithoutKey":  {"KEYBROKER_TLS_CERT", "/etc/cert.pem", "KEYBROKER_TLS_KEY"},
		"NegativeRate":    {"KEYBROKER_RATE_LIMIT", "-1", "KEYBROKER_RATE_LIMIT"},
		"RateNotANumber":  {"KEYBROKER_RATE_LIMIT", "fast", "KEYBROKER_RATE_LIMIT"},
		"BadProxy":        {"KEYBROKER_TRUSTED_PROXIES", "10.0.0.0/8 proxy.internal", "proxy.internal"},
		"TinyInterval":    {"KEYBROKER_READY_INTERVAL", "1ms", "KEYBROKER_READY_INTERVAL"},
		"WildcardOrigin":  {"KEYBROKER_CORS_ORIGINS", "*", "explicitly"},
		"OriginWithPath":  {"KEYBROKER_CORS_ORIGINS", "https://app.example.com/x", "scheme://host"},
		"BurstNotANumber": {"KEYBROKER_RATE_BURST", "lots", "KEYBROKER_RATE_BURST"},
		"RecoveryProof":   {"KEYBROKER_RECOVERY_PROOF", "off", "KEYBROKER_RECOVERY_PROOF"},
	} {
		t.Run(name, func(t *testing.T) {
			env := map[string]string{c.key: c.value}
			for k, v := range base {
				env[k] = v
			}
			if c.key == "KEYBROKER_CORS_ORIGINS" {
				// Checked once the API is built, which needs a store.
				env["DATABASE_URL"] = ""
				env["KEYBROKER_DATA_DIR"] = t.TempDir()
				jwks := httptest.NewServer(mustIssuer(t).JWKSHandler())
				t.Cleanup(jwks.Close)
				env["KEYBROKER_JWKS_URL"] = jwks.URL
			}
			err := run(context.Background(), []string{"serve"}, envFunc(env), io.Discard, io.Discard, nil)
			require.Error(t, err)
			require.Contains(t, err.Error(), c.want)
		})
	}
}

func mustIssuer(t *testing.T) *jwtissuer.Issuer {
	issuer, err := jwtissuer.New("https://auth.test")
	require.NoError(t, err)
	return issuer
}

func TestLoggerFormat(t *testing.T) {
	t.Parallel()
	for format, want := range map[string]string{"": `{"time":`, "json": `{"time":`, "text": `time=`} {
		var buf bytes.Buffer
		newLogger(config.Log{Level: slog.LevelInfo, Format: format}, &buf).Info("hello")
		require.True(t, strings.HasPrefix(buf.String(), want), "format %q wrote %q", format, buf.String())
	}
	_, err := config.Resolve(config.Migrate, nil, envFunc(map[string]string{"KEYBROKER_LOG_FORMAT": "xml"}), io.Discard, "")
	require.ErrorContains(t, err, `$KEYBROKER_LOG_FORMAT (--log-format): "xml": use json or text`)
}

// TestKEKCallsAreMeasured: serve's keyring hands out the KEKs themselves
// — the abilities the fetch path and the re-wrap job look for (Local,
// Rewrap, KeyVersion) are the provider's own, with no wrapper to keep
// them — and its observer counts and times the calls made through it,
// labelled with the URI's scheme (data-key for a data key's local KEK)
// and the call's class. (broker.TestKeyringReportsEveryKEKCall covers the
// keyring's own calls.)
func TestKEKCallsAreMeasured(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	m, err := newKEKMetrics(prometheus.NewRegistry())
	require.NoError(t, err)
	local, err := localkek.New("local-1", bytes.Repeat([]byte{9}, 32), false)
	require.NoError(t, err)
	srv := faketransit.Start(t)
	srv.CreateKey(t, "kb", true)
	transit, err := vaulttransit.New(ctx, vaulttransit.Config{ID: "transit-1", Key: "kb", Address: srv.URL, Timeout: 10 * time.Second,
		Auth: vaulttransit.Auth{Token: srv.Token(faketransit.TokenOptions{})}})
	require.NoError(t, err)
	t.Cleanup(func() { _ = transit.Close() })
	keks := &openedKEKs{keks: []broker.KEK{local, transit}, metrics: m,
		specs: []config.KEKSpec{
			{Role: config.RoleActive, ID: "local-1", Scheme: "file"},
			{Role: config.RoleDecryptOnly, ID: "transit-1", Scheme: "vault-transit", Cached: false},
		},
		schemes: map[string]string{"local-1": "file", "transit-1": "vault-transit"}}
	ring, err := keks.keyring(ctx, nil, discardLogger(), 0, time.Now)
	require.NoError(t, err)

	got, err := ring.Lookup("local-1")
	require.NoError(t, err)
	require.Equal(t, broker.KEK(local), got, "the keyring holds the provider's KEK itself")
	require.True(t, got.(kek.LocalUnwrapper).Local(), "a local KEK stays local: its fetches are recorded in the read's commit")
	got, err = ring.Lookup("transit-1")
	require.NoError(t, err)
	_, rewraps := got.(kek.Rewrapper)
	_, versions := got.(kek.Versioner)
	require.True(t, rewraps && versions, "the re-wrap job finds Rewrap and KeyVersion on the KEK")

	store, err := sqlitestore.Open(ctx, sqlitestore.Config{Dir: t.TempDir()})
	require.NoError(t, err)
	t.Cleanup(func() { _ = store.Close() })
	rt, err := broker.NewRuntime(ctx, broker.RuntimeConfig{Store: store, Keyring: ring, Logger: discardLogger()}) // the start-up check
	require.NoError(t, err)
	t.Cleanup(rt.Close)
	for _, op := range []string{"status", "wrap", "unwrap"} {
		require.Equal(t, 1.0, testutil.ToFloat64(m.ops.WithLabelValues("file", "local-1", op, "ok")), op)
	}
	var probe func(context.Context) error // readiness
	for _, c := range rt.Checks() {
		if c.Name == "kek" && c.ID == "transit-1" {
			probe = c.Probe
		}
	}
	require.NotNil(t, probe)
	require.NoError(t, probe(ctx))
	srv.Seal(true)
	require.Error(t, probe(ctx))
	require.Equal(t, 1.0, testutil.ToFloat64(m.ops.WithLabelValues("vault-transit", "transit-1", "status", "ok")))
	require.Equal(t, 1.0, testutil.ToFloat64(m.ops.WithLabelValues("vault-transit", "transit-1", "status", "unavailable")))

	// Any id that is not configured is a data key's local KEK.
	keks.observeKEKCall(kek.Call{KEKID: "dk-1", Op: kek.OpUnwrap, Took: time.Millisecond, Err: fmt.Errorf("localkek: %w", kek.ErrInvalidCiphertext)})
	require.Equal(t, 1.0, testutil.ToFloat64(m.ops.WithLabelValues("data-key", "dk-1", "unwrap", "invalid_ciphertext")))
	require.Positive(t, testutil.CollectAndCount(m.latency), "latencies are observed")

	dev, err := broker.NewKeyring(local)
	require.NoError(t, err)
	require.Nil(t, dev.CallObserver(local), "no observer, no metrics (dev mode)")
}

// TestRowsPerKEKMetric: the rows collector reports the store's rows per
// KEK id and mode, and the re-wrap job's state, from its last refresh.
func TestRowsPerKEKMetric(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.NewPool(t, pgtest.NewDatabase(t))
	_, err := migrations.Apply(ctx, pool, "keybroker")
	require.NoError(t, err)
	store, err := pgstore.New(ctx, pgstore.Config{Pool: pool, Schema: "keybroker"})
	require.NoError(t, err)
	kek, err := localkek.New("env-v1", bytes.Repeat([]byte{3}, 32), false)
	require.NoError(t, err)
	ring, err := broker.NewKeyring(kek)
	require.NoError(t, err)
	svc, err := broker.New(ctx, broker.Config{Store: store, Keyring: ring})
	require.NoError(t, err)
	for _, user := range []string{"a", "b", "c"} {
		_, err := svc.Init(ctx, user, broker.RequestMeta{})
		require.NoError(t, err)
	}
	require.NoError(t, svc.SetRecoveryWrap(ctx, "c", bytes.Repeat([]byte{1}, broker.RecoveryWrapSize), bytes.Repeat([]byte{2}, broker.RecoveryIVSize), nil, broker.RequestMeta{}))
	require.NoError(t, svc.EnableZeroKnowledge(ctx, "c", nil, broker.RequestMeta{}))

	rt, err := broker.NewRuntime(ctx, broker.RuntimeConfig{Store: store, Keyring: ring, Logger: slog.New(slog.DiscardHandler),
		CountRowsEvery: time.Hour})
	require.NoError(t, err)
	defer rt.Close()
	c := rowsCollector{rt}
	require.Zero(t, testutil.CollectAndCount(c), "nothing before the first count")
	rt.Start(ctx) // counts once before it returns
	require.NoError(t, testutil.CollectAndCompare(c, strings.NewReader(`
# HELP keybroker_vault_rows Vault rows by KEK id, wrap format and mode (server: the server holds a wrap; zero_knowledge: only the recovery wrap).
# TYPE keybroker_vault_rows gauge
keybroker_vault_rows{format="2",kek_id="env-v1",mode="server"} 2
keybroker_vault_rows{format="2",kek_id="env-v1",mode="zero_knowledge"} 1
# HELP keybroker_rewrap_running 1 while a re-wrap runner holds the job's lock.
# TYPE keybroker_rewrap_running gauge
keybroker_rewrap_running 0
`), "keybroker_vault_rows", "keybroker_rewrap_running"))
}
