package bench

import (
	"context"
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
