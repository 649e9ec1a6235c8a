package vaultapi_test

// Fuzz targets of the HTTP layer. Each drives the real router — access
// log, recoverer, CORS, body limit, bearer-token middleware with the real
// JWKS verifier, handlers, the one error writer — over a real store (the
// embedded SQLite store in a temporary directory: no server to share, and
// every fuzz worker gets its own). The property is the brief's: no input
// produces a 5xx, a panic or a hang, and every error body is exactly
// {"error","code"}.
//
// `go test` runs the committed corpora (testdata/fuzz/<FuzzName>/) and the
// f.Add seeds as ordinary tests; `make fuzz` explores for a bounded time.

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/grant"
	"github.com/keybroker/keybroker/internal/jwtissuer"
	"github.com/keybroker/keybroker/internal/testkit/apitest"
	"github.com/keybroker/keybroker/kekproviders/localkek"
	"github.com/keybroker/keybroker/vaultapi"
	"github.com/keybroker/keybroker/vaultapi/jwtauth"
)

// fuzzServiceKey is the service key of the fuzz harness; inputs choose
// whether to send it.
const fuzzServiceKey = "fuzz-service-key-0123456789abcdef"

// fuzzRequestBound is how long one request may take before the harness
// calls it a hang: well above the API's own request timeout.
const fuzzRequestBound = 20 * time.Second

// fuzzAPI is the router under fuzz, with an issuer whose tokens it
// accepts.
type fuzzAPI struct {
	handler http.Handler
	issuer  *jwtissuer.Issuer
}

func newFuzzAPI(f *testing.F) *fuzzAPI {
	f.Helper()
	key := bytes.Repeat([]byte{0x42}, 32)
	kek, err := localkek.New("fuzz-kek", key, false)
	require.NoError(f, err)
	ring, err := broker.NewKeyring(kek)
	require.NoError(f, err)
	issuer, err := jwtissuer.New("https://auth.fuzz")
	require.NoError(f, err)
	workers := newGrantWorkers(f)
	srv := apitest.Start(f, apitest.Options{
		Keyring: ring,
		Issuer:  issuer,
		Broker:  workers.service,
		Verifier: func(c *jwtauth.Config) {
			// Fuzzed kids must not become one JWKS refetch per input.
			c.MinRefreshInterval, c.RefreshInterval = time.Hour, 2*time.Hour
		},
		API: func(c *vaultapi.Config) {
			c.RequestTimeout = 5 * time.Second
			c.ServiceKey = fuzzServiceKey
			c.CORSOrigins = []string{"https://app.fuzz"}
		},
	})
	return &fuzzAPI{handler: srv.API.Handler(), issuer: srv.Issuer}
}

// Authorization modes a fuzz input picks from.
const (
	authNone       = iota // no credentials at all
	authValid             // a valid token for "fuzz-user"
	authSubject           // a valid signature over the fuzzed subject
	authBearerRaw         // "Bearer " + the fuzzed text
	authHeaderRaw         // the fuzzed text as the whole header
	authService           // the right service key
	authServiceRaw        // the fuzzed text as the service key
	authModes
)

// credentials sets the request's credentials for mode.
func (h *fuzzAPI) credentials(t *testing.T, req *http.Request, mode uint8, raw string) {
	switch mode % authModes {
	case authValid:
		req.Header.Set("Authorization", "Bearer "+h.mint(t, "fuzz-user"))
	case authSubject:
		req.Header.Set("Authorization", "Bearer "+h.mint(t, raw))
	case authBearerRaw:
		req.Header.Set("Authorization", "Bearer "+raw)
	case authHeaderRaw:
		req.Header.Set("Authorization", raw)
	case authService:
		req.Header.Set(vaultapi.ServiceKeyHeader, fuzzServiceKey)
	case authServiceRaw:
		req.Header.Set(vaultapi.ServiceKeyHeader, raw)
	}
}

func (h *fuzzAPI) mint(t *testing.T, subject string) string {
	tok, err := h.issuer.Mint(jwtissuer.Claims{Subject: subject})
	require.NoError(t, err)
	return tok
}

// serve runs one request through the router and checks the properties
// every response must have.
func (h *fuzzAPI) serve(t *testing.T, req *http.Request) *httptest.ResponseRecorder {
	t.Helper()
	rec := httptest.NewRecorder()
	done := make(chan any, 1)
	go func() {
		defer func() { done <- recover() }()
		h.handler.ServeHTTP(rec, req)
	}()
	select {
	case p := <-done:
		require.Nil(t, p, "the handler panicked")
	case <-time.After(fuzzRequestBound):
		t.Fatalf("%s %s hung for %s", req.Method, req.URL, fuzzRequestBound)
	}
	require.Less(t, rec.Code, 500, "%s %q answered %d: %s", req.Method, req.URL.String(), rec.Code, rec.Body.String())
	if rec.Code >= 400 && req.Method != http.MethodHead {
		var body map[string]any
		require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &body), "error body is not JSON: %q", rec.Body.String())
		require.Len(t, body, 2, "error body is exactly {error, code}: %s", rec.Body.String())
		require.NotEmpty(t, body["error"])
		require.NotEmpty(t, body["code"])
	}
	if strings.HasPrefix(req.URL.Path, vaultapi.BasePath+"/") && rec.Code != http.StatusNotFound && rec.Code != http.StatusMethodNotAllowed {
		require.Equal(t, "no-store", rec.Header().Get("Cache-Control"), "vault responses are never cacheable")
	}
	return rec
}

var fuzzMethods = []string{
	http.MethodGet, http.MethodPost, http.MethodDelete, http.MethodPut,
	http.MethodPatch, http.MethodOptions, http.MethodHead, "PROPFIND",
}

// FuzzRequest fuzzes the whole request: method, path and query, the
// credentials (none, valid, a valid signature over a fuzzed subject, raw
// bearer text, a raw header, the service key), Content-Type, Origin and
// the body.
func FuzzRequest(f *testing.F) {
	h := newFuzzAPI(f)
	wrap := `{"recoveryWrappedMk":"` + base64.StdEncoding.EncodeToString(make([]byte, 48)) +
		`","recoveryIv":"` + base64.StdEncoding.EncodeToString(make([]byte, 12)) + `"}`
	for _, s := range []struct {
		method uint8
		path   string
		auth   uint8
		raw    string
		body   string
	}{
		{0, "/api/v1/me/encryption-vault/status", authValid, "", ""},
		{1, "/api/v1/me/encryption-vault/init", authValid, "", ""},
		{0, "/api/v1/me/encryption-vault/key", authValid, "", ""},
		{1, "/api/v1/me/encryption-vault/rotate", authValid, "", ""},
		{1, "/api/v1/me/encryption-vault/recovery-wrap", authValid, "", wrap},
		{2, "/api/v1/me/encryption-vault/recovery-wrap", authValid, "", ""},
		{1, "/api/v1/me/encryption-vault/zero-knowledge", authValid, "", `{"enable":true}`},
		{1, "/api/v1/me/encryption-vault/zero-knowledge", authValid, "", `{"enable":false,"masterKey":"` + base64.StdEncoding.EncodeToString(make([]byte, 32)) + `"}`},
		{1, "/api/v1/me/encryption-vault/init", authSubject, "user\u00e9-名前", ""},
		{1, "/api/v1/me/encryption-vault/init", authSubject, "x\x00y", ""},
		{1, "/api/v1/me/encryption-vault/init", authSubject, strings.Repeat("u", 300), ""},
		{0, "/api/v1/me/encryption-vault/key", authBearerRaw, "eyJhbGciOiJub25lIn0.e30.", ""},
		{0, "/api/v1/me/encryption-vault/key", authHeaderRaw, "Basic dXNlcjpwYXNz", ""},
		{0, "/api/v1/me/encryption-vault/key", authNone, "", ""},
		{5, "/api/v1/me/encryption-vault/key", authValid, "", ""},
		{3, "/api/v1/me/encryption-vault/key", authValid, "", ""},
		{0, "/api/v1/internal/users/fuzz-user/vault", authService, "", ""},
		{0, "/api/v1/internal/users/fuzz-user/vault/audit?limit=2&cursor=abc", authService, "", ""},
		{2, "/api/v1/internal/users/fuzz%2Fuser/vault", authService, "", ""},
		{0, "/api/v1/internal/users/%00/vault", authService, "", ""},
		{0, "/api/v1/internal/users/x/vault", authServiceRaw, "wrong", ""},
		{0, "/healthz", authNone, "", ""},
		{0, "/readyz", authNone, "", ""},
		{0, "/openapi.yaml", authNone, "", ""},
		{0, "/../../etc/passwd", authNone, "", ""},
		{0, "/api/v1/me/encryption-vault/../encryption-vault/key", authValid, "", ""},
		{0, "/api/v1/me/encryption-vault//key", authValid, "", ""},
		{1, "/api/v1/me/ai-mission-grant", authValid, "", `{"missionId":"m","tables":["notes"],"recordIds":["notes:1"]}`},
		{1, "/api/v1/me/ai-mission-grant", authValid, "", `{"missionId":"m","tables":["notes"],"recordIds":["notes:1"],"recipient":"worker-x","ttlMs":1}`},
		{0, "/api/v1/me/ai-mission-grant", authValid, "", ""},
		{5, "/api/v1/me/ai-mission-grant", authNone, "", ""},
	} {
		f.Add(s.method, s.path, s.auth, s.raw, "application/json", "", []byte(s.body))
	}
	f.Add(uint8(5), "/api/v1/me/encryption-vault/init", uint8(authValid), "", "text/plain", "https://app.fuzz", []byte{})
	f.Add(uint8(1), "/api/v1/me/encryption-vault/zero-knowledge", uint8(authValid), "", "application/json", "https://evil.example", []byte(`{"enable":true}`))

	f.Fuzz(func(t *testing.T, method uint8, path string, auth uint8, raw, contentType, origin string, body []byte) {
		req, err := http.NewRequest(fuzzMethods[int(method)%len(fuzzMethods)], "http://kb.fuzz"+path, bytes.NewReader(body))
		if err != nil {
			return // not a request a client could send: net/http refuses it before any handler
		}
		h.credentials(t, req, auth, raw)
		setIfValid(req.Header, "Content-Type", contentType)
		setIfValid(req.Header, "Origin", origin)
		h.serve(t, req)
	})
}

// FuzzMissionGrantBody fuzzes the body of POST /api/v1/me/ai-mission-grant:
// the strict decoder (exact names, no repeats, types), the scope's rules
// (lengths, separators, "<table>:<id>", U+FFFD), the lifetime's clamp and
// the recipient. A grant issued states the scope the body asked for, in
// the canonical order.
func FuzzMissionGrantBody(f *testing.F) {
	h := newFuzzAPI(f)
	for _, s := range []string{
		`{"missionId":"mission-abc","tables":["tasks","notes"],"recordIds":["tasks:t1","notes:n1"]}`,
		`{"missionId":"m","tables":["notes"],"recordIds":["notes:\ud83d\ude00","notes:\uff46"],"ttlMs":1e15}`,
		`{"missionId":"m","tables":["notes"],"recordIds":["notes:1"],"recipient":"worker-x","ttlMs":-1}`,
		`{"missionId":"m","tables":["notes"],"recordIds":["notes:1"],"recipient":"default"}`,
		`{"missionId":"m","tables":["notes"],"recordIds":["notes:1"],"recipient":"nobody"}`,
		`{"missionId":"m","tables":["notes"],"recordIds":["notes:1"],"recipient":""}`,
		`{"missionId":"m\ud800","tables":["no,tes"],"recordIds":["journal:1"]}`,
		`{"missionId":"m","missionId":"m","tables":[],"recordIds":null}`,
		`{"MissionId":"m","tables":["notes"],"recordIds":["notes:1"],"extra":{}}`,
		`{"missionId":1,"tables":"notes","recordIds":[1],"ttlMs":"1"}`,
		`{"missionId":"m","tables":["notes"],"recordIds":["notes:1"],"ttlMs":1e400}`,
		`[]`, `null`, `{`, `{}{}`, ``, "ÿþ", `{"missionId":"` + strings.Repeat("m", 300) + `"}`,
	} {
		f.Add([]byte(s), true)
	}
	f.Add([]byte(`{"missionId":"m","tables":["notes"],"recordIds":["notes:1"]}`), false)
	f.Fuzz(func(t *testing.T, body []byte, initialised bool) {
		user := "fuzz-grant-empty"
		if initialised {
			user = "fuzz-grant"
			initVault(t, h, user)
		}
		req := httptest.NewRequest(http.MethodPost, vaultapi.MissionGrantPath, bytes.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+h.mint(t, user))
		rec := h.serve(t, req)
		require.Equal(t, "no-store", rec.Header().Get("Cache-Control"))
		if rec.Code != http.StatusOK {
			return
		}
		var sent struct {
			MissionID string   `json:"missionId"`
			Tables    []string `json:"tables"`
			RecordIDs []string `json:"recordIds"`
		}
		require.NoError(t, json.Unmarshal(body, &sent))
		want, err := grant.NewDerivation(sent.MissionID, sent.Tables, sent.RecordIDs)
		require.NoError(t, err, "a grant was issued for a scope the contract refuses")
		var got struct {
			WrappedKey string `json:"wrappedKey"`
			Derivation struct {
				Version   string   `json:"version"`
				MissionID string   `json:"missionId"`
				Tables    []string `json:"tables"`
				RecordIDs []string `json:"recordIds"`
			} `json:"derivation"`
		}
		require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &got))
		require.Equal(t, want, grant.Derivation{Version: got.Derivation.Version, MissionID: got.Derivation.MissionID, Tables: got.Derivation.Tables, RecordIDs: got.Derivation.RecordIDs})
		require.NotEmpty(t, got.WrappedKey)
	})
}

// setIfValid sets a header a client could really send: net/http refuses
// values with line breaks or NULs before they reach a handler.
func setIfValid(h http.Header, name, value string) {
	if value != "" && !strings.ContainsAny(value, "\r\n\x00") {
		h.Set(name, value)
	}
}

// FuzzRecoveryWrapBody fuzzes the body of POST /recovery-wrap, the decoder
// of the client-built recovery wrap: JSON shape, base64 alphabets and
// padding, and the 48- and 12-byte lengths.
func FuzzRecoveryWrapBody(f *testing.F) {
	h := newFuzzAPI(f)
	seed := func(wrap, iv string) string {
		return `{"recoveryWrappedMk":"` + wrap + `","recoveryIv":"` + iv + `"}`
	}
	std, raw := base64.StdEncoding, base64.RawStdEncoding
	for _, s := range []string{
		seed(std.EncodeToString(make([]byte, 48)), std.EncodeToString(make([]byte, 12))),
		seed(raw.EncodeToString(make([]byte, 48)), raw.EncodeToString(make([]byte, 12))),
		seed(std.EncodeToString(make([]byte, 47)), std.EncodeToString(make([]byte, 12))),
		seed(std.EncodeToString(make([]byte, 48)), std.EncodeToString(make([]byte, 16))),
		seed(strings.Repeat("_-", 32), "AAAAAAAAAAAAAAAA"),
		seed("====", "="),
		seed("", ""),
		`{"recoveryWrappedMk":null,"recoveryIv":null}`,
		`{"recoveryWrappedMk":5,"recoveryIv":[1]}`,
		`{"recoveryWrappedMk":"a","recoveryWrappedMk":"b"}`,
		`{"recoveryWrappedMk":"\u0000"}`,
		`[]`, `null`, `"x"`, `{`, `{}{}`, ``, "\xff\xfe",
		`{"recoveryWrappedMk":"` + strings.Repeat("A", 20000) + `"}`,
		// keyProof: base64 of 32 bytes, or refused.
		`{"recoveryWrappedMk":"` + std.EncodeToString(make([]byte, 48)) + `","recoveryIv":"` + std.EncodeToString(make([]byte, 12)) + `","keyProof":"` + std.EncodeToString(make([]byte, 32)) + `"}`,
		`{"recoveryWrappedMk":"` + std.EncodeToString(make([]byte, 48)) + `","recoveryIv":"` + std.EncodeToString(make([]byte, 12)) + `","keyProof":"` + raw.EncodeToString(make([]byte, 31)) + `"}`,
		`{"recoveryWrappedMk":"` + std.EncodeToString(make([]byte, 48)) + `","recoveryIv":"` + std.EncodeToString(make([]byte, 12)) + `","keyProof":null}`,
		`{"recoveryWrappedMk":"` + std.EncodeToString(make([]byte, 48)) + `","recoveryIv":"` + std.EncodeToString(make([]byte, 12)) + `","keyProof":""}`,
		`{"recoveryWrappedMk":"` + std.EncodeToString(make([]byte, 48)) + `","recoveryIv":"` + std.EncodeToString(make([]byte, 12)) + `","keyProof":32}`,
	} {
		f.Add([]byte(s), true)
	}
	f.Add([]byte(`{}`), false)
	f.Fuzz(func(t *testing.T, body []byte, initialised bool) {
		user := "fuzz-wrap-empty"
		if initialised {
			user = "fuzz-wrap"
			initVault(t, h, user)
		}
		req := httptest.NewRequest(http.MethodPost, vaultapi.BasePath+"/recovery-wrap", bytes.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+h.mint(t, user))
		rec := h.serve(t, req)
		if rec.Code == http.StatusOK {
			requireDecodes(t, body)
		}
	})
}

// FuzzZeroKnowledgeBody fuzzes the body of POST /zero-knowledge: the
// enable flag and the base64 masterKey of 32 bytes.
func FuzzZeroKnowledgeBody(f *testing.F) {
	h := newFuzzAPI(f)
	mk := base64.StdEncoding.EncodeToString(make([]byte, 32))
	for _, s := range []string{
		`{"enable":true}`, `{"enable":false}`, `{"enable":false,"masterKey":"` + mk + `"}`,
		`{"enable":false,"masterKey":"` + strings.TrimRight(mk, "=") + `"}`,
		`{"enable":false,"masterKey":"` + base64.StdEncoding.EncodeToString(make([]byte, 31)) + `"}`,
		`{"enable":"true"}`, `{"enable":1}`, `{"enable":null}`, `{"masterKey":"` + mk + `"}`,
		`{"enable":true,"enable":false}`, `{"Enable":true}`, `{"enable":false,"masterKey":"***"}`,
		`{"enable":true} x`, `[true]`, ``, `{`,
		`{"enable":true,"keyProof":"` + mk + `"}`, `{"enable":true,"keyProof":"x"}`, `{"enable":true,"keyProof":null}`,
		`{"enable":false,"masterKey":"` + mk + `","keyProof":"` + mk + `"}`,
		`{"enable":false,"masterKey":"` + mk + `","keyProof":"` + base64.StdEncoding.EncodeToString(broker.KeyProof(make([]byte, 32))) + `"}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		initVault(t, h, "fuzz-zk")
		req := httptest.NewRequest(http.MethodPost, vaultapi.BasePath+"/zero-knowledge", bytes.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+h.mint(t, "fuzz-zk"))
		h.serve(t, req)
	})
}

// FuzzServiceRoutes fuzzes the service routes' decoders: the {userId}
// path segment (escaped or not) and the audit page's limit and cursor.
func FuzzServiceRoutes(f *testing.F) {
	h := newFuzzAPI(f)
	for _, s := range []struct{ user, query string }{
		{"fuzz-user", ""}, {"fuzz-user", "limit=1"}, {"fuzz-user", "limit=0"}, {"fuzz-user", "limit=-1"},
		{"fuzz-user", "limit=99999999999999999999"}, {"fuzz-user", "cursor=x"}, {"fuzz-user", "cursor=%ff"},
		{"fuzz%2Fuser", ""}, {"%00", ""}, {"%zz", ""}, {"..", ""}, {strings.Repeat("u", 300), ""},
		{"名前", "limit=5&cursor="}, {"a%20b", "limit=1&limit=2"},
	} {
		for route := range uint8(5) {
			f.Add(s.user, s.query, route)
		}
	}
	f.Fuzz(func(t *testing.T, user, query string, route uint8) {
		path := strings.Replace(vaultapi.InternalPath, "{userId}", user, 1)
		method := http.MethodGet
		switch route % 5 {
		case 1:
			path += "/audit"
		case 2:
			method = http.MethodDelete
		case 3:
			method, path = http.MethodPost, path+"/recovery-wrap/restore"
		case 4:
			method, path = http.MethodDelete, path+"/recovery-wrap/restorable"
		}
		if query != "" {
			path += "?" + query
		}
		req, err := http.NewRequest(method, "http://kb.fuzz"+path, nil)
		if err != nil {
			return
		}
		req.Header.Set(vaultapi.ServiceKeyHeader, fuzzServiceKey)
		h.serve(t, req)
	})
}

// initVault makes sure user has a vault.
func initVault(t *testing.T, h *fuzzAPI, user string) {
	t.Helper()
	req := httptest.NewRequest(http.MethodPost, vaultapi.BasePath+"/init", nil)
	req.Header.Set("Authorization", "Bearer "+h.mint(t, user))
	rec := h.serve(t, req)
	require.Equal(t, http.StatusOK, rec.Code, rec.Body.String())
}

// requireDecodes checks that a recovery-wrap body the API accepted really
// carries base64 of 48 and 12 bytes.
func requireDecodes(t *testing.T, body []byte) {
	t.Helper()
	var req struct {
		RecoveryWrappedMK string  `json:"recoveryWrappedMk"`
		RecoveryIV        string  `json:"recoveryIv"`
		KeyProof          *string `json:"keyProof"`
	}
	require.NoError(t, json.Unmarshal(body, &req))
	values := []struct {
		value string
		size  int
	}{{req.RecoveryWrappedMK, 48}, {req.RecoveryIV, 12}}
	if req.KeyProof != nil {
		values = append(values, struct {
			value string
			size  int
		}{*req.KeyProof, 32})
	}
	for _, c := range values {
		b, err := base64.StdEncoding.DecodeString(c.value)
		if err != nil {
			b, err = base64.RawStdEncoding.DecodeString(c.value)
		}
		require.NoError(t, err, "accepted a value that is not base64")
		require.Len(t, b, c.size, "accepted a value of the wrong length")
	}
}
