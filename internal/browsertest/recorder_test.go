package browsertest_test

import (
	"bytes"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/keybroker/keybroker/vaultapi"
)

// seen is one request as keybroker received it.
type seen struct {
	Method, Path       string
	Origin             string
	Authorization      string
	Cookie             string
	RequestMethod      string // Access-Control-Request-Method
	RequestHeaders     string // Access-Control-Request-Headers
	Body               string
	Status             int
	AllowOrigin        string // Access-Control-Allow-Origin of the answer
	AllowCredentials   string
	AllowMethods       string
	ExposeHeaders      string
	RetryAfter         string
	Received, Answered time.Time
}

func (s seen) preflight() bool { return s.Method == http.MethodOptions && s.RequestMethod != "" }

type recorder struct {
	mu   sync.Mutex
	reqs []seen
}

func (rec *recorder) wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(io.LimitReader(r.Body, 1<<16))
		r.Body = io.NopCloser(bytes.NewReader(body))
		s := seen{
			Method: r.Method, Path: strings.TrimPrefix(r.URL.Path, vaultapi.BasePath),
			Origin: r.Header.Get("Origin"), Authorization: r.Header.Get("Authorization"), Cookie: r.Header.Get("Cookie"),
			RequestMethod: r.Header.Get("Access-Control-Request-Method"), RequestHeaders: r.Header.Get("Access-Control-Request-Headers"),
			Body: string(body), Received: time.Now(),
		}
		sw := &statusWriter{ResponseWriter: w, status: http.StatusOK}
		next.ServeHTTP(sw, r)
		s.Status, s.Answered = sw.status, time.Now()
		s.AllowOrigin = w.Header().Get("Access-Control-Allow-Origin")
		s.AllowCredentials = w.Header().Get("Access-Control-Allow-Credentials")
		s.AllowMethods = w.Header().Get("Access-Control-Allow-Methods")
		s.ExposeHeaders = w.Header().Get("Access-Control-Expose-Headers")
		s.RetryAfter = w.Header().Get("Retry-After")
		rec.mu.Lock()
		rec.reqs = append(rec.reqs, s)
		rec.mu.Unlock()
	})
}

func (rec *recorder) all() []seen {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	return append([]seen(nil), rec.reqs...)
}

type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(status int) {
	w.status = status
	w.ResponseWriter.WriteHeader(status)
}
