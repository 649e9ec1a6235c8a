package vaultapi_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/kek"
	"github.com/keybroker/keybroker/sqlitestore"
	"github.com/keybroker/keybroker/vaultapi"
)

// newLiteAPI serves an API over the embedded store: enough for the
// routes that never reach PostgreSQL.
func newLiteAPI(t *testing.T, cfg vaultapi.Config) *httptest.Server {
	t.Helper()
	store, err := sqlitestore.Open(context.Background(), sqlitestore.Config{Dir: t.TempDir()})
	require.NoError(t, err)
	t.Cleanup(func() { _ = store.Close() })
	ring, err := broker.NewKeyring(newKEK(t, "k"))
	require.NoError(t, err)
	cfg.Service, err = broker.New(context.Background(), broker.Config{Store: store, Keyring: ring})
	require.NoError(t, err)
	cfg.Verifier = nopVerifier{}
	api, err := vaultapi.New(cfg)
	require.NoError(t, err)
	srv := httptest.NewServer(api.Handler())
	t.Cleanup(srv.Close)
	return srv
}

func getJSON(t *testing.T, url string) (int, map[string]any) {
	t.Helper()
	res, err := http.Get(url)
	require.NoError(t, err)
	defer res.Body.Close()
	require.Equal(t, "no-store", res.Header.Get("Cache-Control"))
	var body map[string]any
	require.NoError(t, json.NewDecoder(res.Body).Decode(&body))
	return res.StatusCode, body
}

func checkStatuses(body map[string]any) map[string]string {
	out := map[string]string{}
	for _, c := range body["checks"].([]any) {
		m := c.(map[string]any)
		key := m["name"].(string)
		if id, ok := m["id"].(string); ok {
			key += ":" + id
		}
		out[key] = m["status"].(string)
	}
	return out
}

// TestReadinessReportsEachClass: pending before the first poll, then ok,
// unreachable (an outage, a timeout) and failing (a refusal) told apart
// in the JSON, and 503 while any check is not ok.
func TestReadinessReportsEachClass(t *testing.T) {
	t.Parallel()
	kekErr := error(nil)
	storeErr := error(nil)
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	hang := false
	readiness, err := vaultapi.NewReadiness(vaultapi.ReadinessConfig{
		Timeout: 200 * time.Millisecond,
		Checks: []vaultapi.Check{
			{Name: "store", Probe: func(context.Context) error { return storeErr }},
			{Name: "kek", ID: "aws-1", Probe: func(ctx context.Context) error { return kekErr }},
			{Name: "jwks", Probe: func(ctx context.Context) error {
				if hang {
					<-release // ignores ctx, like a wedged client
				}
				return nil
			}},
		},
	})
	require.NoError(t, err)
	srv := newLiteAPI(t, vaultapi.Config{Readiness: readiness, Version: "v9"})

	status, body := getJSON(t, srv.URL+"/healthz")
	require.Equal(t, http.StatusOK, status)
	require.Equal(t, map[string]any{"status": "ok", "version": "v9"}, body)

	status, body = getJSON(t, srv.URL+"/readyz")
	require.Equal(t, http.StatusServiceUnavailable, status)
	require.Equal(t, "NOT_READY", body["code"])
	require.Equal(t, map[string]string{"store": "pending", "kek:aws-1": "pending", "jwks": "pending"}, checkStatuses(body))

	readiness.Poll(context.Background())
	status, body = getJSON(t, srv.URL+"/readyz")
	require.Equal(t, http.StatusOK, status)
	require.Equal(t, "ready", body["status"])
	require.NotContains(t, body, "code")
	require.Equal(t, map[string]string{"store": "ok", "kek:aws-1": "ok", "jwks": "ok"}, checkStatuses(body))

	storeErr = &broker.UnavailableError{Dependency: broker.DependencyStore, Err: errors.New("dial tcp 10.0.0.5:5432: connection refused")}
	kekErr = fmt.Errorf("awskms: key arn:aws:kms:eu-west-1:111122223333:key/x: %w", kek.Denied(errors.New("key state is Disabled")))
	hang = true
	start := time.Now()
	readiness.Poll(context.Background())
	require.Less(t, time.Since(start), 5*time.Second, "a hung probe does not hold up the poll")
	status, body = getJSON(t, srv.URL+"/readyz")
	require.Equal(t, http.StatusServiceUnavailable, status)
	require.Equal(t, map[string]string{"store": "unreachable", "kek:aws-1": "failing", "jwks": "unreachable"}, checkStatuses(body))
	raw, _ := json.Marshal(body)
	require.NotContains(t, string(raw), "arn:aws", "error texts stay in the log")
	require.NotContains(t, string(raw), "10.0.0.5")

	// The hung probe is not started again while it runs: still unreachable.
	readiness.Poll(context.Background())
	require.Equal(t, "unreachable", readiness.Results()[2].Status)
	require.False(t, readiness.Ready())

	kekErr = fmt.Errorf("gcpkms: %w", kek.Unavailable(errors.New("rpc error: code = Unavailable")))
	readiness.Poll(context.Background())
	require.Equal(t, "unreachable", readiness.Results()[1].Status)
	require.Equal(t, "pending", classifyOnly(t, vaultapi.ErrPending))
	require.Equal(t, "unreachable", classifyOnly(t, context.DeadlineExceeded))
	require.Equal(t, "failing", classifyOnly(t, errors.New("relation does not exist")))
}

// classifyOnly polls one check that returns err and reports its status.
func classifyOnly(t *testing.T, err error) string {
	r, e := vaultapi.NewReadiness(vaultapi.ReadinessConfig{Checks: []vaultapi.Check{{Name: "store", Probe: func(context.Context) error { return err }}}})
	require.NoError(t, e)
	r.Poll(context.Background())
	return r.Results()[0].Status
}

func TestReadinessWithoutChecksIsReady(t *testing.T) {
	t.Parallel()
	srv := newLiteAPI(t, vaultapi.Config{})
	status, body := getJSON(t, srv.URL+"/readyz")
	require.Equal(t, http.StatusOK, status)
	require.Empty(t, body["checks"])
	_, err := vaultapi.NewReadiness(vaultapi.ReadinessConfig{Checks: []vaultapi.Check{{Name: "store"}}})
	require.Error(t, err, "a check without a probe is refused")
}

// TestReadinessShowsWhatTheRolloutWaitsFor: /readyz carries the rollout of
// a newly configured KEK — which KEK new wraps use and why — without
// becoming not-ready for it (the replica serves every row), and without
// the names of the replicas it waits for (the body is unauthenticated).
func TestReadinessShowsWhatTheRolloutWaitsFor(t *testing.T) {
	t.Parallel()
	st := broker.RolloutDecision("kek-b", []string{"kek-b", "kek-a"}, "me",
		[]broker.Replica{{ID: "me", KEKIDs: []string{"kek-b", "kek-a"}}, {ID: "old", Name: "old-host pid 7", KEKIDs: []string{"kek-a"}, WritesKEK: "kek-a"}}, 0)
	srv := newLiteAPI(t, vaultapi.Config{Rollout: func() *broker.RolloutStatus { return &st }})
	status, body := getJSON(t, srv.URL+"/readyz")
	require.Equal(t, http.StatusOK, status, "waiting for a rollout is not unready")
	rollout, ok := body["rollout"].(map[string]any)
	require.True(t, ok, "the body has the rollout: %v", body)
	require.Equal(t, "kek-b", rollout["configured"])
	require.Equal(t, "kek-a", rollout["writes"])
	require.Equal(t, true, rollout["waiting"])
	require.EqualValues(t, 1, rollout["blocking"])
	require.Contains(t, rollout["reason"], "1 live replica(s) cannot open kek-b")
	raw, err := json.Marshal(body)
	require.NoError(t, err)
	require.NotContains(t, string(raw), "old-host", "no replica's host name on the unauthenticated route")

	srv = newLiteAPI(t, vaultapi.Config{Rollout: func() *broker.RolloutStatus { return nil }})
	_, body = getJSON(t, srv.URL+"/readyz")
	require.NotContains(t, body, "rollout", "a replica that announces nothing shows no rollout")
}

// TestReadinessDegradedStaysReady: a check whose probe says the server
// serves without the dependency (one KEK of several down) is reported
// degraded, with the data keys it opens, and leaves /readyz at 200; any
// other failure still makes it 503.
func TestReadinessDegradedStaysReady(t *testing.T) {
	t.Parallel()
	var kekErr error = &broker.DegradedError{Err: kek.Unavailable(errors.New("dial tcp 10.0.0.7:443: connection refused"))}
	readiness, err := vaultapi.NewReadiness(vaultapi.ReadinessConfig{Checks: []vaultapi.Check{
		{Name: "kek", ID: "aws-eu", Probe: func(context.Context) error { return kekErr },
			DataKeys: func() *vaultapi.DataKeys { return &vaultapi.DataKeys{Opens: 0, Wraps: 2, Total: 2} }},
		{Name: "kek", ID: "aws-us", Probe: func(context.Context) error { return nil },
			DataKeys: func() *vaultapi.DataKeys { return &vaultapi.DataKeys{Opens: 2, Wraps: 2, Total: 2} }},
	}})
	require.NoError(t, err)
	srv := newLiteAPI(t, vaultapi.Config{Readiness: readiness})
	readiness.Poll(context.Background())
	status, body := getJSON(t, srv.URL+"/readyz")
	require.Equal(t, http.StatusOK, status)
	require.Equal(t, map[string]string{"kek:aws-eu": "degraded", "kek:aws-us": "ok"}, checkStatuses(body))
	checks := body["checks"].([]any)
	require.Equal(t, map[string]any{"opens": 0.0, "wraps": 2.0, "total": 2.0}, checks[0].(map[string]any)["dataKeys"])
	require.Equal(t, map[string]any{"opens": 2.0, "wraps": 2.0, "total": 2.0}, checks[1].(map[string]any)["dataKeys"])
	raw, _ := json.Marshal(body)
	require.NotContains(t, string(raw), "10.0.0.7", "error texts stay in the log")
	require.True(t, readiness.Ready())

	kekErr = kek.Unavailable(errors.New("down"))
	readiness.Poll(context.Background())
	status, _ = getJSON(t, srv.URL+"/readyz")
	require.Equal(t, http.StatusServiceUnavailable, status, "not degraded: unready")
}
