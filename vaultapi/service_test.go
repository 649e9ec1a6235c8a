package vaultapi_test

import (
	"context"
	"encoding/base64"
	"fmt"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/vaultapi"
	"github.com/keybroker/keybroker/vaultapi/jwtauth"
)

// The service routes (data export, erasure) and the edges of every route: CORS, the per-user rate limit, the client address behind trusted proxies.

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
