package vaultapi

import (
	"context"
	"log/slog"
	"net/http"
	"time"
)

// accessEntry is the request's one context value: its id, and the user
// authenticate admitted ("" until then), which the access line reports
// and the handlers act for. It also holds what the access log needs for
// the request's life, so that one allocation serves them all: the
// response writer that records the status, and the X-Request-Id header's
// value.
type accessEntry struct {
	id, userID string
	rec        statusRecorder
	idHeader   [1]string
}

type accessKey struct{}

func entryFrom(ctx context.Context) *accessEntry {
	e, _ := ctx.Value(accessKey{}).(*accessEntry)
	return e
}

type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (s *statusRecorder) WriteHeader(code int) {
	if s.status == 0 {
		s.status = code
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusRecorder) Write(b []byte) (int, error) {
	if s.status == 0 {
		s.status = http.StatusOK
	}
	return s.ResponseWriter.Write(b)
}

// accessLog writes one line per request: request id, route, status,
// latency and user id. Never headers or bodies: they carry tokens and keys.
func (a *API) accessLog(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		id := newRequestID()
		entry := &accessEntry{id: id, idHeader: [1]string{id}}
		// The request's deadline, RequestTimeout from its start, is set
		// here with its one value, so that no handler copies the request
		// again for it.
		ctx, cancel := context.WithTimeout(context.WithValue(r.Context(), accessKey{}, entry), a.timeout)
		defer cancel()
		w.Header()["X-Request-Id"] = entry.idHeader[:] // canonical: Set's map entry, without its slice
		entry.rec = statusRecorder{ResponseWriter: w}
		rec := &entry.rec
		r = r.WithContext(ctx)
		a.metrics.begin()
		// Deferred, so that a request whose handler aborted (a panic the
		// recoverer re-raises) is counted and logged too.
		defer func() {
			if rec.status == 0 {
				// The handler wrote nothing: net/http sends 200.
				rec.status = http.StatusOK
			}
			elapsed, route := time.Since(start), routePattern(r)
			a.metrics.observe(r.Method, route, rec.status, elapsed)
			// The record is made here rather than by Logger.LogAttrs, which
			// walks the stack for the caller's PC on every line: the log
			// reports no source, and the walk was a microsecond a request.
			if h := a.log.Handler(); h.Enabled(ctx, slog.LevelInfo) {
				line := slog.NewRecord(time.Now(), slog.LevelInfo, "request", 0)
				line.AddAttrs(
					slog.String("request_id", id),
					slog.String("method", r.Method),
					slog.String("route", route),
					slog.Int("status", rec.status),
					slog.Duration("latency", elapsed),
					slog.String("user_id", entry.userID))
				_ = h.Handle(ctx, line) // as LogAttrs: a failed log write fails nothing
			}
		}()
		next.ServeHTTP(rec, r)
	})
}
