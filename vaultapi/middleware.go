package vaultapi

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"unicode/utf8"

	"github.com/go-chi/chi/v5"
)

// The middleware every route runs through: authentication, cache headers, body limits, panics, request ids.

// userFrom is the user authenticate admitted, "" before it ran.
func userFrom(ctx context.Context) string {
	if e := entryFrom(ctx); e != nil {
		return e.userID
	}
	return ""
}

func requestID(ctx context.Context) string {
	if e := entryFrom(ctx); e != nil {
		return e.id
	}
	return ""
}

func routePattern(r *http.Request) string {
	if rc := chi.RouteContext(r.Context()); rc != nil {
		if p := rc.RoutePattern(); p != "" {
			return p
		}
	}
	return "unmatched"
}

// authenticate admits requests with a valid bearer token and puts its
// subject in the context.
func (a *API) authenticate(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		token, ok := bearerToken(r.Header.Get("Authorization"))
		var sub string
		var err error
		if ok {
			sub, err = a.verifier.Verify(r.Context(), token)
		}
		if !ok || err != nil || sub == "" {
			if err != nil {
				a.log.LogAttrs(r.Context(), slog.LevelInfo, "token rejected",
					slog.String("request_id", requestID(r.Context())), slog.String("reason", err.Error()))
			}
			w.Header().Set("WWW-Authenticate", `Bearer realm="keybroker"`)
			a.writeError(w, r, newAPIError(CodeUnauthorized, "missing or invalid bearer token"))
			return
		}
		// The request's one context value carries the user on: no
		// second context and copy of the request per request.
		if e := entryFrom(r.Context()); e != nil {
			e.userID = sub
			next.ServeHTTP(w, r)
			return
		}
		// Not below accessLog (a handler mounted on its own, in tests).
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), accessKey{}, &accessEntry{userID: sub})))
	})
}

func bearerToken(header string) (string, bool) {
	scheme, token, ok := strings.Cut(header, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	token = strings.TrimSpace(token)
	return token, token != ""
}

// Header values shared by every response, set without an allocation
// each: net/http only reads them, and an Add to one of these keys appends
// past the one element (a new array), never into it.
var (
	noStoreValue  = []string{"no-store"}
	noCacheValue  = []string{"no-cache"}
	nosniffValue  = []string{"nosniff"}
	jsonTypeValue = []string{"application/json; charset=utf-8"}
)

// noStore marks every vault response uncacheable: they carry key material.
func noStore(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h["Cache-Control"] = noStoreValue
		h["Pragma"] = noCacheValue
		h["X-Content-Type-Options"] = nosniffValue
		next.ServeHTTP(w, r)
	})
}

// limitBody caps request bodies at limit bytes: 413 beyond it.
func (a *API) limitBody(limit int64) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.ContentLength > limit {
				a.writeError(w, r, newAPIError(CodePayloadTooLarge, fmt.Sprintf("request body is larger than %d bytes", limit)))
				return
			}
			if r.Body != http.NoBody { // net/http's body of a request without one
				r.Body = http.MaxBytesReader(w, r.Body, limit)
			}
			next.ServeHTTP(w, r)
		})
	}
}

// recoverer turns a panic into a logged 500 with the standard body.
func (a *API) recoverer(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() {
			if p := recover(); p != nil {
				if p == http.ErrAbortHandler {
					panic(p)
				}
				a.writeError(w, r, fmt.Errorf("panic: %v", p))
			}
		}()
		next.ServeHTTP(w, r)
	})
}

// PeerIP is the TCP peer's address without the port.
func PeerIP(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

func newRequestID() string {
	var b [12]byte
	rand.Read(b[:])
	return base64.RawURLEncoding.EncodeToString(b[:])
}

// truncate cuts s to at most n bytes without splitting a UTF-8
// sequence, so that a long but valid header stays valid. It only bounds
// what a request carries on; broker.AuditText makes it fit for the audit
// row, whatever the bytes.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	// At most UTFMax-1 steps back: past that, the bytes are no character
	// anyway (and a run of continuation bytes must not empty the cut).
	for back := 0; back < utf8.UTFMax-1 && n > 0 && !utf8.RuneStart(s[n]); back++ {
		n--
	}
	return s[:n]
}
