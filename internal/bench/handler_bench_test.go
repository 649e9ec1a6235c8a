package bench

import (
	"net/http"
	"net/http/httptest"
	"testing"
)

// discardWriter is a ResponseWriter that keeps headers and drops the
// body: the benchmark counts the server's allocations, not a recorder's.
type discardWriter struct {
	h      http.Header
	status int
}

func (d *discardWriter) Header() http.Header         { return d.h }
func (d *discardWriter) Write(p []byte) (int, error) { return len(p), nil }
func (d *discardWriter) WriteHeader(status int)      { d.status = status }

// BenchmarkGetKeyHandler runs GET /key through keybroker's whole handler
// chain (access log, auth with a cached token, the fetch on PostgreSQL
// with its group-committed audit row, the JSON answer), without the
// HTTP server's connection handling: its allocs/op are the request
// path's own. It needs the test PostgreSQL, like the store tests.
func BenchmarkGetKeyHandler(b *testing.B) {
	st := newStack(b, 1)
	srv := httptest.NewServer(st.handler)
	initAll(b, srv.URL, st.tokens)
	srv.Close()
	req := httptest.NewRequest(http.MethodGet, "/api/v1/me/encryption-vault/key", nil)
	req.Header.Set("Authorization", "Bearer "+st.tokens[0])
	w := &discardWriter{h: http.Header{}}
	b.ReportAllocs()
	for b.Loop() {
		clear(w.h)
		st.handler.ServeHTTP(w, req)
		if w.status != http.StatusOK {
			b.Fatalf("GET /key: HTTP %d", w.status)
		}
	}
}
