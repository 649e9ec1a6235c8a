package bench

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestPacedLoadKeepsToItsSchedule: an open-loop step sends no more
// requests than its schedule holds, measures every latency from when the
// request was due, and sends every request with its token.
func TestPacedLoadKeepsToItsSchedule(t *testing.T) {
	t.Parallel()
	var served, unauthorised atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		served.Add(1)
		if r.Header.Get("Authorization") != "Bearer t1" {
			unauthorised.Add(1)
		}
		_, _ = w.Write([]byte(`{}`))
	}))
	t.Cleanup(srv.Close)

	const rate, window = 500, time.Second
	res, err := Run(context.Background(), Load{URL: srv.URL, Tokens: []string{"t1"}, Concurrency: 8, Duration: window,
		Rate: rate})
	require.NoError(t, err)
	require.LessOrEqual(t, served.Load(), int64(rate), "never more requests than the schedule holds")
	require.Zero(t, unauthorised.Load())
	require.Zero(t, res.Errors)
	// Every request falls due inside the window; only those still in
	// flight at its end are not counted.
	require.GreaterOrEqual(t, res.OK, rate/2)
	require.Len(t, res.Latencies, res.OK)
	require.Positive(t, res.Latencies[0], "latencies count from the due time, which is never after the send")
}

// TestPeerRequestsCarryMethodHeaderAndBody: with Method, TokenHeader and
// Body the generator sends a peer's request — here a Transit decrypt —
// whole, on its keep-alive connections, and no bearer token.
func TestPeerRequestsCarryMethodHeaderAndBody(t *testing.T) {
	t.Parallel()
	body := []byte(`{"ciphertext":"vault:v1:abc"}`)
	var served, wrong atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		served.Add(1)
		got, _ := io.ReadAll(r.Body)
		if r.Method != http.MethodPost || r.Header.Get("X-Vault-Token") != "tok" || r.Header.Get("Authorization") != "" ||
			r.Header.Get("Content-Type") != "application/json" || !bytes.Equal(got, body) || r.URL.Path != "/v1/transit/decrypt/k" {
			wrong.Add(1)
		}
		_, _ = w.Write([]byte(`{"data":{}}`))
	}))
	t.Cleanup(srv.Close)
	res, err := Run(context.Background(), Load{URL: srv.URL + "/v1/transit/decrypt/k", Tokens: []string{"tok"}, Concurrency: 2,
		Duration: 200 * time.Millisecond, Method: http.MethodPost, TokenHeader: "X-Vault-Token", Body: body})
	require.NoError(t, err)
	require.Positive(t, res.OK)
	require.Zero(t, res.Errors)
	require.Positive(t, served.Load())
	require.Zero(t, wrong.Load(), "every request is the peer's, whole")
}

// TestWrkStepCountsItsRequestsAndCPU: a closed-loop step driven by wrk
// sends every token as a bearer, counts 200s as OK and other answers as
// errors, and reports wrk's own CPU.
func TestWrkStepCountsItsRequestsAndCPU(t *testing.T) {
	wrk := WrkPath()
	if wrk == "" {
		t.Skip("wrk is not installed (apt-get install wrk)")
	}
	t.Parallel()
	var served, refused atomic.Int64
	seen := [3]atomic.Int64{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		served.Add(1)
		switch r.Header.Get("Authorization") {
		case "Bearer t0":
			seen[0].Add(1)
		case "Bearer t1":
			seen[1].Add(1)
		default:
			seen[2].Add(1)
			refused.Add(1)
			w.WriteHeader(http.StatusUnauthorized)
		}
		_, _ = w.Write([]byte(`{}`))
	}))
	t.Cleanup(srv.Close)
	measured := false
	res, err := RunWrk(context.Background(), wrk, Load{URL: srv.URL, Tokens: []string{"t0", "t1", "bad"}, Concurrency: 4,
		Warmup: time.Second, Duration: time.Second, OnMeasure: func() { measured = true }}, t.TempDir())
	require.NoError(t, err)
	require.True(t, measured)
	require.Positive(t, res.OK)
	require.Positive(t, res.Errors, "401s are errors")
	for i := range seen {
		require.Positive(t, seen[i].Load(), "token %d was sent", i)
	}
	// Both runs' requests reached the server; the measured one's are counted.
	require.LessOrEqual(t, int64(res.OK+res.Errors), served.Load())
	require.Len(t, res.Latencies, res.OK)
	require.Positive(t, res.GeneratorCPU)
	_, err = RunWrk(context.Background(), wrk, Load{URL: srv.URL, Tokens: []string{"t"}, Concurrency: 1, Duration: time.Second, Rate: 10}, t.TempDir())
	require.Error(t, err, "wrk does not pace")
}
