package vaultapi_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/grant"
	"github.com/keybroker/keybroker/internal/testkit/testvectors"
	"github.com/keybroker/keybroker/vaultapi"
	"github.com/keybroker/keybroker/vaultapi/jwtauth"
)

// grantWorkers are the recipients the grant route's tests configure: the
// upstream's test key as the default, and an X25519 worker.
type grantWorkers struct {
	upstream   *grant.PrivateKey
	x25519     *grant.PrivateKey
	recipients *grant.Recipients
}

func newGrantWorkers(t testing.TB) *grantWorkers {
	t.Helper()
	v := testvectors.LoadGrant(t)
	upstream, err := grant.ParsePrivateKey([]byte(v.RSAOAEP.PrivateKeyPEM))
	require.NoError(t, err)
	def, err := upstream.Recipient(grant.DefaultRecipient)
	require.NoError(t, err)
	x, err := grant.GenerateKey(grant.HPKEX25519)
	require.NoError(t, err)
	xr, err := x.Recipient("worker-x")
	require.NoError(t, err)
	rs, err := grant.NewRecipients(def, xr)
	require.NoError(t, err)
	return &grantWorkers{upstream: upstream, x25519: x, recipients: rs}
}

func (w *grantWorkers) service(cfg *broker.Config) { cfg.GrantRecipients = w.recipients }

// grantBody is the upstream's request of the fixed/basic vector's scope,
// in the order a client might send it.
func grantBody() map[string]any {
	return map[string]any{"missionId": "mission-abc", "tables": []string{"tasks", "notes"}, "recordIds": []string{"tasks:t1", "notes:n1"}}
}

func (e *env) grant(user string, body any) response {
	e.t.Helper()
	return e.doAt(http.MethodPost, vaultapi.MissionGrantPath, user, body)
}

// grantAudit is the user's mission_grant rows as "status:context".
func (e *env) grantAudit(user string) []string {
	e.t.Helper()
	rows, err := e.admin.Query(context.Background(),
		"SELECT status || ':' || coalesce(context, '') FROM keybroker.encryption_vault_audit WHERE user_id = $1 AND action = 'mission_grant' ORDER BY created_at, id", user)
	require.NoError(e.t, err)
	out, err := pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(e.t, err)
	return out
}

// termsOf reads the terms a grant response states.
func termsOf(t *testing.T, body map[string]any) grant.Terms {
	t.Helper()
	d := body["derivation"].(map[string]any)
	strs := func(v any) []string {
		var out []string
		for _, s := range v.([]any) {
			out = append(out, s.(string))
		}
		return out
	}
	issued, err := time.Parse(time.RFC3339Nano, body["issuedAt"].(string))
	require.NoError(t, err)
	expires, err := time.Parse(time.RFC3339Nano, body["expiresAt"].(string))
	require.NoError(t, err)
	return grant.Terms{
		Derivation: grant.Derivation{Version: d["version"].(string), MissionID: d["missionId"].(string), Tables: strs(d["tables"]), RecordIDs: strs(d["recordIds"])},
		IssuedAt:   issued, ExpiresAt: expires,
	}
}

// TestMissionGrantUpstreamContract: the upstream's request gets exactly
// the upstream's response — its five fields and no other, the lists
// sorted, ISO times, the lifetime clamped — and the wrapped key opens with
// the worker's key to the mission data key of the user's master key.
func TestMissionGrantUpstreamContract(t *testing.T) {
	t.Parallel()
	w := newGrantWorkers(t)
	e := newEnv(t, envOptions{service: w.service})
	mk := decodeKey(t, e.do(http.MethodPost, "/init", "alice", nil))

	r := e.grant("alice", grantBody())
	require.Equal(t, http.StatusOK, r.status, r.raw)
	require.Equal(t, "no-store", r.header.Get("Cache-Control"))
	keys := make([]string, 0, len(r.body))
	for k := range r.body {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	require.Equal(t, []string{"derivation", "expiresAt", "issuedAt", "wrappedKey"}, keys, "the upstream's shape, nothing added")
	require.JSONEq(t, `{"version":"v1","missionId":"mission-abc","tables":["notes","tasks"],"recordIds":["notes:n1","tasks:t1"]}`,
		mustJSON(t, r.body["derivation"]))
	require.Regexp(t, `^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$`, r.body["issuedAt"])
	terms := termsOf(t, r.body)
	require.Equal(t, grant.DefaultTTL, terms.ExpiresAt.Sub(terms.IssuedAt))
	wrapped, err := base64.StdEncoding.DecodeString(r.body["wrappedKey"].(string))
	require.NoError(t, err)
	mdk, err := w.upstream.UnwrapUnbound(wrapped)
	require.NoError(t, err)
	want, err := grant.DeriveKey(mk, terms.Derivation)
	require.NoError(t, err)
	require.Equal(t, want, mdk)

	for _, c := range []struct {
		ttl  any
		want time.Duration
	}{{1, time.Hour}, {-7, time.Hour}, {7_200_000, 2 * time.Hour}, {1e15, 30 * 24 * time.Hour}, {nil, grant.DefaultTTL}} {
		body := grantBody()
		body["ttlMs"] = c.ttl
		r := e.grant("alice", body)
		require.Equal(t, http.StatusOK, r.status, r.raw)
		terms := termsOf(t, r.body)
		require.Equal(t, c.want, terms.ExpiresAt.Sub(terms.IssuedAt), "ttlMs %v", c.ttl)
	}
	rows := e.grantAudit("alice")
	require.Len(t, rows, 6)
	require.True(t, strings.HasPrefix(rows[0], "200:recipient=default;algorithm=rsa-oaep-256;scope="+terms.Derivation.ScopeDigestString()+";tables=2;records=2;expires="), rows[0])
	require.True(t, strings.HasSuffix(rows[0], ";mission=mission-abc"))
}

func mustJSON(t *testing.T, v any) string {
	raw, err := json.Marshal(v)
	require.NoError(t, err)
	return string(raw)
}

// TestMissionGrantToANamedRecipient: a request naming its recipient gets
// a wrap bound to the terms the response states, with the recipient and
// algorithm named; the worker opens it only under those terms.
func TestMissionGrantToANamedRecipient(t *testing.T) {
	t.Parallel()
	w := newGrantWorkers(t)
	e := newEnv(t, envOptions{service: w.service})
	mk := decodeKey(t, e.do(http.MethodPost, "/init", "alice", nil))
	body := grantBody()
	body["recipient"] = "worker-x"
	r := e.grant("alice", body)
	require.Equal(t, http.StatusOK, r.status, r.raw)
	require.Equal(t, "worker-x", r.body["recipient"])
	require.Equal(t, "hpke-x25519", r.body["algorithm"])
	terms := termsOf(t, r.body)
	wrapped, err := base64.StdEncoding.DecodeString(r.body["wrappedKey"].(string))
	require.NoError(t, err)
	mdk, err := w.x25519.Unwrap(wrapped, "worker-x", terms)
	require.NoError(t, err)
	want, err := grant.DeriveKey(mk, terms.Derivation)
	require.NoError(t, err)
	require.Equal(t, want, mdk)
	terms.ExpiresAt = terms.ExpiresAt.Add(time.Hour)
	_, err = w.x25519.Unwrap(wrapped, "worker-x", terms)
	require.ErrorIs(t, err, grant.ErrUnwrap, "a grant whose expiry was pushed out does not open")

	body["recipient"] = grant.DefaultRecipient
	r = e.grant("alice", body)
	require.Equal(t, http.StatusOK, r.status, r.raw)
	require.Equal(t, "rsa-oaep-256", r.body["algorithm"], "the default, named: a bound RSA-OAEP wrap")
	wrapped, err = base64.StdEncoding.DecodeString(r.body["wrappedKey"].(string))
	require.NoError(t, err)
	mdk, err = w.upstream.Unwrap(wrapped, grant.DefaultRecipient, termsOf(t, r.body))
	require.NoError(t, err)
	require.Equal(t, want, mdk)
}

// TestMissionGrantRefusesMalformedBodies sends what the upstream's loose
// decoding let through, or what would derive a key the client does not
// expect: each is 400 (413 for the size) with {error, code}, names the
// field but echoes no value, and writes no audit row.
func TestMissionGrantRefusesMalformedBodies(t *testing.T) {
	t.Parallel()
	w := newGrantWorkers(t)
	e := newEnv(t, envOptions{service: w.service})
	decodeKey(t, e.do(http.MethodPost, "/init", "alice", nil))
	manyIDs := make([]string, grant.MaxRecordIDs+1)
	for i := range manyIDs {
		manyIDs[i] = "notes:" + strconv.Itoa(i)
	}
	const secretish = "s3cr3t-value-never-echoed"
	for name, c := range map[string]struct {
		body string
		want string
	}{
		"NotJSON":            {`missionId=x`, "one JSON object"},
		"NotAnObject":        {`["mission-abc"]`, "one JSON object"},
		"Null":               {`null`, "one JSON object"},
		"Empty":              {``, "one JSON object"},
		"Truncated":          {`{"missionId":"m","tables":["notes"]`, "one JSON object"},
		"TrailingData":       {`{"missionId":"m","tables":["notes"],"recordIds":["notes:1"]} {}`, "one JSON object"},
		"UnknownField":       {`{"missionId":"m","tables":["notes"],"recordIds":["notes:1"],"` + secretish + `":1}`, "unknown field"},
		"OtherCase":          {`{"MissionId":"m","tables":["notes"],"recordIds":["notes:1"]}`, "unknown field"},
		"FieldTwice":         {`{"missionId":"m","missionId":"n","tables":["notes"],"recordIds":["notes:1"]}`, "missionId is given twice"},
		"MissionNotString":   {`{"missionId":7,"tables":["notes"],"recordIds":["notes:1"]}`, "missionId must be a non-empty string"},
		"MissionMissing":     {`{"tables":["notes"],"recordIds":["notes:1"]}`, "missionId must be a non-empty string"},
		"MissionEmpty":       {`{"missionId":"","tables":["notes"],"recordIds":["notes:1"]}`, "missionId must be a non-empty string"},
		"TablesNotArray":     {`{"missionId":"m","tables":"notes","recordIds":["notes:1"]}`, "tables must be a non-empty array of strings"},
		"TablesOfNumbers":    {`{"missionId":"m","tables":[1],"recordIds":["notes:1"]}`, "tables must be a non-empty array of strings"},
		"RecordsEmpty":       {`{"missionId":"m","tables":["notes"],"recordIds":[]}`, "recordIds must be a non-empty array of strings"},
		"RecordsNull":        {`{"missionId":"m","tables":["notes"],"recordIds":null}`, "recordIds must be a non-empty array of strings"},
		"TooManyRecords":     {mustJSON(t, map[string]any{"missionId": "m", "tables": []string{"notes"}, "recordIds": manyIDs}), "at most 1000"},
		"LoneSurrogate":      {`{"missionId":"m\ud800","tables":["notes"],"recordIds":["notes:1"]}`, "U+FFFD"},
		"ControlCharacter":   {`{"missionId":"m\u0000","tables":["notes"],"recordIds":["notes:1"]}`, "control character"},
		"RecordOfOtherTable": {`{"missionId":"m","tables":["notes"],"recordIds":["journal:` + secretish + `"]}`, `names table "journal"`},
		"TTLNotNumber":       {`{"missionId":"m","tables":["notes"],"recordIds":["notes:1"],"ttlMs":"3600000"}`, "ttlMs must be a number"},
		"TTLOutOfRange":      {`{"missionId":"m","tables":["notes"],"recordIds":["notes:1"],"ttlMs":1e400}`, "ttlMs must be a number"},
		"RecipientEmpty":     {`{"missionId":"m","tables":["notes"],"recordIds":["notes:1"],"recipient":""}`, "recipient must be"},
		"RecipientMalformed": {`{"missionId":"m","tables":["notes"],"recordIds":["notes:1"],"recipient":"Worker X"}`, "recipient name"},
	} {
		t.Run(name, func(t *testing.T) {
			r := e.grant("alice", c.body)
			r.requireError(t, http.StatusBadRequest, "BAD_REQUEST")
			require.Contains(t, r.body["error"], c.want)
			require.NotContains(t, r.raw, secretish)
		})
	}
	big := `{"missionId":"m","tables":["notes"],"recordIds":["notes:` + strings.Repeat("x", vaultapi.DefaultGrantMaxBodyBytes) + `"]}`
	e.grant("alice", big).requireError(t, http.StatusRequestEntityTooLarge, "PAYLOAD_TOO_LARGE")
	require.Empty(t, e.grantAudit("alice"), "no refusal of the body reached the domain")
	// A body of 1 000 real ids fits.
	ids := make([]string, grant.MaxRecordIDs)
	for i := range ids {
		ids[i] = "notes:0a1b2c3d-4e5f-6789-abcd-" + strconv.Itoa(100000000000+i)
	}
	r := e.grant("alice", map[string]any{"missionId": "m", "tables": []string{"notes"}, "recordIds": ids})
	require.Equal(t, http.StatusOK, r.status, r.raw)
}

// TestMissionGrantErrorsAsTheUpstreamAndAudited: the upstream's errors —
// no token, no vault, zero-knowledge, no public key — and keybroker's
// unknown recipient, each answered with its code and audited with the
// status the client got.
func TestMissionGrantErrorsAsTheUpstreamAndAudited(t *testing.T) {
	t.Parallel()
	w := newGrantWorkers(t)
	e := newEnv(t, envOptions{service: w.service})
	e.grant("", grantBody()).requireError(t, http.StatusUnauthorized, "UNAUTHORIZED")

	e.grant("alice", grantBody()).requireError(t, http.StatusNotFound, "VAULT_NOT_INITIALISED")
	named := grantBody()
	named["recipient"] = "no-such-worker"
	e.grant("alice", named).requireError(t, http.StatusBadRequest, "GRANT_RECIPIENT_UNKNOWN")

	mk := decodeKey(t, e.do(http.MethodPost, "/init", "zoe", nil))
	wrap := map[string]string{"recoveryWrappedMk": b64(48, 1), "recoveryIv": b64(12, 2), "keyProof": base64.StdEncoding.EncodeToString(broker.KeyProof(mk))}
	require.Equal(t, http.StatusOK, e.do(http.MethodPost, "/recovery-wrap", "zoe", wrap).status)
	require.Equal(t, http.StatusOK, e.do(http.MethodPost, "/zero-knowledge", "zoe", map[string]any{"enable": true}).status)
	r := e.grant("zoe", grantBody())
	r.requireError(t, http.StatusConflict, "ZK_ACTIVE")
	require.Contains(t, r.body["error"], "no key to derive")

	bare := e.reconfigure(t, envOptions{})
	r = bare.grant("zoe", grantBody())
	r.requireError(t, http.StatusServiceUnavailable, "GRANT_NOT_CONFIGURED")
	require.Equal(t, "5", r.header.Get("Retry-After"))

	require.Equal(t, []string{
		"404:no-vault;recipient=default;mission=mission-abc",
		"400:unknown-recipient;recipient=no-such-worker;mission=mission-abc",
	}, e.grantAudit("alice"))
	require.Equal(t, []string{
		"409:zk-active;recipient=default;mission=mission-abc",
		"503:not-configured;recipient=default;mission=mission-abc",
	}, e.grantAudit("zoe"))
}

// TestMissionGrantIsBehindTheVaultMiddleware: the route shares the
// user's rate limit with the vault routes, answers CORS preflights for
// the listed origins only, and refuses other methods.
func TestMissionGrantIsBehindTheVaultMiddleware(t *testing.T) {
	t.Parallel()
	w := newGrantWorkers(t)
	e := newEnv(t, envOptions{service: w.service, configure: func(cfg *vaultapi.Config, _ *jwtauth.Verifier, _ broker.Store) {
		cfg.RateLimit = vaultapi.RateLimit{PerSecond: 0.001, Burst: 3}
		cfg.CORSOrigins = []string{"https://app.example.com"}
	}})
	decodeKey(t, e.do(http.MethodPost, "/init", "alice", nil))
	require.Equal(t, http.StatusOK, e.grant("alice", grantBody()).status)
	require.Equal(t, http.StatusOK, e.grant("alice", grantBody()).status)
	r := e.grant("alice", grantBody())
	r.requireError(t, http.StatusTooManyRequests, "RATE_LIMITED")
	e.do(http.MethodGet, "/key", "alice", nil).requireError(t, http.StatusTooManyRequests, "RATE_LIMITED")
	e.doAt(http.MethodGet, vaultapi.MissionGrantPath, "bob", nil).requireError(t, http.StatusMethodNotAllowed, "METHOD_NOT_ALLOWED")

	for origin, allowed := range map[string]bool{"https://app.example.com": true, "https://evil.example": false} {
		req, err := http.NewRequest(http.MethodOptions, e.url+vaultapi.MissionGrantPath, nil)
		require.NoError(t, err)
		req.Header.Set("Origin", origin)
		req.Header.Set("Access-Control-Request-Method", "POST")
		req.Header.Set("Access-Control-Request-Headers", "authorization, content-type")
		res, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		res.Body.Close()
		if allowed {
			require.Equal(t, origin, res.Header.Get("Access-Control-Allow-Origin"))
		} else {
			require.Empty(t, res.Header.Get("Access-Control-Allow-Origin"))
		}
	}
}

// TestMissionGrantsInTheDataExport: the export lists the grants issued,
// newest first, with their digest and lifetime — and neither the key nor
// the wrap.
func TestMissionGrantsInTheDataExport(t *testing.T) {
	t.Parallel()
	w := newGrantWorkers(t)
	e := newEnv(t, envOptions{service: w.service, configure: func(cfg *vaultapi.Config, _ *jwtauth.Verifier, _ broker.Store) {
		cfg.ServiceKey = testServiceKey
	}})
	mk := decodeKey(t, e.do(http.MethodPost, "/init", "alice", nil))
	first := e.grant("alice", grantBody())
	require.Equal(t, http.StatusOK, first.status, first.raw)
	named := grantBody()
	named["recipient"] = "worker-x"
	second := e.grant("alice", named)
	require.Equal(t, http.StatusOK, second.status, second.raw)
	e.grant("alice", map[string]any{"missionId": "m", "tables": []string{"x"}, "recordIds": []string{"x:1"}, "recipient": "nobody"})

	c := &client{t: t, base: e.url}
	_, body := c.request(http.MethodGet, "/api/v1/internal/users/alice/vault", serviceHeader(), "")
	grants := body["missionGrants"].([]any)
	require.Len(t, grants, 2, "refusals are not grants")
	require.Equal(t, false, body["missionGrantsTruncated"])
	newest := grants[0].(map[string]any)
	require.Equal(t, "worker-x", newest["recipient"])
	require.Equal(t, "hpke-x25519", newest["algorithm"])
	require.Equal(t, second.body["expiresAt"], newest["expiresAt"])
	require.Equal(t, second.body["issuedAt"], newest["issuedAt"])
	require.Equal(t, termsOf(t, second.body).Derivation.ScopeDigestString(), newest["scopeDigest"])
	require.EqualValues(t, 2, newest["tableCount"])
	require.EqualValues(t, 2, newest["recordCount"])
	require.Equal(t, "default", grants[1].(map[string]any)["recipient"])
	raw := mustJSON(t, body)
	for _, s := range []string{base64.StdEncoding.EncodeToString(mk), first.body["wrappedKey"].(string), second.body["wrappedKey"].(string)} {
		require.NotContains(t, raw, s)
	}
}
